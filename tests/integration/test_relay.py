"""The outbox relay on PostgreSQL and Kafka: rows published as whole record batches land where a
``send`` per row would have put them, in ``seq`` order per partition, and only then are deleted
(a failed publication keeps them: tests/unit/runtime/test_pipeline.py)."""

from __future__ import annotations

import uuid
from collections import defaultdict

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.runtime import db
from shared.runtime.outbox import COLUMNS, Relay
from tests.harness import KAFKA
from tests.uow import drop_database, fresh_database

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def read_all(topic: str, expected: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every record of ``topic``, in partition order."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    got: list[tuple[int, bytes, bytes]] = []
    try:
        while len(got) < expected:
            polled = await consumer.getmany(timeout_ms=10_000)
            assert polled, f"{len(got)} of {expected} records arrived"
            for records in polled.values():
                got += [(r.partition, r.key, r.value) for r in records]
    finally:
        await consumer.stop()
    return got


async def test_the_relay_sends_record_batches_to_the_partitions_send_would_choose() -> None:
    dsn = await fresh_database("assessment")
    batched, reference = f"relay.{uuid.uuid4().hex[:8]}", f"relay.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (batched, reference)])
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all",
                                max_batch_size=16 * 1024)  # small: several batches a partition
    await producer.start()
    pool = await db.create_pool(dsn)
    try:
        # 1,500 rows of ~1 KB over 60 keys and two header sets.
        headers = [orjson.dumps([["content-type", "application/cloudevents+json"]]).decode(),
                   orjson.dumps([["traceparent", "00-ab-cd-01"]]).decode()]
        rows = [(batched, f"p_{n % 60}".encode(), "t.v1",
                 orjson.dumps({"n": n, "pad": "x" * 1000}), headers[n % 2]) for n in range(1500)]
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("outbox", records=rows, columns=COLUMNS)
        relay = Relay(pool, producer, batch_size=1000)
        assert await relay.publish_once() == 1000
        assert await relay.publish_once() == 500
        assert await relay.publish_once() == 0
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

        # The same keys sent one by one with the producer's own partitioner.
        for _, key, _, value, _ in rows:
            await producer.send(reference, key=key, value=value)
        await producer.flush()

        got = await read_all(batched, len(rows))
        expected = await read_all(reference, len(rows))
        partition_of = {key: p for p, key, _ in expected}
        assert len(set(partition_of.values())) == PARTITIONS  # the keys cover every partition
        assert all(partition_of[key] == p for p, key, _ in got)
        # Per partition, the rows in seq (here: n) order, each once.
        by_partition: dict[int, list[int]] = defaultdict(list)
        for p, _, value in got:
            by_partition[p].append(orjson.loads(value)["n"])
        for numbers in by_partition.values():
            assert numbers == sorted(numbers)
        assert sorted(n for numbers in by_partition.values() for n in numbers) == list(range(1500))
    finally:
        await pool.close()
        await producer.stop()
        await admin.delete_topics([batched, reference])
        await admin.close()
        await drop_database(dsn)


async def test_headers_travel_with_each_record() -> None:
    dsn = await fresh_database("subsidy")
    topic = f"relay.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all")
    await producer.start()
    pool = await db.create_pool(dsn)
    try:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("outbox", records=[
                (topic, b"k", "t.v1", b"one", orjson.dumps([["a", "1"]]).decode()),
                (topic, b"k", "t.v1", b"two", orjson.dumps([["a", "2"], ["b", "x"]]).decode()),
            ], columns=COLUMNS)
        assert await Relay(pool, producer, batch_size=10).publish_once() == 2
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            polled = await consumer.getmany(timeout_ms=10_000)
            records = [r for batch in polled.values() for r in batch]
        finally:
            await consumer.stop()
        assert [(r.value, list(r.headers)) for r in records] == [
            (b"one", [("a", b"1")]), (b"two", [("a", b"2"), ("b", b"x")])]
    finally:
        await pool.close()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
        await drop_database(dsn)
