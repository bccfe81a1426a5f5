"""Composition root of the subsidy service: policies loaded once, the engine behind the handler."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import asyncpg

from shared.contract import topics
from shared.runtime.consumer import Handler
from shared.runtime.service import ServiceDefinition
from services.subsidy import api, handlers, metrics
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
    # A version name stands for one content: decisions name it (policy.version), so the same
    # name deciding differently after a reload would make them unexplainable. Refuse instead.
    known = await pool.fetch(
        "SELECT DISTINCT agency, version, content_hash FROM policy_load"
        " WHERE (agency, version) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [r[1] for r in rows], [r[2] for r in rows],
    )
    loading = {(r[1], r[2]): r for r in rows}
    changed = [
        f"{k['agency']}@{k['version']}: recorded {k['content_hash']}, "
        f"now {loading[(k['agency'], k['version'])][0]} ({loading[(k['agency'], k['version'])][3]})"
        for k in known if loading[(k["agency"], k["version"])][0] != k["content_hash"]
    ]
    if changed:
        raise SystemExit(
            "refusing to start: a policy version was loaded before with other content; give the "
            "changed file a new version (docs/POLICY_OPERATIONS.md): " + "; ".join(changed)
        )
    await pool.executemany(
        "INSERT INTO policy_load (content_hash, agency, version, source) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        rows,
    )
    log.info("policies loaded", extra={"policies": [f"{r[1]}@{r[2]}:{r[0][:12]}" for r in rows]})


DEFINITION = ServiceDefinition(
    name="subsidy",
    directory=Path(__file__).parent,
    topics=(topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS),
    handler=build_handler,  # type: ignore[arg-type]
    routes=lambda pool, settings: api.routes(pool, policies_from(settings.policy_dir)),  # type: ignore[attr-defined]
    sweeps=(metrics.refresh_pending_items,),  # type: ignore[arg-type]
    on_start=record_policy_loads,  # type: ignore[arg-type]
    openapi=api.OPENAPI,
)
