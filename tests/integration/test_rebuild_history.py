"""tools.rebuild and the topics' history: a rebuild from a log that lost its start is refused.

A database rebuilt from input whose first records were removed (retention, DeleteRecords) would
forget the decisions those records led to, and pay again when their consequences arrive; the
tool must refuse and change nothing. With the whole history, it rewinds and recreates.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from shared.contract import topics
from tests.harness import KAFKA, ROOT, Producer, ServiceProcess, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def world() -> AsyncIterator[Stack]:
    """A world of its own: this test deletes records, which no other test may see."""
    stack = Stack()
    await stack.create_topics()
    yield stack
    await stack.drop()


def rebuild(service: ServiceProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.rebuild", service.name, "--yes"], cwd=ROOT,
        env=service.environment(), capture_output=True, text=True, timeout=120,
    )


async def _committed(world: Stack, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()


async def _commit(group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def _marked(service: ServiceProcess) -> bool:
    conn = await service.db()
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM inbox WHERE source = '/marker'"))
    finally:
        await conn.close()


async def test_a_rebuild_is_refused_and_changes_nothing_when_an_input_partition_lost_its_first_records(
    world: Stack,
) -> None:
    service = ServiceProcess("enrollment", world)  # never started: the rebuild needs it stopped
    service.migrate()
    conn = await service.db()
    try:
        await conn.execute("INSERT INTO inbox (source, id, digest) VALUES ('/marker', '1', '')")
    finally:
        await conn.close()
    upstream = world.topic(topics.TRAINING_UPSTREAM)
    async with Producer(world) as producer:
        for _ in range(3):
            await producer.producer.send_and_wait(upstream, value=b"{}", key=b"k", partition=1)
    group = f"{world.prefix}enrollment"
    tps = [TopicPartition(upstream, p) for p in range(4)]
    await _commit(group, {tp: 3 if tp.partition == 1 else 0 for tp in tps})

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_records({tps[1]: RecordsToDelete(before_offset=2)})
    finally:
        await admin.close()

    refused = rebuild(service)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{upstream}[1] starts at 2" in refused.stderr
    assert "no longer starts at offset 0" in refused.stderr
    assert await _marked(service)  # the database was not dropped
    assert (await _committed(world, group, tps))[tps[1]] == 3  # nor the group rewound


async def test_a_rebuild_with_the_whole_history_rewinds_the_group_and_recreates_the_database(
    world: Stack,
) -> None:
    service = ServiceProcess("enrollment", world)
    service.migrate()
    conn = await service.db()
    try:
        await conn.execute("INSERT INTO inbox (source, id, digest) VALUES ('/marker', '1', '')")
    finally:
        await conn.close()
    upstream = world.topic(topics.TRAINING_UPSTREAM)
    async with Producer(world) as producer:
        for _ in range(3):
            await producer.producer.send_and_wait(upstream, value=b"{}", key=b"k", partition=1)
    group = f"{world.prefix}enrollment"
    tps = [TopicPartition(upstream, p) for p in range(4)]
    await _commit(group, {tp: 3 if tp.partition == 1 else 0 for tp in tps})

    done = rebuild(service)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{upstream} (3 records to re-read)" in done.stdout
    assert not await _marked(service)
    assert (await _committed(world, group, tps))[tps[1]] == 0
