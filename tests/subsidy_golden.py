"""A fixed stream of internal events for the subsidy handler, and what it publishes.

Used by tests/integration/test_subsidy_output_bytes.py (the published bytes must equal the
recorded file tests/data/subsidy_outputs.jsonl.gz) and by tools-free measurements of the
handler (``python -m tests.subsidy_golden bench``). The stream is a seeded simulated
population's enrollment and assessment events (the offline oracle's, tools/expected.py), run
against the budgeted demo policies so that budgets run out, followed by a reviewer's decision
on every held grant (alternately release and deny): every output kind the engine has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from shared.contract import envelope, topics
from shared.contract import events as ev
from shared.runtime.consumer import Incoming
from shared.runtime.outbox import Outbox, RawRecord
from services.subsidy import holds
from services.subsidy.config import SubsidySettings
from services.subsidy.handlers import make_handler
from services.subsidy.policy_files import load_policy_dir
from tools.expected import expected_assessment_events, expected_enrollment_events
from tools.population import simulate

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "subsidy_outputs.jsonl.gz"
POLICIES = ROOT / "tools" / "policies" / "budgeted"
SOURCES = {topics.ENROLLMENT_EVENTS: "/services/enrollment",
           topics.ASSESSMENT_EVENTS: "/services/assessment"}


def _incoming(topic: str, offset: int, type: str, data: dict[str, Any], *, id: str, source: str,
              subject: str, agency: str, time: str) -> Incoming:
    value = envelope.encode_raw(type, data, id=id, source=source, subject=subject,
                                agencyid=agency, time=time)
    event = envelope.decode(value, topic)
    return Incoming(event, RawRecord(topic, 0, offset, subject.encode(), value))


def inputs(persons: int = 1000, seed: int = 2217) -> list[Incoming]:
    """The enrollment and assessment events of a seeded population, as the handler gets them."""
    pop = simulate(persons, seed)
    enrollment = expected_enrollment_events(pop)
    assessment = expected_assessment_events(pop, enrollment)
    items: list[Incoming] = []
    for topic, expected in ((topics.ENROLLMENT_EVENTS, enrollment),
                            (topics.ASSESSMENT_EVENTS, assessment)):
        for o in expected.events:
            items.append(_incoming(topic, len(items), o.type, o.data, id=o.id,
                                   source=SOURCES[topic], subject=o.key, agency=o.agency,
                                   time=o.time))
    return items


def reviews(published: list[bytes], offset: int) -> list[Incoming]:
    """A reviewer's decision on every held grant published so far: release, deny, release..."""
    items = []
    held = [orjson.loads(v) for v in published if b'"skills.subsidy.SubsidyHeld.v1"' in v]
    for n, event in enumerate(held):
        data = event["data"]
        review = ev.HoldReviewed(
            grant_id=data["grant_id"], person_id=data["person_id"], agency=data["agency"],
            decision="deny" if n % 2 else "release", reviewer="golden", note=f"review {n}",
            reviewed_at=dt.datetime(2026, 12, 1, 9, n % 60, tzinfo=dt.UTC),
            review_id=f"review-{n}",
        )
        items.append(_incoming(topics.SUBSIDY_REVIEWS, offset + n, holds.REVIEWED,
                               ev.dump(review), id=f"review-{n}", source=holds.REVIEW_SOURCE,
                               subject=data["person_id"], agency=data["agency"],
                               time="2026-12-01T09:00:00+00:00"))
    return items


async def run(conn: asyncpg.Connection, items: list[Incoming], batch: int = 500
              ) -> tuple[list[bytes], float]:
    """Every record value the handler publishes for ``items`` (events and dead letters, in
    order), in batches of ``batch`` each in its own transaction; and the seconds spent in the
    handler calls."""
    settings = SubsidySettings(policy_dir=POLICIES)
    handle = make_handler(settings, load_policy_dir(POLICIES))
    published: list[bytes] = []
    spent = cpu = 0.0
    for start in range(0, len(items), batch):
        out = Outbox(source="/services/subsidy")
        async with conn.transaction():
            began, began_cpu = time.perf_counter(), time.process_time()
            await handle(conn, items[start:start + batch], out)
            spent += time.perf_counter() - began
            cpu += time.process_time() - began_cpu
        published += [row[3] for row in out.rows]
        published += [row[3] for _, _, row, _ in out.dead]
    run.cpu = cpu  # type: ignore[attr-defined]
    return published, spent


async def stream(conn: asyncpg.Connection, persons: int = 1000, batch: int = 500
                 ) -> tuple[list[bytes], float]:
    """The whole fixed stream: the population's events, then the reviews of its holds."""
    items = inputs(persons)
    published, spent = await run(conn, items, batch)
    more, spent_reviews = await run(conn, reviews(published, len(items)), batch)
    return published + more, spent + spent_reviews


def read_golden() -> list[bytes]:
    return gzip.decompress(GOLDEN.read_bytes()).splitlines()


def write_golden(published: list[bytes]) -> None:
    GOLDEN.write_bytes(gzip.compress(b"".join(v + b"\n" for v in published), mtime=0))


async def _main(command: str, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if command == "record":
            published, _ = await stream(conn)
            write_golden(published)
            print(f"recorded {len(published)} records in {GOLDEN}")
        elif command == "bench":
            items = inputs(1500)[:5000]
            _, spent = await run(conn, items, batch=len(items))
            print(f"{len(items)} events in one batch: {spent * 1000:.0f} ms in the handler, "
                  f"{run.cpu * 1000:.0f} ms of this process's CPU")  # type: ignore[attr-defined]
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
