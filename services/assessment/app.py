"""Composition root of the assessment service."""

from __future__ import annotations

from pathlib import Path

from shared.contract import topics
from shared.runtime.service import ServiceDefinition
from services.assessment import api, handlers

DEFINITION = ServiceDefinition(
    name="assessment",
    directory=Path(__file__).parent,
    topics=(topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    handler=handlers.make_handler,  # type: ignore[arg-type]  # called with this service's own settings class
    routes=api.routes,  # type: ignore[arg-type]  # called with this service's own settings class
    sweeps=(handlers.expire_pending,),  # type: ignore[arg-type]  # called with this service's own settings class
)
