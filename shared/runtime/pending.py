"""Parked records (order tolerance): store a record that waits for something, bring it back,
and dead-letter it as ``unknown_reference`` when the waiting period is over.

The ``pending`` table is part of every service database (shared/runtime/tables.py); a
record is parked under a service-chosen ``ref`` and replayed, in arrival order, by the batch
that sees what it waited for.

When a parked record may be given up on is decided by a :class:`Watermark` over the chain of
consumer groups that would bring what it waits for (docs/GUARANTEES.md, "Waiting that knows
who is behind"): not by this service's clock alone, since the reference may be queued in
another service's backlog.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

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


# ---- when a parked record may expire ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    """A consumer group and the topics it reads. What the group has committed is processed and
    its outputs are on Kafka: the batch consumer commits a batch's offsets only once the relay
    has published the batch's outbox rows (shared/runtime/consumer.py)."""

    group: str
    topics: tuple[str, ...]


class Offsets(Protocol):
    """What the watermark reads from Kafka (a fake in the unit tests)."""

    async def ends(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """The end offset of every partition of ``topics``."""

    async def positions(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """Where ``group`` resumes in every partition of ``topics``: its committed offset, or
        the partition's log start where it has committed none."""


@dataclass
class _Probe:
    started: float  # wall-clock time of the first stage's end-offset snapshot
    stage: int = 0
    target: dict[tuple[str, int], int] | None = None  # end offsets the stage's group must pass


class Watermark:
    """The time up to which everything that would bring a parked record's reference is through.

    ``stages`` is the chain, farthest upstream first, ending with the service's own group over
    its own input topics. A probe takes the first stage's end offsets at a time ``t``; once that
    group's positions have passed them, it takes the next stage's end offsets (which then hold
    every output of those records) and waits for that group, and so on. When the last stage has
    passed, every record appended to the chain's topics before ``t`` has been processed by every
    stage, this service included: ``at`` becomes ``t``. One probe is in flight at a time, so a
    backlog of any length only holds the watermark back, and a steady lag (never zero, but
    moving) still lets it advance.
    """

    def __init__(self, stages: Sequence[Stage], offsets: Offsets,
                 clock: Callable[[], float] = time.time) -> None:
        self.stages = tuple(stages)
        self.offsets = offsets
        self.clock = clock
        self.at = 0.0
        self.probe: _Probe | None = None

    async def advance(self) -> float:
        """Move the probe as far as the groups allow; return the watermark."""
        if self.probe is None:
            self.probe = _Probe(self.clock())
        probe = self.probe
        while probe.stage < len(self.stages):
            stage = self.stages[probe.stage]
            if probe.target is None:
                probe.target = await self.offsets.ends(stage.topics)
            positions = await self.offsets.positions(stage.group, stage.topics)
            behind = {tp for tp, end in probe.target.items() if positions.get(tp, 0) < end}
            if behind:
                return self.at
            probe.stage, probe.target = probe.stage + 1, None
        self.at = max(self.at, probe.started)
        self.probe = None
        metrics.PENDING_WATERMARK.set(self.at)
        return self.at


def expiry_cutoff(now: float, watermark: float, wait_seconds: float) -> float:
    """Records parked before this time may be dead-lettered: a record parked at ``r`` expires
    once the watermark has passed ``r + wait_seconds`` (everything appended upstream until a
    waiting period after it arrived is through, and its reference was not among it)."""
    return min(now, watermark) - wait_seconds


def stages(own_group: str, own_topics: Sequence[str], upstream: Mapping[str, Sequence[str]],
           prefix: str = "") -> list[Stage]:
    """The chain of a service: the ``upstream`` groups (setting ``PENDING_UPSTREAM``, in order,
    names and topics without the prefix) and then its own group over its own topics."""
    chain = [Stage(prefix + group, tuple(prefix + t for t in names))
             for group, names in upstream.items()]
    return [*chain, Stage(own_group, tuple(own_topics))]


class KafkaOffsets:
    """:class:`Offsets` from the cluster: end and start offsets through a group-less consumer,
    committed offsets through the admin client."""

    def __init__(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        self.admin = admin
        self.consumer = consumer
        self.partitions: dict[str, list[int]] = {}

    async def _partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        missing = [t for t in topics if not self.partitions.get(t)]
        if missing:
            for meta in await self.admin.describe_topics(missing):
                if not meta["error_code"]:
                    self.partitions[meta["topic"]] = sorted(p["partition"] for p in meta["partitions"])
            absent = [t for t in missing if not self.partitions.get(t)]
            if absent:  # an unknown topic must not read as "nothing to wait for"
                raise LookupError(f"no partitions known for {absent}")
        return [TopicPartition(t, p) for t in topics for p in self.partitions[t]]

    async def ends(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        found = await self.consumer.end_offsets(await self._partitions(topics))
        return {(tp.topic, tp.partition): o for tp, o in found.items()}

    async def positions(self, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        tps = await self._partitions(topics)
        committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        found = {(tp.topic, tp.partition): m.offset for tp, m in committed.items() if m.offset >= 0}
        never = [tp for tp in tps if (tp.topic, tp.partition) not in found]
        if never:  # the group would start at the log start (auto_offset_reset earliest)
            for tp, o in (await self.consumer.beginning_offsets(never)).items():
                found[(tp.topic, tp.partition)] = o
        return found
