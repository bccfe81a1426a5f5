"""Settings of the assessment service (env prefix ASSESSMENT_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.runtime.settings import ServiceSettings


class AssessmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ASSESSMENT_", extra="ignore", populate_by_name=True)

    service_name: str = "assessment"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/assessment"
    http_port: int = 8002
