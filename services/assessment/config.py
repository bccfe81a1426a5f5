"""Settings of the assessment service (env prefix ASSESSMENT_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.contract import topics
from shared.runtime.settings import ServiceSettings


class AssessmentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ASSESSMENT_", extra="ignore", populate_by_name=True)

    service_name: str = "assessment"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/assessment"
    http_port: int = 8002
    # Results wait for EnrollmentAccepted: the enrollment service's backlog on its input must
    # be through before one expires (its outbox too: groups commit only published batches).
    pending_upstream: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"enrollment": (topics.TRAINING_UPSTREAM,)}  # type: ignore[arg-type]  # a tuple[str, ...]
    )
