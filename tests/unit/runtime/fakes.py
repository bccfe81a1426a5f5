"""In-memory stand-ins for what the runtime pieces talk to: an aiokafka consumer (assignment,
positions, high watermarks, pause/resume, seek, commit), an asyncpg pool and connection that
answer the inbox, dead-letter and outbox statements of shared/runtime, and a producer."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition


@dataclass
class Record:  # what aiokafka's getmany hands over, as much as the runtime reads
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None = b"k"
    value: bytes | None = b"{}"


class FakeConsumer:
    def __init__(self, topics: list[str], ends: dict[TopicPartition, int]) -> None:
        self.topics = topics
        self.ends = ends  # high watermark per assigned partition (None: not known yet)
        self.positions = {tp: 0 for tp in ends}
        self.paused_set: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.on_broker: list[Record] = []  # what a getmany of the pipeline's own returns
        self.polls: list[tuple[int, int]] = []  # (timeout_ms, max_records) of those getmany
        self.poll_error: Exception | None = None

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.polls.append((timeout_ms, max_records))
        if self.poll_error is not None:
            raise self.poll_error
        taken, self.on_broker = self.on_broker[:max_records], self.on_broker[max_records:]
        found: dict[TopicPartition, list[Record]] = {}
        for r in taken:
            found.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return found

    def subscription(self) -> set[str]:
        return set(self.topics)

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_set.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_set.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_set)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


@dataclass
class Tables:
    inbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    dead_letters: set[tuple[str, int, int]] = field(default_factory=set)
    dead_letter_event: set[tuple[str, str, bytes]] = field(default_factory=set)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    relay_locked_elsewhere: bool = False  # another replica's relay holds the relay lock
    lock_tries: int = 0
    relay_reads: int = 0


class FakeConnection:
    """Answers the statements of consumer.claim, Outbox.flush and Relay.publish_once by their
    text, on :class:`Tables`."""

    def __init__(self, tables: Tables) -> None:
        self.t = tables

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        if sql.startswith("INSERT INTO inbox"):
            new = []
            for source, id, digest in zip(*args, strict=True):
                if (source, id) not in self.t.inbox:
                    self.t.inbox[(source, id)] = digest
                    new.append({"source": source, "id": id})
            return new
        if sql.startswith("SELECT source, id, digest FROM inbox"):
            return [{"source": s, "id": i, "digest": self.t.inbox[(s, i)]}
                    for s, i in zip(*args, strict=True) if (s, i) in self.t.inbox]
        if sql.startswith("INSERT INTO dead_letters"):
            new = []
            for position in zip(*args, strict=True):
                if position not in self.t.dead_letters:
                    self.t.dead_letters.add(position)
                    new.append(dict(zip(("topic", "partition", "offset"), position, strict=True)))
            return new
        if sql.startswith("INSERT INTO dead_letter_event"):
            new = []
            for identity in zip(*args, strict=True):
                if identity not in self.t.dead_letter_event:
                    self.t.dead_letter_event.add(identity)
                    new.append(dict(zip(("source", "id", "digest"), identity, strict=True)))
            return new
        if sql.startswith("SELECT seq, topic, key, event_type, value, headers, created_at"):
            self.t.relay_reads += 1
            after, limit = args
            return [r for r in self.t.outbox if r["seq"] > after][:limit]
        raise AssertionError(f"unexpected statement {sql[:60]}")

    async def fetchrow(self, sql: str, *args: Any) -> tuple[int | None, int | None]:
        assert "pg_sequence_last_value" in sql, sql  # consumer.PUBLISHED_SQL
        seqs = [r["seq"] for r in self.t.outbox]
        return (self.t.seq or None, min(seqs) if seqs else None)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if "pg_try_advisory_xact_lock" in sql:
            self.t.lock_tries += 1
            return not self.t.relay_locked_elsewhere
        if "coalesce(max(seq) - min(seq) + 1, 0)" in sql:
            seqs = [r["seq"] for r in self.t.outbox]
            return max(seqs) - min(seqs) + 1 if seqs else 0
        raise AssertionError(f"unexpected statement {sql[:60]}")

    async def execute(self, sql: str, *args: Any) -> None:
        assert sql.startswith("DELETE FROM outbox WHERE seq = ANY"), sql
        gone = set(args[0])
        self.t.outbox = [r for r in self.t.outbox if r["seq"] not in gone]

    async def copy_records_to_table(self, table: str, *, records: list[tuple[Any, ...]],
                                    columns: tuple[str, ...] | list[str]) -> None:
        assert table == "outbox"
        for record in records:
            self.t.seq += 1
            row = dict(zip(columns, record, strict=True))
            self.t.outbox.append({**row, "seq": self.t.seq, "created_at": dt.datetime.now(dt.UTC)})


class FakePool:
    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or Tables()

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[FakeConnection]:
        yield FakeConnection(self.tables)


class FakeBatch:
    """aiokafka's BatchBuilder as the relay uses it: full after ``capacity`` records."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def append(self, *, key: bytes, value: bytes, timestamp: None,
               headers: list[tuple[str, bytes]]) -> object | None:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()


class FakeProducer:
    """Sends succeed (in order) unless ``failing``; each send returns its delivery future."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        self.started = self.stopped = False

    async def send(self, topic: str, *, value: bytes, key: bytes,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_exception(ConnectionError("broker away"))
        else:
            self.sent.append((topic, key, value, headers))
            future.set_result(None)
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        assert batch.closed, "an open batch lingers in the producer"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_exception(ConnectionError("broker away"))
        else:
            self.sent += [(topic, key, value, headers) for key, value, headers in batch.records]
            future.set_result(None)
        return future

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
