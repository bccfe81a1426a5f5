"""The batch pipeline: decode, dedupe through the inbox, handle, commit, then commit offsets.

FastStream's batch subscriber polls (shared/runtime/faststream_app.py) and hands every poll's
raw records to :meth:`BatchConsumer.handle`; this module is what happens to them.

One database transaction per Kafka batch holds the inbox rows of the batch's events, the
handler's state changes and every outgoing record (events and dead letters, via the outbox).
Offsets are committed to Kafka only after that transaction commits, so a crash anywhere leads
to redelivery, which the inbox absorbs: effectively once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, KafkaError

from shared.contract.envelope import CloudEvent, DecodeError, decode
from shared.runtime import db, gc_tuning, logs, metrics
from shared.runtime.outbox import Outbox, Record, Relay

log = logging.getLogger(__name__)

# The highest outbox sequence value handed out so far and the oldest row not yet published.
PUBLISHED_SQL = (
    "SELECT pg_sequence_last_value(pg_get_serial_sequence('outbox', 'seq')::regclass),"
    " (SELECT min(seq) FROM outbox)"
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded event with the record it came in, for dead-lettering or parking."""

    event: CloudEvent
    record: Record


Handler = Callable[[asyncpg.Connection, list[Incoming], Outbox], Awaitable[None]]


def decode_records(
    records: Sequence[Record], agencies: frozenset[str], out: Outbox, topic_prefix: str = ""
) -> list[Incoming]:
    """Decode every record; dead-letter the bad ones and in-batch conflicting duplicates."""
    good: list[Incoming] = []
    seen: dict[tuple[str, str], bytes] = {}
    consumed: Counter[tuple[str, str]] = Counter()  # counted once per batch, not per record
    duplicates = 0
    names: dict[str, str] = {}
    for record in records:
        name = names.get(record.topic)
        if name is None:
            name = names[record.topic] = record.topic.removeprefix(topic_prefix)
        try:
            event = decode(record.value, name, agencies, record.key)
        except DecodeError as exc:
            out.dead_letter(record, exc.code, exc.detail, exc.key)
            continue
        consumed[(record.topic, event.type)] += 1
        earlier = seen.get(event.key)
        if earlier is None:
            seen[event.key] = event.digest
            good.append(Incoming(event, record))
        elif earlier == event.digest:
            duplicates += 1
        else:
            out.dead_letter(record, "conflicting_duplicate", _conflict_detail(event), event.key)
    for (topic, type), n in consumed.items():
        metrics.CONSUMED.labels(topic=topic, type=type).inc(n)
    if duplicates:
        metrics.DUPLICATES.inc(duplicates)
    return good


def _refusal(exc: BaseException) -> str:
    # The class and SQLSTATE only: PostgreSQL's message may quote the refused value.
    return (f"PostgreSQL refused the record: {type(exc).__name__} "
            f"(SQLSTATE {getattr(exc, 'sqlstate', None)})")


def _conflict_detail(event: CloudEvent) -> str:
    return f"source {event.source} id {event.id} was seen before with different content"


async def claim(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> list[Incoming]:
    """Record the batch's ids in the inbox; return only the events never seen before."""
    if not items:
        return []
    rows = await conn.fetch(
        "INSERT INTO inbox (source, id, digest) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) "
        "ON CONFLICT DO NOTHING RETURNING source, id",
        [i.event.source for i in items], [i.event.id for i in items],
        [i.event.digest for i in items],
    )
    fresh = {(r["source"], r["id"]) for r in rows}
    if len(fresh) == len(items):
        return items
    seen = [i for i in items if i.event.key not in fresh]
    earlier = {
        (r["source"], r["id"]): bytes(r["digest"])
        for r in await conn.fetch(
            "SELECT source, id, digest FROM inbox "
            "WHERE (source, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [i.event.source for i in seen], [i.event.id for i in seen],
        )
    }
    for item in seen:
        if earlier.get(item.event.key) == item.event.digest:
            metrics.DUPLICATES.inc()
        else:
            out.dead_letter(item.record, "conflicting_duplicate", _conflict_detail(item.event),
                            item.event.key)
    return [i for i in items if i.event.key in fresh]


class TimeOrder:
    """Releases records of several topics in the order the broker appended them.

    A service that reads two topics about the same person (the subsidy service reads the
    enrollment and the assessment events) must see them in one order that a replay from the
    beginning reproduces, or a rebuilt database could decide first-come-first-served rules
    differently. Records are buffered per partition and released by (timestamp, topic,
    partition, offset) only while no other assigned partition may still hold an earlier one:
    its buffer has a later head, or it has been read up to its high watermark.
    """

    PAUSE_AT = 20_000  # records buffered per partition before it is paused

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.buffers: dict[TopicPartition, deque[Any]] = {}
        self.fetched: dict[TopicPartition, int] = {}  # next offset getmany will return

    async def add(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assigned = self.consumer.assignment()
        for tp in [t for t in {*self.buffers, *self.fetched} if t not in assigned]:
            # revoked: the new owner reads them again. Forget how far it was read too, buffered
            # or not: a stale mark on a partition assigned back later (after another member
            # moved its offset) would make it look unread to its end and hold every release.
            self.buffers.pop(tp, None)
            self.fetched.pop(tp, None)
        for tp in assigned:
            if tp not in self.fetched:
                self.fetched[tp] = await self.consumer.position(tp)
        for tp, records in batch.items():
            buffer = self.buffers.setdefault(tp, deque())
            last = buffer[-1].offset if buffer else -1
            buffer.extend(r for r in records if r.offset > last)
            self.fetched[tp] = max(self.fetched.get(tp, 0), records[-1].offset + 1)
            if len(buffer) >= self.PAUSE_AT:
                self.consumer.pause(tp)

    def _may_hold_earlier(self, tp: TopicPartition) -> bool:
        highwater = self.consumer.highwater(tp)
        return highwater is None or self.fetched.get(tp, 0) < highwater

    def release(self, limit: int) -> dict[TopicPartition, list[Any]]:
        blocked = any(
            not self.buffers.get(tp) and self._may_hold_earlier(tp)
            for tp in self.consumer.assignment()
        )
        heads = [
            (buf[0].timestamp, tp.topic, tp.partition, buf[0].offset, tp)
            for tp, buf in self.buffers.items() if buf
        ]
        heapq.heapify(heads)
        out: dict[TopicPartition, list[Any]] = {}
        released = 0
        while heads and released < limit and not blocked:
            *_, tp = heapq.heappop(heads)
            buffer = self.buffers[tp]
            out.setdefault(tp, []).append(buffer.popleft())
            released += 1
            if buffer:
                head = buffer[0]
                heapq.heappush(heads, (head.timestamp, tp.topic, tp.partition, head.offset, tp))
            elif self._may_hold_earlier(tp):
                blocked = True  # its next record may be earlier than anything buffered
        for tp, buffer in self.buffers.items():
            if len(buffer) < self.PAUSE_AT // 2 and tp in self.consumer.paused():
                self.consumer.resume(tp)
        return out

    def rewind(self, failed: dict[TopicPartition, list[Any]]) -> None:
        """Drop the buffers and seek every partition back to its first unprocessed record."""
        for tp in set(failed) | set(self.buffers):
            first = (failed[tp][0].offset if tp in failed
                     else self.buffers[tp][0].offset if self.buffers.get(tp) else None)
            if first is not None:
                self.consumer.seek(tp, first)
                self.fetched[tp] = first
        self.buffers.clear()
        self.consumer.resume(*self.consumer.paused())


def by_partition(records: Sequence[Any]) -> dict[TopicPartition, list[Any]]:
    """One poll's records (FastStream's batch subscriber chains getmany's partitions into one
    tuple) grouped back by partition, each in offset order."""
    batch: dict[TopicPartition, list[Any]] = {}
    for (topic, partition), run in groupby(records, _topic_partition):
        batch.setdefault(TopicPartition(topic, partition), []).extend(run)
    return batch


_topic_partition = attrgetter("topic", "partition")


class BatchConsumer:
    """The consume-handle-commit pipeline of one service, driven by FastStream.

    The service's batch subscriber (shared/runtime/faststream_app.py) calls :meth:`handle` with
    the raw records of each non-empty poll; a timer in the app's lifespan calls :meth:`tick`,
    which does what an empty poll did: release buffered records that became releasable and
    commit offsets when idle (FastStream does not call a batch handler on an empty poll). Both
    hold :attr:`lock`, so exactly one of them touches the consumer and the database at a time.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer | None,
        pool: asyncpg.Pool,
        handler: Handler,
        make_outbox: Callable[[], Outbox],
        relay: Relay,
        *,
        agencies: frozenset[str],
        max_records: int,
        timeout_ms: int,
        top_up_after_ms: int = 0,
        top_up_wait_ms: int = 5,
        commit_interval: float = 0.2,
        pause_gc: bool = False,
        crash_after_db_commit: bool = False,
    ) -> None:
        self.pool = pool
        self.handler = handler
        self.make_outbox = make_outbox
        self.relay = relay
        self.agencies = agencies
        self.max_records = max_records
        self.timeout_ms = timeout_ms
        self.top_up_after_ms = top_up_after_ms
        self.top_up_wait_ms = top_up_wait_ms
        self.crash_after_db_commit = crash_after_db_commit
        self.pause_gc = pause_gc  # no cyclic collection inside a batch (gc_tuning.paused)
        self.healthy = False
        self.in_batch = False  # inside a batch's transaction right now
        self.wrote_outbox = False  # the batch in hand committed outbox rows (wake the relay)
        self.last_poll = 0.0
        # Last time the consumer moved on: a slice of records committed, or a poll found nothing
        # waiting. /healthz fails when this is too old (a partition that does not move).
        self.progressed_at = time.monotonic()
        self.next_offsets: dict[TopicPartition, int] = {}
        # Offsets processed (committed to the database) but not yet to Kafka: a commit is a
        # broker round trip, so it is made at most every commit_interval seconds and when idle.
        self.commit_interval = commit_interval
        self.uncommitted: dict[TopicPartition, int] = {}
        self.committed_at = 0.0
        # Processed offsets waiting for the relay, each with the outbox sequence value their
        # batches' rows are at or below: a group's committed offset means "processed and
        # published", which other services' pending watermarks rely on (shared/runtime/pending.py).
        self.unpublished: deque[tuple[int, dict[TopicPartition, int]]] = deque()
        self.lock = asyncio.Lock()
        self.backoff = 0.2
        # Set at shutdown (after the last batch) or after a failure: nothing more is processed.
        self.stopping = False
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self.polls = 0  # handler calls, so the timer can tell an idle consumer from a busy one
        self._polls_at_tick = 0
        self.alive: Callable[[], bool] = lambda: True  # the subscriber's consume task runs
        self.consumer: AIOKafkaConsumer | None = None
        self.order: TimeOrder | None = None
        if consumer is not None:
            self.attach(consumer)

    def attach(self, consumer: AIOKafkaConsumer, alive: Callable[[], bool] | None = None) -> None:
        """The subscriber's aiokafka consumer, once the broker has started it."""
        self.consumer = consumer
        if alive is not None:
            self.alive = alive
        # Several input topics: release records in broker time order (see TimeOrder).
        self.order = TimeOrder(consumer) if len(consumer.subscription()) > 1 else None

    async def handle(self, records: Sequence[Any]) -> None:
        """The batch subscriber's handler: one poll's raw records, across partitions."""
        async with self.lock:
            if self.stopping or self.consumer is None:
                return  # shut down or failed: the records stay uncommitted and are read again
            self.polls += 1
            self.last_poll = time.monotonic()
            try:
                batch = by_partition(await self.top_up(records))
                if self.order is not None:
                    await self.order.add(batch)
                    batch = self.order.release(self.max_records)
                if batch:
                    await self.run(batch)
                else:
                    await self.idle()
            except Exception as exc:
                self.fail(exc)

    async def top_up(self, records: Sequence[Any]) -> Sequence[Any]:
        """``records`` and, when they are stale, what arrived on the broker since (one more poll).

        aiokafka fetches in the background but leaves out of its fetches every partition that
        still has records buffered: the records a poll returns after a long batch are those
        the one fetch sent right after the previous poll caught, and everything that arrived
        while the batch ran is still on the broker. Handling only those few, batch after batch,
        paid a batch's fixed cost for a handful of records while the backlog grew (the subsidy
        took 4 to 15 records a batch at the start of the benchmark's assessment burst). So when
        the newest record of a poll is older than ``top_up_after_ms``, poll once more, for at
        most ``top_up_wait_ms``: the buffer is empty now, a fetch goes out and returns at once
        when records are waiting. The wait is short because a consumer of several topics often
        has a fetch of idle partitions in flight, which the broker holds for its fetch wait and
        which the new fetch must wait behind: there the top-up mostly finds nothing, and a
        miss costs the whole wait. A record's age is its Kafka timestamp against this machine's
        clock."""
        if not self.top_up_after_ms or not records or len(records) >= self.max_records:
            return records
        assert self.consumer is not None
        newest = max(r.timestamp for r in records)
        if time.time() * 1000 - newest < self.top_up_after_ms:
            return records  # fresh: nothing is known to wait behind them
        try:
            more = await self.consumer.getmany(timeout_ms=self.top_up_wait_ms,
                                               max_records=self.max_records - len(records))
        except (KafkaError, ConsumerStoppedError) as exc:  # FastStream's own poll meets it next
            log.warning("top-up poll failed, the batch goes on without it", extra={"error": repr(exc)})
            return records
        if not more:
            return records
        # by_partition merges a partition's runs; these come after the poll's, in offset order
        return [*records, *(r for part in more.values() for r in part)]

    async def tick(self) -> None:
        """The lifespan timer: what the handler would do on an empty poll, when there was one."""
        if self.stopping or self.consumer is None or self.lock.locked():
            return  # a batch is being handled: it commits and releases itself
        async with self.lock:
            if self.stopping or self.polls != self._polls_at_tick:
                self._polls_at_tick = self.polls  # records arrived since the last tick: busy
                return
            try:
                if self.alive():
                    self.last_poll = time.monotonic()
                batch: dict[TopicPartition, list[Any]] = {}
                if self.order is not None:
                    await self.order.add({})  # notes revocations, new partitions, high watermarks
                    batch = self.order.release(self.max_records)
                if batch:
                    await self.run(batch)
                else:
                    await self.idle()
            except Exception as exc:
                self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Anything but a database error is a bug or a lost broker: stop taking records (the
        failed batch's offsets are never committed) and let the host exit non-zero."""
        self.stopping = True
        log.error("batch handling failed", exc_info=exc)
        self.on_failure(exc)

    async def run(self, batch: dict[TopicPartition, list[Any]]) -> None:
        try:
            await self.process(batch)
        except db.DATABASE_ERRORS as exc:
            # The database is unreachable or failed (a refusal of the data itself was
            # isolated in process): rewind to the batch's first offsets and try again after
            # a bounded backoff. Slices already committed are skipped through the inbox.
            # (Not FastStream's nack(): it seeks without a backoff and without the buffers.)
            self.healthy = False
            log.warning("batch failed, will retry", extra={"error": repr(exc)})
            assert self.consumer is not None
            if self.order is not None:
                self.order.rewind(batch)
            else:
                for tp, records in batch.items():
                    self.consumer.seek(tp, records[0].offset)
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, 5.0)
            return
        self.backoff = 0.2
        self.healthy = True
        await self.commit(batch)

    async def idle(self) -> None:
        """Nothing to handle right now: commit what the relay has published."""
        assert self.consumer is not None
        await self.commit_offsets()
        self.healthy = bool(self.consumer.assignment())
        if not (self.order is not None and any(self.order.buffers.values())):
            self.progressed_at = time.monotonic()

    async def finish(self) -> None:
        """At shutdown: wait for the batch in hand, take no more, commit what is published."""
        async with self.lock:
            self.stopping = True
            if self.consumer is not None:
                self.committed_at = 0.0
                await self.commit_offsets()

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        records: list[Record] = [r for records in batch.values() for r in records]
        metrics.BATCH_SIZE.observe(len(records))
        self.in_batch = True  # /healthz shows it: the bench observes replicas working at once
        self.wrote_outbox = False
        try:
            with gc_tuning.paused() if self.pause_gc else contextlib.nullcontext():
                try:
                    await self.store(records)
                except db.DATABASE_ERRORS as exc:
                    if not db.refused(exc):
                        raise
                    await self.isolate(records, exc)
        finally:
            self.in_batch = False
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        if self.wrote_outbox:  # a batch that wrote no row gives the relay nothing to do
            self.relay.wake.set()
        if self.crash_after_db_commit:
            log.warning("test hook: exiting between database commit and offset commit")
            os._exit(17)

    async def store(self, records: list[Record]) -> None:
        """Decode, claim, handle and write ``records`` in one transaction."""
        out = self.make_outbox()
        decoded = decode_records(records, self.agencies, out, out.topic_prefix)
        # Every line logged while this batch is handled carries its trace ids (W3C traceparent).
        with logs.context(**logs.batch_fields([i.event for i in decoded])):
            async with self.pool.acquire() as conn, conn.transaction():
                fresh = await claim(conn, decoded, out)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
                if fresh:
                    await self.handler(conn, fresh, out)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
                await out.flush(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
            log.debug("batch committed", extra={"records": len(records), "fresh": len(fresh)})
        self.wrote_outbox = self.wrote_outbox or out.written > 0
        self.progressed_at = time.monotonic()

    async def isolate(self, records: list[Record], exc: BaseException) -> None:
        """The database refused something in ``records`` (db.refused): it is a record's fault
        and retrying would fail forever. Split the records in halves, each stored in its own
        transaction, first to last (so each partition keeps its order), until the record that
        fails alone is found; dead-letter it as database_refused and go on."""
        if len(records) == 1:
            [record] = records
            out = self.make_outbox()
            out.dead_letter(record, "database_refused", _refusal(exc))
            async with self.pool.acquire() as conn, conn.transaction():
                await out.flush(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
            self.wrote_outbox = True
            log.warning("record refused by the database, dead-lettered", extra={
                "topic": record.topic, "partition": record.partition, "offset": record.offset,
                "error": repr(exc)[:500],
            })
            self.progressed_at = time.monotonic()
            return
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            try:
                await self.store(half)
            except db.DATABASE_ERRORS as inner:
                if not db.refused(inner):
                    raise
                await self.isolate(half, inner)

    def seconds_without_progress(self) -> float:
        return time.monotonic() - self.progressed_at

    async def commit_offsets(self) -> None:
        """Commit to Kafka the processed offsets whose batches' outbox rows the relay has
        published (deleted), of partitions still assigned."""
        if not self.uncommitted and (
            not self.unpublished or time.monotonic() - self.committed_at < self.commit_interval
        ):
            return  # nothing new: look at the relay's progress at most every commit_interval
        self.committed_at = time.monotonic()
        try:
            async with self.pool.acquire(timeout=5) as conn:
                issued, oldest = await conn.fetchrow(PUBLISHED_SQL)  # type: ignore[misc]  # an aggregate: one row
        except (*db.DATABASE_ERRORS, TimeoutError) as exc:
            log.warning("outbox progress unknown, offsets not committed", extra={"error": repr(exc)})
            return
        if self.uncommitted:
            self.unpublished.append((issued or 0, self.uncommitted))
            self.uncommitted = {}
        ready: dict[TopicPartition, int] = {}
        while self.unpublished and (oldest is None or self.unpublished[0][0] < oldest):
            ready.update(self.unpublished.popleft()[1])
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in ready.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away; the new owner re-reads from the last
            # committed offset and the inbox absorbs what we already stored.
            log.warning("offset commit failed", extra={"error": repr(exc)})

    async def commit(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assert self.consumer is not None
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        self.next_offsets.update(offsets)
        self.uncommitted.update(offsets)
        if time.monotonic() - self.committed_at >= self.commit_interval:
            await self.commit_offsets()
        for tp in self.consumer.assignment():
            if tp not in self.next_offsets:
                self.next_offsets[tp] = await self.consumer.position(tp)
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            lag = max(0, highwater - self.next_offsets[tp])
            metrics.LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
