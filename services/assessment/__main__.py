"""``python -m services.assessment [run|migrate]``."""

from shared.runtime.service import cli
from services.assessment.app import DEFINITION
from services.assessment.config import AssessmentSettings

cli(DEFINITION, AssessmentSettings)
