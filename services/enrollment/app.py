"""Composition root of the enrollment service."""

from __future__ import annotations

from pathlib import Path

from shared.contract import topics
from shared.runtime.service import ServiceDefinition
from services.enrollment import api, handlers

DEFINITION = ServiceDefinition(
    name="enrollment",
    directory=Path(__file__).parent,
    topics=(topics.TRAINING_UPSTREAM,),
    handler=handlers.make_handler,  # type: ignore[arg-type]  # called with this service's own settings class
    routes=api.routes,  # type: ignore[arg-type]  # called with this service's own settings class
    sweeps=(handlers.expire_pending,),  # type: ignore[arg-type]  # called with this service's own settings class
    openapi=api.OPENAPI,
)
