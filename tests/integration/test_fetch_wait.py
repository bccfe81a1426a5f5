"""How long the broker may hold a service's fetch (shared/runtime/faststream_app.py,
``fetch_long_when_idle``), on the real broker with aiokafka 0.14's fetcher.

A fetch of every assigned partition may be held long: the broker answers it as soon as a record
arrives on any of them. A fetch that leaves out partitions with records still buffered must be
held only briefly: a record arriving on one of those waits until the broker answers it."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.runtime.faststream_app import fetch_long_when_idle
from tests.harness import KAFKA

pytestmark = pytest.mark.integration

BUSY_MS, IDLE_MS = 20, 6000
PROMPT = IDLE_MS / 1000 / 2  # well inside a held long fetch, far beyond a short one


async def topics_and_consumer(
    waiting: int = 0,
) -> tuple[list[str], AIOKafkaConsumer, AIOKafkaProducer]:
    """Two topics of two partitions, ``waiting`` records on the first's partition 0 before the
    consumer starts (so that its first fetch brings them all), and the adapted consumer."""
    names = [f"fetchwait.{uuid.uuid4().hex[:8]}" for _ in range(2)]
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1) for t in names])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    for n in range(waiting):
        await producer.send_and_wait(names[0], b"%d" % n, partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=BUSY_MS)
    await consumer.start()
    consumer.assign([TopicPartition(t, p) for t in names for p in (0, 1)])
    fetch_long_when_idle(consumer, BUSY_MS, IDLE_MS)
    return names, consumer, producer


async def fetch_in_flight(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Until a fetch planned with ``wait_ms`` is in flight."""
    fetcher = consumer._fetcher
    for _ in range(500):
        if fetcher._in_flight and fetcher._fetch_max_wait_ms == wait_ms:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no fetch with a {wait_ms} ms wait went out "
                         f"(last: {fetcher._fetch_max_wait_ms} ms)")


async def test_a_fetch_of_every_partition_is_held_long_and_answered_when_a_record_arrives() -> None:
    names, consumer, producer = await topics_and_consumer()
    try:
        await fetch_in_flight(consumer, IDLE_MS)  # nothing buffered: the long wait
        await asyncio.sleep(0.2)  # the broker holds it
        began = time.monotonic()
        await producer.send_and_wait(names[1], b"v", key=b"k", partition=1)
        polled = await consumer.getmany(timeout_ms=3 * IDLE_MS)
        took = time.monotonic() - began
        assert [r.value for rs in polled.values() for r in rs] == [b"v"]
        assert took < PROMPT, f"the held fetch was answered after {took:.2f} s"
    finally:
        await producer.stop()
        await consumer.stop()


async def test_a_fetch_leaving_out_buffered_partitions_is_held_briefly() -> None:
    names, consumer, producer = await topics_and_consumer(waiting=10)
    busy = TopicPartition(names[0], 0)
    try:
        first: list[bytes] = []
        while not first:  # one record taken, the other nine stay buffered in the fetcher
            polled = await consumer.getmany(busy, timeout_ms=3 * IDLE_MS, max_records=1)
            first = [r.value for rs in polled.values() for r in rs]
        # aiokafka now fetches the other partitions only, and briefly
        await fetch_in_flight(consumer, BUSY_MS)
        rest = await consumer.getmany(busy, timeout_ms=3 * IDLE_MS, max_records=100)
        assert len(rest[busy]) == 9
        began = time.monotonic()
        await producer.send_and_wait(busy.topic, b"late", partition=busy.partition)
        got: list[bytes] = []
        while not got and time.monotonic() - began < 3 * IDLE_MS / 1000:
            polled = await consumer.getmany(timeout_ms=3 * IDLE_MS)
            got = [r.value for rs in polled.values() for r in rs]
        took = time.monotonic() - began
        assert got == [b"late"]
        # Held for IDLE_MS, the fetch of the other partitions would have kept it that long.
        assert took < PROMPT, f"the record on the busy partition waited {took:.2f} s"
    finally:
        await producer.stop()
        await consumer.stop()
