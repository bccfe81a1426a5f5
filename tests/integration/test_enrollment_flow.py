"""The enrollment service on the real Kafka and PostgreSQL: intake, lifecycle, DLQ, crash safety."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from shared.contract import topics
from tests import builders as b
from tests.harness import Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

T = "skills.training."
UP = topics.TRAINING_UPSTREAM
OUT = topics.ENROLLMENT_EVENTS
DLQ = topics.dlq("enrollment")


@pytest.fixture(scope="module")
async def enrollment(stack: Stack) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("enrollment", stack).start()
    await service.wait_ready()
    yield service
    service.stop()


@pytest.fixture(scope="module")
async def producer(stack: Stack) -> AsyncIterator[Producer]:
    async with Producer(stack) as p:
        yield p


@pytest.fixture(scope="module")
async def collector(stack: Stack) -> AsyncIterator[Collector]:
    async with Collector(stack, [OUT, DLQ]) as c:
        yield c


def about(ref: str):  # noqa: ANN201
    return lambda e: e["data"].get("enrollment_ref") == ref


async def test_a_trainee_enrolled_is_accepted_and_stored(enrollment, producer, collector) -> None:
    ref, nid = b.ref(), b.national_id()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid), subject=ref)
    [accepted] = await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(ref))
    assert accepted["subject"] == b.pid(nid)
    assert accepted["data"]["person_id"] == b.pid(nid)
    assert accepted["data"]["accepted_on"] == "2026-03-01"
    assert accepted["agencyid"] == "suqian"
    body = orjson.dumps(accepted).decode()
    assert nid not in body and "张三" not in body
    conn = await enrollment.db()
    try:
        row = await conn.fetchrow("SELECT * FROM enrollment WHERE enrollment_ref = $1", ref)
        trainee = await conn.fetchrow("SELECT * FROM trainee WHERE person_id = $1", b.pid(nid))
    finally:
        await conn.close()
    assert row["person_id"] == b.pid(nid) and row["status"] == "open"
    assert nid.encode() not in bytes(trainee["national_id_enc"])


async def test_the_same_record_delivered_twice_has_one_effect(enrollment, producer, collector) -> None:
    ref, nid = b.ref(), b.national_id()
    data = b.enrolled(ref, nid)
    await producer.event(UP, T + "TraineeEnrolled.v1", data, subject=ref, id="dup-1")
    await producer.event(UP, T + "TraineeEnrolled.v1", data, subject=ref, id="dup-1")
    # A marker record after both proves the second copy has been consumed.
    marker = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(marker, b.national_id()), subject=marker)
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(marker))
    assert len(collector.events(OUT, "", about(ref))) == 1
    conn = await enrollment.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM enrollment WHERE enrollment_ref = $1", ref) == 1
    finally:
        await conn.close()


async def test_a_reused_enrollment_ref_under_a_new_id_is_rejected(enrollment, producer, collector) -> None:
    ref, nid = b.ref(), b.national_id()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid), subject=ref)
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid), subject=ref)
    [rejected] = await collector.wait_events(OUT, "EnrollmentRejected.v1", where=about(ref))
    assert rejected["data"]["reason"] == "duplicate_enrollment"
    assert len(collector.events(OUT, "EnrollmentAccepted.v1", about(ref))) == 1


async def test_the_same_person_in_the_same_course_over_overlapping_dates_is_rejected(
    enrollment, producer, collector
) -> None:
    nid = b.national_id()
    first, second = b.ref(), b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(first, nid), subject=first)
    await producer.event(
        UP, T + "TraineeEnrolled.v1",
        b.enrolled(second, nid, course={"start_date": "2026-03-10", "end_date": "2026-03-30"}),
        subject=second,
    )
    [rejected] = await collector.wait_events(OUT, "EnrollmentRejected.v1", where=about(second))
    assert rejected["data"]["reason"] == "duplicate_enrollment"
    assert rejected["data"]["person_id"] == b.pid(nid)


async def test_bad_records_go_to_the_dlq_with_their_code_and_the_next_good_one_is_processed(
    enrollment, producer, collector
) -> None:
    ref = b.ref()
    good = b.enrolled(ref, b.national_id())
    bad_id = b.enrolled(b.ref(), "321302199001011235")
    cases = {
        "malformed_json": b'{"specversion": "1.0", "id": ',
        "not_cloudevent": orjson.dumps({"hello": "world"}),
        "unknown_type": orjson.dumps({**_envelope("x-1"), "type": "skills.training.Nope.v1", "data": {}}),
        "schema_violation": orjson.dumps({**_envelope("x-2"), "data": {"enrollment_ref": "x"}}),
        "invalid_national_id": orjson.dumps({**_envelope("x-3"), "data": bad_id}),
        "unknown_agency": orjson.dumps({**_envelope("x-4"), "agencyid": "atlantis", "data": good}),
        "too_large": orjson.dumps({**_envelope("x-5"), "data": {**good, "pad": "x" * 300_000}}),
    }
    for value in cases.values():
        await producer.raw(UP, value, key="bad")
    await producer.event(UP, T + "TraineeEnrolled.v1", good, subject=ref)
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(ref))

    def codes() -> set[str]:
        return {r.headers["error-code"] for r in collector.dead_letters(DLQ)}

    await wait_for(lambda: set(cases) <= codes(), 30, "every dead letter")
    for record in collector.dead_letters(DLQ):
        assert record.headers["original-topic"] == stack_topic(collector, UP)
        assert int(record.headers["original-offset"]) >= 0
        assert record.headers["error-detail"]
        assert b"321302199001011235" not in record.headers["error-detail"].encode()


def stack_topic(collector: Collector, name: str) -> str:
    return collector.prefix + name


def _envelope(event_id: str) -> dict:
    return {
        "specversion": "1.0", "id": event_id, "source": "/institutions/INST-T",
        "type": "skills.training.TraineeEnrolled.v1", "time": "2026-03-01T09:00:00+08:00",
        "subject": "s", "agencyid": "suqian",
    }


async def test_a_crash_between_database_commit_and_offset_commit_loses_and_duplicates_nothing(
    stack: Stack, producer, collector
) -> None:
    crashing = ServiceProcess("enrollment", stack, env={"ENROLLMENT_CONSUMER_GROUP": "crash-test"})
    # A separate consumer group and database would hide the point: it must be the same
    # service's database, so run the crash copy against the same one with its own group.
    crashing.env["ENROLLMENT_DATABASE_URL"] = stack.db_url("enrollment") + "_crash"
    crashing.start(ENROLLMENT_CRASH_AFTER_DB_COMMIT="true")
    ref, nid = b.ref(), b.national_id()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid), subject=ref)
    assert crashing.proc is not None
    await wait_for(lambda: crashing.proc.poll() is not None, 60, "the crash hook to fire")
    assert crashing.proc.returncode == 17
    conn = await crashing.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM enrollment WHERE enrollment_ref = $1", ref) == 1
    finally:
        await conn.close()
    # Restarted without the hook, it re-reads the uncommitted batch: the inbox absorbs it.
    crashing.start()
    await crashing.wait_ready()
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", count=2, where=about(ref))
    marker = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(marker, b.national_id()), subject=marker)
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", count=2, where=about(marker))
    conn = await crashing.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM enrollment WHERE enrollment_ref = $1", ref) == 1
        assert await conn.fetchval("SELECT count(*) FROM enrollment WHERE enrollment_ref = $1", marker) == 1
    finally:
        await conn.close()
        crashing.stop()
    # Exactly one copy per service database: the crash copy published once, the main one once.
    ids = [e["id"] for e in collector.events(OUT, "EnrollmentAccepted.v1", about(ref))]
    assert len(ids) == 2 and len(set(ids)) == 1
