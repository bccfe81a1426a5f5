"""TimeOrder on a fake consumer: records of several topics are released in broker time order,
only while no assigned partition may still hold an earlier one; full buffers pause their
partition; a rewind seeks every partition back to its first unprocessed record."""

from __future__ import annotations

from aiokafka import TopicPartition

from shared.runtime.consumer import TimeOrder
from tests.unit.runtime.fakes import FakeConsumer, Record

A, B = TopicPartition("a", 0), TopicPartition("b", 0)


def records(tp: TopicPartition, stamps: list[int], first: int = 0) -> list[Record]:
    return [Record(tp.topic, tp.partition, first + i, ts) for i, ts in enumerate(stamps)]


async def test_records_of_two_topics_read_to_their_ends_come_out_by_timestamp() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 3, B: 2})
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 3, 5]), B: records(B, [2, 4])})
    released = order.release(100)
    merged = sorted((r.timestamp, r.topic, r.offset) for rs in released.values() for r in rs)
    assert [(t, o) for _, t, o in merged] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert [r.offset for r in released[A]] == [0, 1, 2]  # each partition in offset order
    assert not any(order.buffers.values())


async def test_nothing_later_than_the_head_of_a_partition_not_read_to_its_end_is_released() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 3, B: 5})  # b has records not fetched yet
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 3, 5]), B: records(B, [2, 4])})
    released = order.release(100)
    # b's buffer empties after ts 4; its next record may be earlier than a's ts 5: a@2 waits
    assert [r.offset for r in released[A]] == [0, 1]
    assert [r.offset for r in released[B]] == [0, 1]
    assert [r.timestamp for r in order.buffers[A]] == [5]
    assert order.release(100) == {}  # still nothing: b is not read to its end
    await order.add({B: records(B, [6, 7, 8], first=2)})
    again = order.release(100)
    assert [r.timestamp for r in again[A]] == [5]
    assert [r.timestamp for r in again[B]] == [6, 7, 8]


async def test_an_assigned_partition_with_nothing_fetched_holds_every_release() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 3, B: None})  # type: ignore[dict-item]
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 2, 3])})
    assert order.release(100) == {}
    consumer.ends[B] = 0  # b turns out empty: a is released
    assert [r.offset for r in order.release(100)[A]] == [0, 1, 2]


async def test_the_release_limit_is_kept_and_the_rest_stays_buffered_in_order() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 4, B: 4})
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 3, 5, 7]), B: records(B, [2, 4, 6, 8])})
    first = order.release(3)
    assert sum(len(v) for v in first.values()) == 3
    assert [r.timestamp for r in first[A]] == [1, 3] and [r.timestamp for r in first[B]] == [2]
    rest = order.release(100)
    assert [r.timestamp for r in rest[A]] == [5, 7] and [r.timestamp for r in rest[B]] == [4, 6, 8]


async def test_a_full_buffer_pauses_its_partition_until_it_is_half_drained() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 10, B: 10})
    order = TimeOrder(consumer)
    order.PAUSE_AT = 4
    await order.add({A: records(A, [1, 2, 3, 4])})
    assert consumer.paused() == {A}
    await order.add({B: records(B, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])})
    order.release(3)  # a keeps one record buffered, under half of PAUSE_AT: resumed
    assert A not in consumer.paused()


async def test_records_fetched_twice_are_buffered_once() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 3, B: 0})
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 2])})
    await order.add({A: records(A, [1, 2, 3])})  # a re-fetch after a seek overlaps
    assert [r.offset for r in order.release(100)[A]] == [0, 1, 2]


async def test_rewind_seeks_each_partition_to_its_first_unprocessed_record_and_resumes() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 6, B: 6})
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 3, 5]), B: records(B, [2, 4, 6])})
    failed = order.release(2)  # a@0 and b@0 went to a batch that failed
    consumer.pause(A)
    order.rewind(failed)
    assert sorted(consumer.seeks) == [(A, 0), (B, 0)]
    assert not order.buffers and not consumer.paused()


async def test_a_revoked_partition_is_forgotten() -> None:
    consumer = FakeConsumer(["a", "b"], {A: 2, B: 2})
    order = TimeOrder(consumer)
    await order.add({A: records(A, [1, 2]), B: records(B, [5])})
    del consumer.ends[B]  # a rebalance took b away
    await order.add({})
    assert B not in order.buffers and B not in order.fetched
    assert [r.offset for r in order.release(100)[A]] == [0, 1]
