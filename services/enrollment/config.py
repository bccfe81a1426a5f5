"""Settings of the enrollment service (env prefix ENROLLMENT_)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import DEV_DATA_KEY, ServiceSettings

__all__ = ["DEV_DATA_KEY", "EnrollmentSettings"]


class EnrollmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ENROLLMENT_", extra="ignore", populate_by_name=True)

    service_name: str = "enrollment"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/enrollment"
    http_port: int = 8001
    catalogue_dir: Path = Path(__file__).with_name("catalogues")
    lookup_rate_per_minute: int = Field(
        30, ge=1, description="POST /persons/lookup calls one token may make per minute "
        "(per process); more answer 429",
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
        # Catalogues fail closed: an agency without its file would accept every course.
        if not self.catalogue_dir.is_dir():
            found.append(f"ENROLLMENT_CATALOGUE_DIR {self.catalogue_dir} is not a directory")
        else:
            covered = set()
            for path in sorted(self.catalogue_dir.glob("*.json")):
                try:
                    covered.add(json.loads(path.read_text(encoding="utf-8"))["agency"])
                except (OSError, ValueError, KeyError, TypeError):
                    found.append(f"catalogue {path} cannot be read as a catalogue")
            missing = [a for a in self.agencies if a not in covered]
            if missing:
                found.append(f"ENROLLMENT_CATALOGUE_DIR {self.catalogue_dir} has no catalogue "
                             f"for {', '.join(missing)}")
        return found
