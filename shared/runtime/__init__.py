"""The runtime every service stands on: settings, database, inbox/outbox, batch consumer, HTTP."""
