"""``python -m services.subsidy [run|migrate]``."""

from shared.runtime.service import cli
from services.subsidy.app import DEFINITION
from services.subsidy.config import SubsidySettings

cli(DEFINITION, SubsidySettings)
