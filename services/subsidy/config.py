"""Settings of the subsidy service (env prefix SUBSIDY_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class SubsidySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SUBSIDY_", extra="ignore", populate_by_name=True)

    service_name: str = "subsidy"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/subsidy"
    http_port: int = 8003
    # Each person in a batch is decoded whole (about 15.8 KB of objects): when the subsidy falls
    # behind, 5,000-record batches took its peak RSS to 349 MB at 100,000 persons; 2,000: 245 MB.
    batch_max_records: int = 2000
    policy_dir: Path = Path(__file__).with_name("policies")
    console_session_minutes: int = Field(
        480, description="how long a review-console session lasts after sign-in (docs/SECURITY.md §6)",
    )
