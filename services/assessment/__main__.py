"""``python -m services.assessment [run|migrate]``."""

from shared.runtime.service import cli
from services.assessment.app import DEFINITION, create_app
from services.assessment.config import AssessmentSettings

cli(DEFINITION, AssessmentSettings, create_app)  # type: ignore[arg-type]
