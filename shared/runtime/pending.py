"""Parked records (order tolerance): store a record that waits for something, bring it back,
and dead-letter it as ``unknown_reference`` when the waiting period is over.

The ``pending`` table is part of every service database (migrations/0000_runtime.sql); a
record is parked under a service-chosen ``ref`` and replayed, in arrival order, by the batch
that sees what it waited for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import asyncpg

from shared.contract.envelope import decode
from shared.runtime import crypto, metrics
from shared.runtime.consumer import Incoming
from shared.runtime.outbox import Outbox, RawRecord

COLUMNS = ("ref", "event_type", "topic", "partition", "offset", "key", "value")


async def park(conn: asyncpg.Connection, parked: Sequence[tuple[str, Incoming]]) -> None:
    """Store the records with the ref each waits for (one COPY)."""
    if not parked:
        return
    await conn.copy_records_to_table(
        "pending",
        records=[
            (ref, i.event.type, i.record.topic, i.record.partition, i.record.offset,
             i.record.key.decode("utf-8", "replace") if i.record.key is not None else None,
             crypto.seal(i.record.value or b""))  # sealed at rest: national ids, names
            for ref, i in parked
        ],
        columns=COLUMNS,
    )


def raw_record(row: asyncpg.Record) -> RawRecord:
    return RawRecord(row["topic"], row["partition"], row["offset"],
                     row["key"].encode() if row["key"] is not None else None,
                     crypto.open_stored(bytes(row["value"])))


def incoming(row: asyncpg.Record, topic_prefix: str) -> Incoming:
    """A stored row as the event it was when it arrived (it was valid then: decode again)."""
    record = raw_record(row)
    return Incoming(decode(record.value, record.topic.removeprefix(topic_prefix)), record)


async def expire(
    conn: asyncpg.Connection, cutoff: dt.datetime, out: Outbox, wait_seconds: float,
    describe: Callable[[str], str] = lambda ref: ref,
) -> list[asyncpg.Record]:
    """Dead-letter, in arrival order, every record parked before ``cutoff``; return their rows
    so the service can release what they held. ``describe`` names what a ref waited for.
    Call inside a transaction and flush ``out``."""
    rows = await conn.fetch(
        "DELETE FROM pending WHERE received_at < $1 "
        "RETURNING seq, ref, topic, partition, \"offset\", key, value",
        cutoff,
    )
    rows = sorted(rows, key=lambda r: r["seq"])
    for r in rows:
        out.dead_letter(
            raw_record(r), "unknown_reference",
            f"{describe(r['ref'])} did not arrive within {wait_seconds:g} s",
        )
    metrics.PENDING.set(await conn.fetchval("SELECT count(*) FROM pending"))
    return rows
