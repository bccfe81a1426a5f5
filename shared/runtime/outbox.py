"""The transactional outbox: rows written in the handler's transaction, published by a relay.

Everything a service sends to Kafka (its events, its dead letters) goes through here, so a
state change and the events it causes commit together or not at all. The relay publishes rows
in ``seq`` order with an idempotent producer and deletes them once the broker has acknowledged;
a crash in between republishes rows whose event ids are deterministic, which consumers dedupe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from shared.contract import envelope
from shared.contract.events import TYPE_OF, Payload
from shared.runtime import crypto, metrics
from shared.runtime.db import DATABASE_ERRORS

log = logging.getLogger(__name__)

RELAY_LOCK = 7261002
FULL_SCAN_SECONDS = 2.0
# A relay woken with rows of its own that found another replica's relay publishing tries again
# this soon (the other one takes only the rows it read before its own commit).
LOCKED_RETRY_SECONDS = 0.01
IDLE_SECONDS = 0.5  # a relay not woken looks anyway this often (rows of other writers)
COLUMNS = ("topic", "key", "event_type", "value", "headers")


class Record(Protocol):
    """What the pipeline reads of a Kafka record (for dead-lettering and parking): aiokafka's
    ``ConsumerRecord`` as polled (not copied: a copy per record was 3 % of a service's CPU) and
    `RawRecord`, a record read back from the database."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A Kafka record as stored (a parked record read back), a `Record`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Outbox:
    """Rows to write in the current transaction; ``flush`` writes them with one COPY."""

    source: str
    topic_prefix: str = ""
    dlq_topic: str = ""
    rows: list[tuple[str, bytes, str, bytes, str]] = field(default_factory=list)
    # Dead letters by the position they came from and, when the record has one, by its
    # (source, id) and bytes: a bad record redelivered (after a crash, or sent twice by its
    # producer) is dead-lettered once.
    dead: list[tuple[tuple[str, int, int], tuple[str, str, bytes] | None,
                     tuple[str, bytes, str, bytes, str], str]] = field(default_factory=list)
    written: int = 0  # rows flushed so far: the relay is woken only for a batch that wrote some

    def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        id: str,
        subject: str,
        agencyid: str,
        time: dt.datetime | str,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        """Publish a contract payload model (every service's events go out this way); returns
        its JSON object (for a caller that also records it, such as the subsidy service's
        decision ledger)."""
        event_type = TYPE_OF[type(payload)]
        data = payload.model_dump(mode="json")
        value = envelope.encode_raw(
            event_type, data, id=id, source=self.source, subject=subject, agencyid=agencyid,
            time=time, traceparent=traceparent,
        )
        self._append(topic, subject, event_type, value)
        return data

    def _append(self, topic: str, key: str, event_type: str, value: bytes) -> None:
        headers = [[k, v.decode()] for k, v in envelope.headers()]
        self.rows.append((self.topic_prefix + topic, key.encode(), event_type, value, _json(headers)))

    def dead_letter(self, record: Record, code: str, detail: str,
                    key: tuple[str, str] | None = None) -> None:
        """Send the record, untouched, to the service's DLQ with the contract's headers.

        ``key`` is the record's (source, id) where it has one: the same bytes under the same key
        are one dead letter however often they arrive."""
        headers = [
            ["error-code", code],
            ["error-detail", detail[:1000]],
            ["original-topic", record.topic],
            ["original-partition", str(record.partition)],
            ["original-offset", str(record.offset)],
        ]
        # The value sealed (it may carry national ids and names), its key id in a header; the
        # key as it came (bytea): it may hold what text cannot (0x00, invalid UTF-8).
        value = record.value or b""
        keyring = crypto.current()
        if keyring is not None:
            value = keyring.seal(value)
            headers.append([crypto.KEY_ID_HEADER, keyring.current_id])
        row = (self.dlq_topic, record.key or b"", "dead_letter", value, _json(headers))
        identity = None
        if key is not None:
            identity = (key[0], key[1], hashlib.sha256(record.value or b"").digest())
        self.dead.append(((record.topic, record.partition, record.offset), identity, row, code))

    async def flush(self, conn: asyncpg.Connection) -> None:
        if self.dead:
            await self._flush_dead(conn)
        if self.rows:
            await conn.copy_records_to_table("outbox", records=self.rows, columns=COLUMNS)
            self.written += len(self.rows)
            self.rows = []

    async def _flush_dead(self, conn: asyncpg.Connection) -> None:
        new = await conn.fetch(
            "INSERT INTO dead_letters (topic, partition, \"offset\") "
            "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[]) "
            "ON CONFLICT DO NOTHING RETURNING topic, partition, \"offset\"",
            [p[0] for p, _, _, _ in self.dead], [p[1] for p, _, _, _ in self.dead],
            [p[2] for p, _, _, _ in self.dead],
        )
        fresh = {(r["topic"], r["partition"], r["offset"]) for r in new}
        keyed = [i for p, i, _, _ in self.dead if i is not None and p in fresh]
        first: set[tuple[str, str, bytes]] = set()
        if keyed:
            first = {
                (r["source"], r["id"], bytes(r["digest"])) for r in await conn.fetch(
                    "INSERT INTO dead_letter_event (source, id, digest) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) "
                    "ON CONFLICT DO NOTHING RETURNING source, id, digest",
                    [i[0] for i in keyed], [i[1] for i in keyed], [i[2] for i in keyed],
                )
            }
        for position, identity, row, code in self.dead:
            if position not in fresh:
                continue
            if identity is not None:
                if identity not in first:
                    metrics.DUPLICATES.inc()
                    continue
                first.discard(identity)  # the same record twice in one batch: the first one
            self.rows.append(row)
            metrics.DLQ.labels(code=code).inc()
        self.dead = []


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class Relay:
    """Publishes outbox rows in order; one relay per database holds the lock at a time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        batch_size: int,
        make_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.batch_size = batch_size
        self.make_producer = make_producer
        self.wake = asyncio.Event()
        self.locked_elsewhere = False  # the last publish_once found another relay publishing
        self.healthy = True
        self.kafka_failures = 0
        # Published rows are deleted, and a busy outbox leaves many dead index entries below
        # the live ones until vacuum: reading from the last published seq skips them. A full
        # read from the start every FULL_SCAN_SECONDS picks up rows committed late with a
        # lower seq (another replica's concurrent transaction).
        self.after = 0
        self.full_scan_due = 0.0
        # The partition of a key, as the producer's ``send`` would choose it (murmur2, Java's).
        self.partitioner = DefaultPartitioner()

    async def renew_producer(self) -> None:
        """A fresh idempotent producer: after a broker outage the old one's sequence numbers
        may no longer match the broker's (OutOfOrderSequenceNumber forever). Safe because the
        rows stay in the outbox and are published again with the same ids."""
        if self.make_producer is None:
            return
        old, self.producer = self.producer, self.make_producer()
        try:
            await old.stop()
        except Exception as exc:  # the old producer is being thrown away either way
            log.warning("stopping the old producer failed", extra={"error": repr(exc)})
        await self.producer.start()

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = 0.1
        while not stopping.is_set():
            # Cleared before looking, not after finding nothing: a batch committed while we
            # publish sets it again, so its rows never wait for the timeout below.
            woken = self.wake.is_set()
            self.wake.clear()
            try:
                sent = await self.publish_once()
                self.healthy = True
                backoff = 0.1
            except DATABASE_ERRORS as exc:
                self.healthy = False
                log.warning("outbox relay failed, retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception as exc:  # a Kafka error: keep the rows, retry with a bound
                self.healthy = False
                self.kafka_failures += 1
                log.warning("outbox relay could not publish", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if self.kafka_failures >= 3:
                    try:
                        await self.renew_producer()
                        self.kafka_failures = 0
                    except Exception as renew:  # broker still away: try again later
                        log.warning("producer renewal failed", extra={"error": repr(renew)})
                continue
            self.kafka_failures = 0
            step = next_step(sent, self.batch_size, woken=woken, locked_elsewhere=self.locked_elsewhere)
            if step == "again":
                continue
            if step == "retry soon":
                self.wake.set()
                await asyncio.sleep(LOCKED_RETRY_SECONDS)
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=IDLE_SECONDS)
            except TimeoutError:
                pass

    async def send(self, rows: list[asyncpg.Record]) -> None:
        """Publish ``rows`` (in ``seq`` order) and wait until the broker has them all.

        Each row goes to the partition its key gives (the producer's default partitioner, as
        ``send`` would choose), appended to a record batch per topic partition that is sent
        whole when full and at the end: one future per batch instead of one per record (the
        relay took about 50 µs a row with a ``send`` per row). The batches are closed before
        they are handed over, so the producer sends them at once instead of lingering
        (``linger_ms``) for records that will not come. Rows of one partition keep their
        order: they are appended in ``seq`` order and a partition's batches are queued in the
        order they are sent."""
        producer = self.producer
        futures = []
        batches: dict[tuple[str, int], Any] = {}
        partitions: dict[str, list[int]] = {}
        parsed: dict[str, list[tuple[str, bytes]]] = {}  # most rows share their headers
        for row in rows:
            topic, key, value = row["topic"], bytes(row["key"]), bytes(row["value"])
            headers = parsed.get(row["headers"])
            if headers is None:
                headers = parsed[row["headers"]] = [
                    (k, v.encode()) for k, v in orjson.loads(row["headers"])
                ]
            of_topic = partitions.get(topic)
            if of_topic is None:
                of_topic = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = self.partitioner(key, of_topic, of_topic)
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[topic, partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[topic, partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)  # the first always fits
        for (topic, partition), batch in batches.items():
            batch.close()  # complete: sent at once, not after the producer's linger
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def publish_once(self) -> int:
        self.locked_elsewhere = False
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                self.locked_elsewhere = True
                return 0
            full = time.monotonic() >= self.full_scan_due
            if full:
                self.full_scan_due = time.monotonic() + FULL_SCAN_SECONDS
            rows = await conn.fetch(
                "SELECT seq, topic, key, event_type, value, headers, created_at FROM outbox "
                "WHERE seq > $1 ORDER BY seq LIMIT $2",
                0 if full else self.after, self.batch_size,
            )
            if not rows:
                if full:
                    metrics.OUTBOX_BACKLOG.set(0)
                    metrics.OUTBOX_AGE.set(0)
                return 0
            metrics.OUTBOX_AGE.set(max(0.0, time.time() - rows[0]["created_at"].timestamp()))
            await self.send(rows)
            await conn.execute(
                "DELETE FROM outbox WHERE seq = ANY($1::bigint[])", [r["seq"] for r in rows]
            )
            published = Counter((row["topic"], row["event_type"]) for row in rows)
            for (topic, event_type), n in published.items():
                metrics.PUBLISHED.labels(topic=topic, type=event_type).inc(n)
            self.after = max(self.after, rows[-1]["seq"])
            if full:
                backlog = await conn.fetchval(
                    "SELECT coalesce(max(seq) - min(seq) + 1, 0) FROM outbox"
                )
                metrics.OUTBOX_BACKLOG.set(backlog)
            return len(rows)


def next_step(sent: int, batch_size: int, *, woken: bool, locked_elsewhere: bool) -> str:
    """What the relay does after a round that published ``sent`` rows.

    "again" after a full batch (more rows wait). "retry soon" when it was woken for rows of its
    own but another replica's relay held the lock: that one may have read before they were
    committed. Otherwise "wait" for the next wake (or IDLE_SECONDS): a partial batch took every
    row committed before it looked, and a batch committed since then has set the wake again.
    Looking again at once after every round found nothing about as often as it found rows: an
    empty round is four statements (begin, the lock, the select, commit), a third of a small
    batch's round trips."""
    if sent >= batch_size:
        return "again"
    if locked_elsewhere and woken:
        return "retry soon"
    return "wait"
