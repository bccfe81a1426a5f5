"""Settings of the enrollment service (env prefix ENROLLMENT_)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings

DEV_DATA_KEY = "ZGV2LW9ubHktZGF0YS1rZXktY2hhbmdlLW1lLTAwMDA="  # 32 bytes, development only


class EnrollmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ENROLLMENT_", extra="ignore", populate_by_name=True)

    service_name: str = "enrollment"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/enrollment"
    http_port: int = 8001
    catalogue_dir: Path = Path(__file__).with_name("catalogues")
    data_key: str = Field(
        DEV_DATA_KEY, validation_alias="DATA_ENCRYPTION_KEY",
        description="Fernet key protecting names and national ids at rest",
    )

    daily_hours_limit: Decimal = Field(
        Decimal(12), description="integrity check daily_hours_exceeded (POLICY.md §6): a "
        "person's hours on one date, summed over all their enrollments, above this",
    )
    plan_slack_days: int = Field(
        30, description="integrity check far_outside_plan (POLICY.md §6): attendance more than "
        "this many days before a course's start_date or after its end_date",
    )

    def unsafe_defaults(self) -> list[str]:
        found = super().unsafe_defaults()
        if self.data_key == DEV_DATA_KEY:
            found.append("DATA_ENCRYPTION_KEY is the development default; set a real Fernet key")
        return found
