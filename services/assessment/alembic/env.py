"""Alembic environment of the assessment database: the runtime's tables and the service's models."""

from shared.runtime import schema, tables
from services.assessment import store
from services.assessment.config import AssessmentSettings

schema.run([tables.METADATA, store.METADATA], AssessmentSettings)
