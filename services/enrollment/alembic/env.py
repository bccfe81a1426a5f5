"""Alembic environment of the enrollment database: the runtime's tables and the service's models."""

from shared.runtime import schema, tables
from services.enrollment import store
from services.enrollment.config import EnrollmentSettings

schema.run([tables.METADATA, store.METADATA], EnrollmentSettings)
