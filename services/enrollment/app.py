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
    handler=handlers.make_handler,  # type: ignore[arg-type]
    routes=api.routes,  # type: ignore[arg-type]
    sweeps=(handlers.expire_pending,),  # type: ignore[arg-type]
    openapi=api.OPENAPI,
)
