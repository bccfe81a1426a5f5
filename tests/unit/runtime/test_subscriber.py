"""The services' FastStream subscriber, in memory with FastStream's TestKafkaBroker: one batch
subscriber over the service's input topics, batch and MANUAL acknowledgement, the
co-partitioning assignor; a batch reaches the pipeline as the raw records, bytes and headers
untouched (FastStream's own parser would decode every header as UTF-8 and fail the batch on
one binary or null header, and JSON-decode the bodies)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.middlewares import AckPolicy

from shared.contract import topics
from shared.runtime.assignor import CoPartitionedAssignor
from shared.runtime.faststream_app import PromptBatchSubscriber
from shared.runtime.service import ServiceDefinition, declare_broker
from shared.runtime.settings import ServiceSettings

SERVICES = ("enrollment", "assessment", "subsidy")


def service(name: str) -> tuple[ServiceDefinition, ServiceSettings]:
    import importlib

    from shared.runtime.service import settings_class

    definition = importlib.import_module(f"services.{name}.app").DEFINITION
    return definition, settings_class(name)().model_copy(update={"topic_prefix": "t1."})


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Sequence[ConsumerRecord]] = []

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        self.batches.append(records)


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_one_batch_subscriber_on_its_input_topics_with_manual_acks(name: str) -> None:
    definition, settings = service(name)
    broker, subscriber = declare_broker(definition, settings, Recorder())
    assert list(broker.subscribers) == [subscriber]
    assert isinstance(subscriber, BatchSubscriber)
    assert type(subscriber) is PromptBatchSubscriber
    assert subscriber.topic_names == [f"t1.{t}" for t in definition.topics]
    assert subscriber.group_id == settings.group_id
    assert subscriber.ack_policy is AckPolicy.MANUAL
    assert subscriber.max_records == settings.batch_max_records
    assert subscriber.batch_timeout_ms == settings.batch_timeout_ms
    options = subscriber._connection_args
    assert options["enable_auto_commit"] is False
    assert options["partition_assignment_strategy"] == (CoPartitionedAssignor,)
    assert options["auto_offset_reset"] == settings.auto_offset_reset
    assert (options["max_partition_fetch_bytes"], options["fetch_max_bytes"]) == (4 << 20, 16 << 20)
    # Not aiokafka's 500 ms: a fetch of idle partitions must not hold back the busy ones.
    assert options["fetch_max_wait_ms"] == settings.fetch_max_wait_ms == 20
    assert all(not t.declare for t in subscriber.topics)  # created beforehand, with retention
    published = {p.topic for p in broker.publishers}  # type: ignore[attr-defined]
    assert published == {f"t1.{t}" for t in (*definition.outputs, topics.dlq(name))}


async def test_an_empty_poll_is_followed_by_the_next_at_once() -> None:
    """FastStream's own batch subscriber sleeps batch_timeout_ms after an empty poll, deaf to
    what arrives meanwhile; the services' polls again at once."""
    definition, settings = service("subsidy")
    _, subscriber = declare_broker(
        definition, settings.model_copy(update={"batch_timeout_ms": 60_000}), Recorder())

    class Empty:
        def __init__(self) -> None:
            self.polls: list[tuple[int, int]] = []

        async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, Any]:
            self.polls.append((timeout_ms, max_records))
            return {}

    consumer = Empty()
    polled = await asyncio.wait_for(subscriber.get_msg(consumer), timeout=5)
    assert polled == ()
    assert consumer.polls == [(60_000, settings.batch_max_records)]


async def test_a_batch_published_in_memory_reaches_the_pipeline_as_raw_bytes() -> None:
    definition, settings = service("subsidy")
    recorder = Recorder()
    broker, _ = declare_broker(definition, settings, recorder)
    async with TestKafkaBroker(broker) as test:
        await test.publish_batch(b'{"not": "decoded"}', b"\xff\xfe not json",
                                 topic="t1.skills.assessment.events")
    [batch] = recorder.batches
    assert [r.value for r in batch] == [b'{"not": "decoded"}', b"\xff\xfe not json"]
    assert {r.topic for r in batch} == {"t1.skills.assessment.events"}


async def test_a_poll_reaches_the_pipeline_without_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FastStream runs a plain-function parser or decoder in a worker thread, a hand-off and
    two wake-ups per poll; the services' are coroutine functions, run on the event loop."""
    import faststream._internal.utils.functions as functions

    hops: list[object] = []
    real = functions.run_in_threadpool  # type: ignore[attr-defined]  # imported there from fast_depends

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(functions, "run_in_threadpool", counted)
    definition, settings = service("assessment")
    recorder = Recorder()
    broker, _ = declare_broker(definition, settings, recorder)
    async with TestKafkaBroker(broker) as test:
        await test.publish_batch(b"{}", topic="t1.skills.assessment.upstream")
    assert len(recorder.batches) == 1
    assert hops == []


async def test_binary_and_null_headers_and_null_values_reach_the_pipeline_intact() -> None:
    definition, settings = service("enrollment")
    recorder = Recorder()
    broker, subscriber = declare_broker(definition, settings, recorder)

    def record(offset: int, value: bytes | None, headers: list[tuple[str, Any]]) -> ConsumerRecord:
        return ConsumerRecord(
            topic="t1.skills.training.upstream", partition=3, offset=offset, timestamp=1_700_000,
            timestamp_type=0, key=b"\x00key", value=value, checksum=None,
            serialized_key_size=4, serialized_value_size=len(value or b""), headers=headers,
        )

    poll = (
        record(7, b"\x00\xff", [("traceparent", b"\xff\xfe\xfd")]),  # not UTF-8
        record(8, None, [("n", None)]),  # a null header, a tombstone
        record(9, b"{}", []),
    )
    async with TestKafkaBroker(broker):
        await subscriber.process_message(poll)
    [batch] = recorder.batches
    assert tuple(batch) == poll  # the very records, in order, nothing parsed or copied
    assert batch[0].headers == [("traceparent", b"\xff\xfe\xfd")]
    assert batch[1].headers == [("n", None)] and batch[1].value is None
    assert [r.key for r in batch] == [b"\x00key"] * 3
