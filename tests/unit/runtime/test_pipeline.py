"""The runtime pieces on fakes (tests/unit/runtime/fakes.py): the inbox claim, the outbox's
dead-letter de-duplication, the relay, and the batch pipeline FastStream's subscriber drives
(handle, the idle timer's tick, offset commits only after publication, rewind on a database
error, stop on anything else). The same statements run on PostgreSQL in tests/integration."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError

from shared.contract import events as ev
from shared.contract.envelope import encode_raw
from shared.runtime import crypto
from shared.runtime import outbox as outbox_module
from shared.runtime.consumer import BatchConsumer, Incoming, claim, decode_records
from shared.runtime.outbox import Outbox, RawRecord, Relay, next_step
from tests.harness import wait_for
from tests.unit.runtime.fakes import FakeConnection, FakeConsumer, FakePool, FakeProducer, Record, Tables

UP = "skills.training.upstream"
AGENCIES = frozenset({"suqian"})
TP0, TP1 = TopicPartition(UP, 0), TopicPartition(UP, 1)


@pytest.fixture(autouse=True)
def no_sealing() -> Any:
    previous = crypto.current()
    crypto.configure(None)
    yield
    crypto.configure(previous)


def attendance(id: str, hours: float | str = 8, source: str = "/i") -> bytes:
    data = {"enrollment_ref": "INST-T/1", "institution_id": "INST-T", "date": "2026-03-02",
            "hours": hours}
    return encode_raw("skills.training.AttendanceRecorded.v1", data, id=id, source=source,
                      subject="INST-T/1", agencyid="suqian", time="2026-03-02T09:00:00+08:00")


def raw(partition: int, offset: int, value: bytes | None) -> RawRecord:
    return RawRecord(UP, partition, offset, b"k", value)


def outbox() -> Outbox:
    return Outbox(source="/services/test", dlq_topic="test.dlq")


def codes(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    found = []
    for row in rows:
        headers = dict(orjson.loads(row["headers"]))
        found.append((int(headers["original-offset"]), headers["error-code"]))
    return found


async def test_claim_returns_only_events_never_seen_and_dead_letters_changed_content() -> None:
    tables = Tables()
    conn = FakeConnection(tables)
    out = outbox()
    first = decode_records([raw(0, 0, attendance("e1")), raw(0, 1, attendance("e2"))], AGENCIES, out)
    assert [i.event.id for i in await claim(conn, first, out)] == ["e1", "e2"]  # type: ignore[arg-type]
    again = decode_records([raw(0, 2, attendance("e1")), raw(0, 3, attendance("e2", hours=9)),
                            raw(0, 4, attendance("e3"))], AGENCIES, out)
    fresh = await claim(conn, again, out)  # type: ignore[arg-type]
    assert [i.event.id for i in fresh] == ["e3"]  # e1 the same bytes: a duplicate, skipped
    await out.flush(conn)  # type: ignore[arg-type]
    assert codes(tables.outbox) == [(3, "conflicting_duplicate")]  # e2 with other content
    assert set(tables.inbox) == {("/i", "e1"), ("/i", "e2"), ("/i", "e3")}


async def test_a_bad_record_is_dead_lettered_once_per_position_and_once_per_id_and_bytes() -> None:
    tables = Tables()
    conn = FakeConnection(tables)
    for batch in (
        [raw(0, 5, b"{not json"), raw(0, 6, attendance("x", hours="lots"))],
        [raw(0, 5, b"{not json"), raw(0, 6, attendance("x", hours="lots"))],  # redelivered
        [raw(1, 9, attendance("x", hours="lots"))],  # the same bad record sent again elsewhere
        [raw(1, 10, attendance("x", hours="many"))],  # another bad record under the same id
    ):
        out = outbox()
        decode_records(batch, AGENCIES, out)
        await out.flush(conn)  # type: ignore[arg-type]
    assert codes(tables.outbox) == [(5, "malformed_json"), (6, "schema_violation"),
                                    (10, "schema_violation")]
    assert all(bytes(r["key"]) == b"k" and r["topic"] == "test.dlq" for r in tables.outbox)
    assert [r["value"] for r in tables.outbox] == [b"{not json", attendance("x", hours="lots"),
                                                   attendance("x", hours="many")]


async def test_the_relay_publishes_in_order_deletes_what_it_published_and_keeps_the_rest_on_failure() -> None:
    tables = Tables()
    conn = FakeConnection(tables)
    out = outbox()
    for n in range(5):
        out.publish("skills.enrollment.events", ev.EnrollmentRejected(enrollment_ref=f"E{n}", reason="r"),
                    id=f"o{n}", subject="p", agencyid="suqian", time="2026-03-02T09:00:00+08:00")
    await out.flush(conn)  # type: ignore[arg-type]
    failing = FakeProducer(failing=True)
    fresh = FakeProducer()
    relay = Relay(FakePool(tables), failing, batch_size=3, make_producer=lambda: fresh)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await relay.publish_once()
    assert len(tables.outbox) == 5  # nothing deleted that was not published
    await relay.renew_producer()
    assert failing.stopped and fresh.started and relay.producer is fresh
    assert await relay.publish_once() == 3
    assert await relay.publish_once() == 2
    assert await relay.publish_once() == 0
    assert [orjson.loads(v)["id"] for _, _, v, _ in fresh.sent] == [f"o{n}" for n in range(5)]
    assert tables.outbox == []


def test_the_relay_looks_again_at_once_only_after_a_full_batch_or_when_locked_out_with_rows() -> None:
    assert next_step(10, 10, woken=False, locked_elsewhere=False) == "again"
    assert next_step(3, 10, woken=True, locked_elsewhere=False) == "wait"  # took what was there
    assert next_step(0, 10, woken=True, locked_elsewhere=False) == "wait"
    assert next_step(0, 10, woken=True, locked_elsewhere=True) == "retry soon"
    assert next_step(0, 10, woken=False, locked_elsewhere=True) == "wait"  # an idle look


async def _relay_running(tables: Tables, monkeypatch: pytest.MonkeyPatch) -> tuple[Relay, Any, Any]:
    monkeypatch.setattr(outbox_module, "IDLE_SECONDS", 60.0)  # only a wake makes it look
    relay = Relay(FakePool(tables), FakeProducer(), batch_size=10)  # type: ignore[arg-type]
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    await asyncio.sleep(0)  # its first look (it starts by looking)

    async def stop() -> None:
        stopping.set()
        relay.wake.set()
        await task
    return relay, task, stop


async def _rows(tables: Tables, n: int) -> None:
    out = outbox()
    for i in range(n):
        out.publish("skills.enrollment.events", ev.EnrollmentRejected(enrollment_ref="E", reason="r"),
                    id=f"x{tables.seq + i}", subject="p", agencyid="suqian",
                    time="2026-03-02T09:00:00+08:00")
    await out.flush(FakeConnection(tables))  # type: ignore[arg-type]


async def test_a_woken_relay_publishes_what_is_there_and_then_waits_for_the_next_wake(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = Tables()
    relay, _, stop = await _relay_running(tables, monkeypatch)
    await wait_for(lambda: tables.relay_reads == 1, 5, "the first look")
    await _rows(tables, 3)
    relay.wake.set()
    await wait_for(lambda: not tables.outbox, 5, "the rows published")
    for _ in range(20):  # the fakes never block: a round it would start now runs in these turns
        await asyncio.sleep(0)  # (it used to look again at once after publishing, in vain)
    assert tables.relay_reads == 2
    await _rows(tables, 2)
    relay.wake.set()
    await wait_for(lambda: not tables.outbox, 5, "the next rows published")
    assert tables.relay_reads == 3
    await stop()


async def test_a_relay_woken_for_its_rows_tries_again_soon_while_another_one_holds_the_lock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = Tables(relay_locked_elsewhere=True)
    relay, _, stop = await _relay_running(tables, monkeypatch)
    await _rows(tables, 3)
    relay.wake.set()
    await wait_for(lambda: tables.lock_tries >= 4, 5, "tries while locked out")
    assert tables.outbox  # nothing read while another relay held the lock
    tables.relay_locked_elsewhere = False
    await wait_for(lambda: not tables.outbox, 5, "the rows published once the lock was free")
    await stop()


class NoRelay:
    wake = asyncio.Event()


def pipeline(consumer: FakeConsumer, tables: Tables, handler: Any) -> BatchConsumer:
    batches = BatchConsumer(
        consumer, FakePool(tables), handler, outbox, NoRelay(),  # type: ignore[arg-type]
        agencies=AGENCIES, max_records=100, timeout_ms=10, commit_interval=0.0,
    )
    return batches


async def test_a_poll_is_handled_and_its_offsets_committed_only_once_the_relay_published() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 3, TP1: 1})
    seen: list[str] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        seen.extend(i.event.id for i in items)
        for i in items:
            out.publish("skills.enrollment.events", ev.EnrollmentRejected(enrollment_ref="E", reason="r"),
                        id=f"out-{i.event.id}", subject="p", agencyid="suqian",
                        time="2026-03-02T09:00:00+08:00")

    batches = pipeline(consumer, tables, handler)
    poll = [Record(UP, 0, o, o, b"k", attendance(f"a{o}")) for o in range(3)]
    poll += [Record(UP, 1, 0, 9, b"k", attendance("b0"))]
    await batches.handle(poll)
    assert seen == ["a0", "a1", "a2", "b0"]
    assert consumer.commits == []  # the outbox rows are not published yet
    await batches.tick()  # idle, but still unpublished
    assert consumer.commits == []
    tables.outbox.clear()  # the relay published them
    await batches.tick()
    assert consumer.commits == [{TP0: 3, TP1: 1}]
    assert batches.healthy


async def test_a_stale_poll_takes_what_waits_on_the_broker_into_the_same_batch() -> None:
    """The poll's newest record is older than top_up_after_ms: it was fetched while the previous
    batch ran, and what arrived since is still on the broker (aiokafka fetched nothing more for
    its partitions). One more poll takes it into this batch."""
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 5, TP1: 2})
    batches_seen: list[list[str]] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        batches_seen.append([i.event.id for i in items])

    batches = pipeline(consumer, tables, handler)
    batches.top_up_after_ms, batches.top_up_wait_ms = 20, 7
    stale = int(time.time() * 1000) - 500
    consumer.on_broker = [Record(UP, 0, o, stale + 400, b"k", attendance(f"a{o}")) for o in (2, 3, 4)]
    consumer.on_broker += [Record(UP, 1, o, stale + 400, b"k", attendance(f"b{o}")) for o in (0, 1)]
    await batches.handle([Record(UP, 0, o, stale, b"k", attendance(f"a{o}")) for o in (0, 1)])
    assert consumer.polls == [(7, 98)]  # waits at most the fetch wait, for what the batch may take
    assert batches_seen == [["a0", "a1", "a2", "a3", "a4", "b0", "b1"]]
    tables.outbox.clear()
    await batches.tick()
    assert consumer.commits == [{TP0: 5, TP1: 2}]


async def test_a_failed_top_up_leaves_the_batch_as_polled() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 2})
    seen: list[str] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        seen.extend(i.event.id for i in items)

    batches = pipeline(consumer, tables, handler)
    batches.top_up_after_ms = 20
    consumer.poll_error = ConsumerStoppedError()
    stale = int(time.time() * 1000) - 500
    await batches.handle([Record(UP, 0, o, stale, b"k", attendance(f"a{o}")) for o in range(2)])
    assert len(consumer.polls) == 1 and seen == ["a0", "a1"] and not batches.stopping


async def test_a_fresh_poll_or_a_full_one_is_handled_as_it_is() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 200})
    batches_seen: list[int] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        batches_seen.append(len(items))

    batches = pipeline(consumer, tables, handler)
    batches.top_up_after_ms = 20
    consumer.on_broker = [Record(UP, 0, 150, 0, b"k", attendance("late"))]
    now = int(time.time() * 1000)
    await batches.handle([Record(UP, 0, o, now, b"k", attendance(f"a{o}")) for o in range(3)])
    old = now - 10_000
    await batches.handle([Record(UP, 0, o, old, b"k", attendance(f"b{o}")) for o in range(3, 103)])
    assert consumer.polls == [] and batches_seen == [3, 100]  # fresh; then max_records (100)
    batches.top_up_after_ms = 0  # never
    await batches.handle([Record(UP, 0, 103, old, b"k", attendance("c"))])
    assert consumer.polls == [] and batches_seen == [3, 100, 1]


async def test_the_relay_is_woken_only_by_a_batch_that_wrote_outbox_rows() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 2})
    publishing = {"a1"}

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        for i in items:
            if i.event.id in publishing:
                out.publish("skills.enrollment.events", ev.EnrollmentRejected(enrollment_ref="E", reason="r"),
                            id=f"out-{i.event.id}", subject="p", agencyid="suqian",
                            time="2026-03-02T09:00:00+08:00")

    batches = pipeline(consumer, tables, handler)
    batches.relay = NoRelay()  # type: ignore[assignment]
    batches.relay.wake = asyncio.Event()
    await batches.handle([Record(UP, 0, 0, 0, b"k", attendance("a0"))])
    assert not batches.relay.wake.is_set()  # nothing to publish
    await batches.handle([Record(UP, 0, 1, 1, b"k", attendance("a1"))])
    assert batches.relay.wake.is_set()
    assert len(tables.outbox) == 1


@pytest.mark.parametrize("pause_gc", [True, False])
async def test_the_cyclic_collector_is_paused_while_a_batch_is_handled(pause_gc: bool) -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 1})
    collector_on: list[bool] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        collector_on.append(gc.isenabled())

    batches = pipeline(consumer, tables, handler)
    batches.pause_gc = pause_gc
    assert gc.isenabled()
    await batches.handle([Record(UP, 0, 0, 0, b"k", attendance("a0"))])
    assert collector_on == [not pause_gc]
    assert gc.isenabled()  # on again after the batch


async def test_a_database_error_rewinds_the_poll_with_a_backoff_and_commits_nothing() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 2})

    async def unreachable(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        raise asyncpg.ConnectionDoesNotExistError("gone")

    batches = pipeline(consumer, tables, unreachable)
    await batches.handle([Record(UP, 0, o, o, b"k", attendance(f"a{o}")) for o in range(2)])
    assert consumer.seeks == [(TP0, 0)]
    assert batches.backoff > 0.2 and not batches.healthy and not batches.stopping
    await batches.finish()
    assert consumer.commits == []


async def test_any_other_error_stops_the_pipeline_and_reports_the_failure() -> None:
    tables = Tables()
    consumer = FakeConsumer([UP], {TP0: 2})
    failures: list[BaseException] = []

    async def broken(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        raise KeyError("bug")

    batches = pipeline(consumer, tables, broken)
    batches.on_failure = failures.append
    await batches.handle([Record(UP, 0, 0, 0, b"k", attendance("a0"))])
    assert batches.stopping and isinstance(failures[0], KeyError)
    batches.handler = broken
    await batches.handle([Record(UP, 0, 1, 1, b"k", attendance("a1"))])  # ignored from now on
    await batches.finish()
    assert consumer.commits == [] and set(tables.inbox) == {("/i", "a0")}  # a1 never claimed


async def test_the_timer_leaves_a_busy_consumer_alone_and_releases_buffered_records_when_idle() -> None:
    tables = Tables()
    up, other = TopicPartition(UP, 0), TopicPartition("skills.assessment.upstream", 0)
    consumer = FakeConsumer([up.topic, other.topic], {up: 2, other: None})  # type: ignore[dict-item]
    seen: list[str] = []

    async def handler(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        seen.extend(i.event.id for i in items)

    batches = pipeline(consumer, tables, handler)
    await batches.handle([Record(UP, 0, o, o, b"k", attendance(f"a{o}")) for o in range(2)])
    assert seen == []  # the other topic may still hold an earlier record
    assert batches.order is not None and len(batches.order.buffers[up]) == 2
    consumer.ends[other] = 0  # the other topic turns out empty
    await batches.tick()  # a poll happened since the last tick: busy, the timer does nothing
    assert seen == []
    await batches.tick()  # no poll since: what an empty poll did
    assert seen == ["a0", "a1"]
    assert consumer.commits == [{up: 2}]  # nothing to publish: committed at once
