"""``python -m services.subsidy [run|migrate]``."""

from shared.runtime.service import cli
from services.subsidy.app import DEFINITION, create_app
from services.subsidy.config import SubsidySettings

cli(DEFINITION, SubsidySettings, create_app)  # type: ignore[arg-type]
