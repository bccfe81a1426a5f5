"""Developer tools: the seeded population simulator and its offline oracle."""
