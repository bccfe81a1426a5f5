"""Alembic environment of the subsidy database: the runtime's tables and the service's models."""

from shared.runtime import schema, tables
from services.subsidy import store
from services.subsidy.config import SubsidySettings

schema.run([tables.METADATA, store.METADATA], SubsidySettings)
