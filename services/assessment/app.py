"""Composition root of the assessment service."""

from __future__ import annotations

from pathlib import Path

from shared.contract import topics
from shared.runtime.faststream_app import ServiceApp
from shared.runtime.service import ServiceDefinition, create_service_app
from services.assessment import api, handlers
from services.assessment.config import AssessmentSettings

DEFINITION = ServiceDefinition(
    name="assessment",
    directory=Path(__file__).parent,
    topics=(topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    outputs=(topics.ASSESSMENT_EVENTS,),
    handler=handlers.make_handler,  # type: ignore[arg-type]
    routes=api.routes,  # type: ignore[arg-type]
    sweeps=(handlers.expire_pending,),  # type: ignore[arg-type]
)


def create_app(settings: AssessmentSettings | None = None, **overrides: object) -> ServiceApp:
    """The assessment service as a FastStream app (settings from the environment when None, then
    ``overrides`` applied): ``python -m services.assessment run`` serves it, and so does
    ``faststream run services.assessment.app:create_app --factory``."""
    settings = settings or AssessmentSettings()
    if overrides:
        settings = settings.model_copy(update=overrides)
    return create_service_app(DEFINITION, settings)
