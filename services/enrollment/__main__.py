"""``python -m services.enrollment [run|migrate]``."""

from shared.runtime.service import cli
from services.enrollment.app import DEFINITION, create_app
from services.enrollment.config import EnrollmentSettings

cli(DEFINITION, EnrollmentSettings, create_app)  # type: ignore[arg-type]
