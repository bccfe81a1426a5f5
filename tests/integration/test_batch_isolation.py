"""The batch consumer on the real PostgreSQL: a record the database refuses is isolated by
splitting its batch, dead-lettered, and everything else is stored once, in order; a transient
error is not isolated (the batch is retried whole)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition

from shared.contract import topics
from shared.contract.envelope import encode_raw
from shared.runtime import db
from shared.runtime.consumer import BatchConsumer, Incoming
from shared.runtime.outbox import Outbox
from tests.harness import PG, ROOT

pytestmark = pytest.mark.integration

UP = topics.TRAINING_UPSTREAM
AGENCIES = frozenset({"suqian"})


@dataclass
class Record:  # what aiokafka's getmany hands over, as much as the consumer reads
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class OneTopic:
    def subscription(self) -> set[str]:
        return {UP}


class NoRelay:
    wake = asyncio.Event()


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    url = f"{PG}/isolation_{uuid.uuid4().hex[:8]}"
    await db.ensure_database(url)
    await db.migrate(url, ROOT / "services" / "assessment")  # the runtime's tables (and some)
    pool = await db.create_pool(url)
    await pool.execute(  # the test handler's own table
        "CREATE TABLE handled (seq bigserial PRIMARY KEY, id text NOT NULL,"
        " hours numeric NOT NULL CHECK (hours <= 10))")
    yield pool
    await pool.close()
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def store_hours(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
    """One bulk statement for the whole batch, as the services' handlers write."""
    await conn.execute(
        "INSERT INTO handled (id, hours) SELECT * FROM unnest($1::text[], $2::numeric[])",
        [i.event.id for i in items], [float(i.event.data.hours) for i in items],  # type: ignore[attr-defined]  # AttendanceRecorded
    )


def attendance(id: str, hours: float) -> bytes:
    data = {"enrollment_ref": "INST-T/1", "institution_id": "INST-T", "date": "2026-03-02",
            "hours": hours}
    return encode_raw("skills.training.AttendanceRecorded.v1", data, id=id, source="/i",
                      subject="INST-T/1", agencyid="suqian", time="2026-03-02T09:00:00+08:00")


def consumer_of(pool: asyncpg.Pool, handler=store_hours) -> BatchConsumer:  # noqa: ANN001
    return BatchConsumer(
        OneTopic(), pool, handler,
        lambda: Outbox(source="/services/test", dlq_topic="test.dlq"), NoRelay(),  # type: ignore[arg-type]  # a fake with the used part of the protocol
        agencies=AGENCIES, max_records=100, timeout_ms=10,
    )


async def test_a_refused_record_is_isolated_and_dead_lettered_and_the_rest_stored_once_in_order(
    pool: asyncpg.Pool,
) -> None:
    # Hours above 10 break the table's CHECK (SQLSTATE 23514) and fail the whole batch.
    bad = {(0, 3), (0, 4), (1, 6)}
    batch = {
        TopicPartition(UP, p): [
            Record(UP, p, o, b"k", b"{not json" if (p, o) == (1, 2) else
                   attendance(f"{p}-{o}", 11 if (p, o) in bad else 8))
            for o in range(10)
        ]
        for p in (0, 1)
    }
    await consumer_of(pool).process(batch)

    async with pool.acquire() as conn:
        handled = [r["id"] for r in await conn.fetch("SELECT id FROM handled ORDER BY seq")]
        letters = await conn.fetch("SELECT key, value, headers FROM outbox ORDER BY seq")
        inbox = {r["id"] for r in await conn.fetch("SELECT id FROM inbox")}
    good = [f"{p}-{o}" for p in (0, 1) for o in range(10) if (p, o) not in bad | {(1, 2)}]
    assert handled == good  # each once, each partition in offset order
    assert inbox == set(good)
    codes = {}
    for row in letters:
        headers = dict(orjson.loads(row["headers"]))
        codes[(int(headers["original-partition"]), int(headers["original-offset"]))] = headers["error-code"]
        assert bytes(row["key"]) == b"k"
    assert codes == {**{position: "database_refused" for position in bad}, (1, 2): "malformed_json"}


async def test_a_transient_error_is_not_isolated_but_fails_the_batch_for_a_retry(
    pool: asyncpg.Pool,
) -> None:
    async def contended(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        await store_hours(conn, items, out)
        raise asyncpg.SerializationError("could not serialize access")

    batch = {TopicPartition(UP, 0): [Record(UP, 0, o, b"k", attendance(f"t-{o}", 8)) for o in range(4)]}
    with pytest.raises(asyncpg.SerializationError):
        await consumer_of(pool, contended).process(batch)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM handled") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM dead_letters") == 0
