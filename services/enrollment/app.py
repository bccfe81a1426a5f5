"""Composition root of the enrollment service."""

from __future__ import annotations

from pathlib import Path

from shared.contract import topics
from shared.runtime.faststream_app import ServiceApp
from shared.runtime.service import ServiceDefinition, create_service_app
from services.enrollment import api, handlers
from services.enrollment.config import EnrollmentSettings

DEFINITION = ServiceDefinition(
    name="enrollment",
    directory=Path(__file__).parent,
    topics=(topics.TRAINING_UPSTREAM,),
    outputs=(topics.ENROLLMENT_EVENTS,),
    handler=handlers.make_handler,  # type: ignore[arg-type]
    routes=api.routes,  # type: ignore[arg-type]
    sweeps=(handlers.expire_pending,),  # type: ignore[arg-type]
    openapi=api.OPENAPI,
)


def create_app(settings: EnrollmentSettings | None = None, **overrides: object) -> ServiceApp:
    """The enrollment service as a FastStream app (settings from the environment when None, then
    ``overrides`` applied): ``python -m services.enrollment run`` serves it, and so does
    ``faststream run services.enrollment.app:create_app --factory``."""
    settings = settings or EnrollmentSettings()
    if overrides:
        settings = settings.model_copy(update=overrides)
    return create_service_app(DEFINITION, settings)
