"""Composition root of the subsidy service: policies loaded once, the engine behind the handler."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import asyncpg
import orjson

from shared.contract import topics
from shared.runtime.consumer import Handler
from shared.runtime.faststream_app import ServiceApp
from shared.runtime.service import ServiceDefinition, create_service_app
from services.subsidy import api, console, handlers, metrics, reviews
from services.subsidy.config import SubsidySettings
from services.subsidy.engine.policy import Policy, PolicySet
from services.subsidy.policy_files import load_policy_dir

log = logging.getLogger(__name__)


@functools.cache
def policies_from(directory: Path) -> PolicySet:
    return load_policy_dir(directory)


def build_handler(settings: SubsidySettings) -> Handler:
    return handlers.make_handler(settings, policies_from(settings.policy_dir))


def rules_hash(policy: Policy) -> str:
    """The SHA-256 of a policy file's JSON without ``valid_to``, keys sorted: what a version name
    stands for (closing its range to start the next version changes the file, not the version)."""
    raw = Path(policy.source).read_bytes()
    if hashlib.sha256(raw).hexdigest() != policy.content_hash:
        raise SystemExit(f"refusing to start: {policy.source} changed while the service was loading it")
    content = json.loads(raw)
    content.pop("valid_to", None)
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def record_policy_loads(pool: asyncpg.Pool, settings: SubsidySettings) -> None:
    """Audit trail: which policy files (by hash) this process decides with; a version recorded
    before with other content (beyond its valid_to) refuses the start, naming both hashes."""
    policies = policies_from(settings.policy_dir)
    rows = [
        (p.content_hash, p.agency, p.version, p.source, rules_hash(p))
        for versions in policies.by_agency.values() for p in versions
    ]
    # A version name stands for one content: decisions name it (policy.version), so the same
    # name deciding differently after a reload would make them unexplainable. Refuse instead.
    known = await pool.fetch(
        "SELECT DISTINCT agency, version, content_hash, rules_hash FROM policy_load"
        " WHERE rules_hash IS NOT NULL"
        " AND (agency, version) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [r[1] for r in rows], [r[2] for r in rows],
    )
    loading = {(r[1], r[2]): r for r in rows}
    changed = []
    for k in known:
        now = loading[(k["agency"], k["version"])]
        if now[4] != k["rules_hash"]:
            changed.append(f"{k['agency']}@{k['version']}: recorded {k['content_hash']}, "
                           f"now {now[0]} ({now[3]})")
    if changed:
        raise SystemExit(
            "refusing to start: a policy version was loaded before with other content (beyond "
            "its valid_to); give the changed file a new version (docs/POLICY_OPERATIONS.md): "
            + "; ".join(sorted(changed))
        )
    await pool.executemany(
        "INSERT INTO policy_load (content_hash, agency, version, source, rules_hash)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (content_hash, agency, version)"
        " DO UPDATE SET rules_hash = coalesce(policy_load.rules_hash, EXCLUDED.rules_hash)",
        rows,
    )
    log.info("policies loaded", extra={"policies": [f"{r[1]}@{r[2]}:{r[0][:12]}" for r in rows]})


DEFINITION = ServiceDefinition(
    name="subsidy",
    directory=Path(__file__).parent,
    # Reviews of held grants are facts too, read in broker time order with the others.
    topics=(topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
    outputs=(topics.SUBSIDY_EVENTS, topics.SUBSIDY_REVIEWS),
    handler=build_handler,  # type: ignore[arg-type]  # called with SubsidySettings (cli below)
    routes=lambda pool, settings, sessions: (
        api.routes(pool, policies_from(settings.policy_dir), sessions)  # type: ignore[attr-defined]  # a SubsidySettings
        + reviews.routes(pool, settings, sessions)
        + console.routes(pool, settings, policies_from(settings.policy_dir), sessions)  # type: ignore[attr-defined, arg-type]  # as above
    ),
    sweeps=(metrics.refresh_pending_items, metrics.refresh_holds),
    on_start=record_policy_loads,  # type: ignore[arg-type]  # called with SubsidySettings
    openapi=api.OPENAPI,
)


def create_app(settings: SubsidySettings | None = None, **overrides: object) -> ServiceApp:
    """The subsidy service as a FastStream app (settings from the environment when None, then
    ``overrides`` applied): ``python -m services.subsidy run`` serves it, and so does
    ``faststream run services.subsidy.app:create_app --factory``."""
    settings = settings or SubsidySettings()
    if overrides:
        settings = settings.model_copy(update=overrides)
    return create_service_app(DEFINITION, settings)
