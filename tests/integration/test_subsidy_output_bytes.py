"""The subsidy handler publishes the same bytes as when tests/data/subsidy_outputs.jsonl.gz was
recorded (before the engine took the contract models), and every event it publishes is valid
under the contract's payload models (every output kind: grants of each stage, holds,
rejections of many reasons, reversals, budget thresholds)."""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from shared.contract import events as ev
from shared.contract import topics
from tests import subsidy_golden
from tests.harness import ServiceProcess, Stack

pytestmark = pytest.mark.integration


async def test_published_bytes_equal_the_recorded_ones(stack: Stack) -> None:
    # A database of its own (dropped with the stack's): its thousand persons must not meet the
    # other modules' subsidy service.
    url = stack.db_url("subsidy_golden")
    ServiceProcess("subsidy", stack, env={"SUBSIDY_DATABASE_URL": url}).migrate()
    conn = await asyncpg.connect(url)
    try:
        published, _ = await subsidy_golden.stream(conn)
    finally:
        await conn.close()
    recorded = subsidy_golden.read_golden()
    assert len(published) == len(recorded)
    for n, (now, before) in enumerate(zip(published, recorded, strict=True)):
        assert now == before, f"record {n} differs:\n{now!r}\n{before!r}"
    kinds = set()
    for value in published:
        event = orjson.loads(value)
        model = ev.TOPIC_TYPES[topics.SUBSIDY_EVENTS][event["type"]]
        model.model_validate(event["data"])
        kinds.add(event["type"])
    assert kinds == set(ev.TOPIC_TYPES[topics.SUBSIDY_EVENTS])  # every output kind
