"""Composition root of the subsidy service: policies loaded once, the engine behind the handler."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import asyncpg

from shared.contract import topics
from shared.runtime.consumer import Handler
from shared.runtime.service import ServiceDefinition
from services.subsidy import api, console, handlers, metrics, reviews
from services.subsidy.config import SubsidySettings
from services.subsidy.policy import PolicySet, load_policy_dir

log = logging.getLogger(__name__)


@functools.cache
def policies_from(directory: Path) -> PolicySet:
    return load_policy_dir(directory)


def build_handler(settings: SubsidySettings) -> Handler:
    return handlers.make_handler(settings, policies_from(settings.policy_dir))


async def record_policy_loads(pool: asyncpg.Pool, settings: SubsidySettings) -> None:
    """Audit trail: which policy files (by hash) this process decides with."""
    policies = policies_from(settings.policy_dir)
    rows = [
        (p.content_hash, p.agency, p.version, p.source)
        for versions in policies.by_agency.values() for p in versions
    ]
    await pool.executemany(
        "INSERT INTO policy_load (content_hash, agency, version, source) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        rows,
    )
    log.info("policies loaded", extra={"policies": [f"{r[1]}@{r[2]}:{r[0][:12]}" for r in rows]})


DEFINITION = ServiceDefinition(
    name="subsidy",
    directory=Path(__file__).parent,
    # Reviews of held grants are facts too, read in broker time order with the others.
    topics=(topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
    handler=build_handler,  # type: ignore[arg-type]
    routes=lambda pool, settings: (
        api.routes(pool, policies_from(settings.policy_dir))  # type: ignore[attr-defined]
        + reviews.routes(pool, settings)
        + console.routes(pool, settings, policies_from(settings.policy_dir))  # type: ignore[arg-type]
    ),
    sweeps=(metrics.refresh_pending_items, metrics.refresh_holds),  # type: ignore[arg-type]
    on_start=record_policy_loads,  # type: ignore[arg-type]
)
