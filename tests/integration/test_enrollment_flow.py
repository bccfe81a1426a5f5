"""The enrollment service on the real Kafka and PostgreSQL: intake, lifecycle, DLQ, crash safety."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shared.contract import topics
from shared.contract.envelope import encode_raw
from tests import builders as b
from tests.harness import Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

T = "skills.training."
UP = topics.TRAINING_UPSTREAM
OUT = topics.ENROLLMENT_EVENTS
DLQ = topics.dlq("enrollment")
COLLECT = (OUT, DLQ)  # topics the shared `collector` fixture reads (tests/conftest.py)


@pytest.fixture(scope="module")
async def enrollment(stack: Stack) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("enrollment", stack).start()
    await service.wait_ready()
    yield service
    service.stop()




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
    # A marker on the same key (so the same partition, behind both copies) proves the second
    # copy has been consumed before we count.
    marker = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(marker, b.national_id()), subject=ref)
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


def _envelope(event_id: str) -> dict[str, Any]:
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
    await wait_for(lambda: crashing.proc.poll() is not None, 60, "the crash hook to fire")  # type: ignore[union-attr]  # asserted
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


# ---- the lifecycle: attendance, closing, withdrawal, work months, disorder -------------------


async def _enrol(producer: Producer, collector: Collector, **over) -> tuple[str, str]:  # noqa: ANN003
    ref, nid = b.ref(), b.national_id()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid, **over), subject=ref)
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(ref))
    return ref, nid


async def test_finishing_publishes_hours_distinct_days_and_rate_with_replaced_attendance(
    enrollment, producer, collector
) -> None:
    ref, nid = await _enrol(producer, collector)
    for day in ("2026-03-02", "2026-03-03", "2026-03-04"):
        await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, day, 8), subject=ref)
    # A second record for the same date replaces the first; it does not add.
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-04", 4), subject=ref)
    await producer.event(UP, T + "TrainingFinished.v1", b.finished(ref, "2026-03-20"), subject=ref)
    [done] = await collector.wait_events(OUT, "TrainingCompleted.v1", where=about(ref))
    d = done["data"]
    assert (d["hours_attended"], d["days_attended"], d["completed_on"]) == (20, 3, "2026-03-20")
    assert d["attendance_rate"] == 0.25
    assert d["person_id"] == b.pid(nid) and done["subject"] == b.pid(nid)
    record = enrollment.get(f"/persons/{b.pid(nid)}/record")
    assert record["enrollments"][0]["status"] == "completed"
    assert record["enrollments"][0]["days_attended"] == 3


async def test_the_first_closing_record_wins_and_later_records_are_ignored(
    enrollment, producer, collector
) -> None:
    ref, _ = await _enrol(producer, collector)
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-02", 6), subject=ref)
    await producer.event(UP, T + "EnrollmentWithdrawn.v1", b.withdrawn(ref, "2026-03-05"), subject=ref)
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-06", 6), subject=ref)
    await producer.event(UP, T + "TrainingFinished.v1", b.finished(ref), subject=ref)
    [gone] = await collector.wait_events(OUT, "EnrollmentWithdrawn.v1", where=about(ref))
    assert gone["data"]["days_attended"] == 1 and gone["data"]["withdrawn_on"] == "2026-03-05"
    # A marker on the same key (same partition, behind the ignored records) proves they were
    # consumed before we look for their absent effects.
    marker = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(marker, b.national_id()), subject=ref)
    await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(marker))
    assert collector.events(OUT, "TrainingCompleted.v1", about(ref)) == []
    assert enrollment.get(f"/enrollments/{ref}")["status"] == "withdrawn"
    conn = await enrollment.db()
    try:  # the attendance after the withdrawal was not stored
        assert await conn.fetchval("SELECT count(*) FROM attendance WHERE enrollment_ref = $1", ref) == 1
    finally:
        await conn.close()


async def test_records_before_their_enrollment_wait_and_apply_in_order(enrollment, producer, collector) -> None:
    ref, nid = b.ref(), b.national_id()
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-02", 8), subject=ref)
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-03", 7), subject=ref)
    await producer.event(UP, T + "TrainingFinished.v1", b.finished(ref, "2026-03-19"), subject=ref)
    conn = await enrollment.db()
    try:
        await wait_for(lambda: _pending(conn, ref), 30, "the early records to be parked")
    finally:
        await conn.close()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid), subject=ref)
    [done] = await collector.wait_events(OUT, "TrainingCompleted.v1", where=about(ref))
    assert (done["data"]["hours_attended"], done["data"]["days_attended"]) == (15, 2)
    kinds = [e["type"].split(".")[-2] for e in collector.events(OUT, "", about(ref))]
    assert kinds == ["EnrollmentAccepted", "TrainingCompleted"]


async def _pending(conn, ref: str) -> bool:  # noqa: ANN001
    return await conn.fetchval("SELECT count(*) FROM pending WHERE ref = $1", ref) == 3


async def test_work_months_are_indexed_by_first_arrival_and_the_first_record_of_a_month_stands(
    enrollment, producer, collector
) -> None:
    ref, _ = await _enrol(producer, collector, course={
        "training_type": "work_for_training", "start_date": "2026-01-01", "end_date": "2026-12-31",
        "level": None})
    for m, wages in (("2026-02", 400000), ("2026-01", 410000), ("2026-02", 999999), ("2026-03", 420000)):
        await producer.event(UP, T + "WorkTrainingMonthRecorded.v1", b.month(ref, m, wages), subject=ref)
    months = await collector.wait_events(OUT, "WorkTrainingMonthAccepted.v1", 3, where=about(ref))
    got = [(e["data"]["month"], e["data"]["month_index"], e["data"]["wages_fen"]) for e in months]
    assert got == [("2026-02", 1, 400000), ("2026-01", 2, 410000), ("2026-03", 3, 420000)]


async def test_invalid_lifecycle_records_are_dead_letters_with_specific_codes(
    enrollment, producer, collector
) -> None:
    ref, _ = await _enrol(producer, collector)
    bad = {
        "invalid_hours": (T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-02", 13)),
        "institution_mismatch": (T + "AttendanceRecorded.v1",
                                 {**b.attendance(ref, "2026-03-02"), "institution_id": "INST-X"}),
    }
    ids = {}
    for code, (kind, data) in bad.items():
        ids[await producer.event(UP, kind, data, subject=ref)] = code
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-02", 0.5), subject=ref)

    await wait_for(
        lambda: all(collector.dead_letter_codes(DLQ).get(i) == [c] for i, c in ids.items()),
        30, "lifecycle dead letters",
    )


async def test_course_dates_are_a_plan_attendance_and_months_outside_them_count(
    enrollment, producer, collector
) -> None:
    """POLICY.md §5: attendance and months outside the planned dates are accepted and counted;
    only closing ignores later records. Nothing of this is a dead letter."""
    sent = []
    ref, _ = await _enrol(producer, collector)  # planned 2026-03-01 .. 2026-03-20
    for day, hours in (("2026-02-20", 4), ("2026-03-02", 8), ("2026-04-02", 6), ("2026-04-10", 2.5)):
        sent.append(await producer.event(UP, T + "AttendanceRecorded.v1",
                                         b.attendance(ref, day, hours), subject=ref))
    sent.append(await producer.event(UP, T + "TrainingFinished.v1", b.finished(ref, "2026-04-11"),
                                     subject=ref))
    await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-04-12"), subject=ref)
    [done] = await collector.wait_events(OUT, "TrainingCompleted.v1", where=about(ref))
    # 4 dates; 4 + 8 + 6 + 2.5 = 20.5 hours
    assert (done["data"]["days_attended"], done["data"]["hours_attended"]) == (4, 20.5)
    assert done["data"]["completed_on"] == "2026-04-11"

    work, _ = await _enrol(producer, collector, course={
        "training_type": "work_for_training", "start_date": "2026-01-01", "end_date": "2026-02-28",
        "level": None})
    for m in ("2026-02", "2026-05", "2025-12"):
        sent.append(await producer.event(UP, T + "WorkTrainingMonthRecorded.v1", b.month(work, m),
                                         subject=work))
    months = await collector.wait_events(OUT, "WorkTrainingMonthAccepted.v1", 3, where=about(work))
    assert [(e["data"]["month"], e["data"]["month_index"]) for e in months] == [
        ("2026-02", 1), ("2026-05", 2), ("2025-12", 3)]

    # A course finished before its planned start is a plan that moved, not an error.
    early, _ = await _enrol(producer, collector)
    sent.append(await producer.event(UP, T + "AttendanceRecorded.v1",
                                     b.attendance(early, "2026-02-10", 8), subject=early))
    sent.append(await producer.event(UP, T + "TrainingFinished.v1", b.finished(early, "2026-02-11"),
                                     subject=early))
    [closed] = await collector.wait_events(OUT, "TrainingCompleted.v1", where=about(early))
    assert (closed["data"]["days_attended"], closed["data"]["completed_on"]) == (1, "2026-02-11")

    conn = await enrollment.db()
    try:
        stored = await conn.fetchval("SELECT count(*) FROM attendance WHERE enrollment_ref = $1", ref)
    finally:
        await conn.close()
    assert stored == 4, "the record after closing is ignored, the four before it kept"
    dead = collector.dead_letter_codes(DLQ)
    assert not [dead[i] for i in sent if i in dead], "nothing of it is a dead letter"


async def test_a_lower_case_x_check_character_is_the_same_person(enrollment, producer, collector) -> None:
    """POLICY.md §5: a national id ending in a lower-case x is the id with X (same person_id)."""
    while not (nid := b.national_id()).endswith("X"):
        pass
    ref = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(ref, nid.lower()), subject=ref)
    [accepted] = await collector.wait_events(OUT, "EnrollmentAccepted.v1", where=about(ref))
    assert accepted["data"]["person_id"] == b.pid(nid)
    # The same person enrolling again with upper-case X in the same course and dates is a duplicate.
    twin = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1", b.enrolled(twin, nid), subject=twin)
    [rejected] = await collector.wait_events(OUT, "EnrollmentRejected.v1", where=about(twin))
    assert rejected["data"]["reason"] == "duplicate_enrollment"


async def test_a_bad_record_delivered_twice_is_one_dead_letter(enrollment, producer, collector) -> None:
    """EVENTS.md §1: (source, id) is the idempotency key, dead letters included. The same bad
    record sent again (at another offset) is not dead-lettered again; a conflicting duplicate sent
    twice is one dead letter; a different bad record under the same id is a letter of its own."""
    ref, _ = await _enrol(producer, collector)
    bad = b.attendance(ref, "2026-03-02", 8)
    del bad["hours"]  # schema_violation
    value = encode_raw(T + "AttendanceRecorded.v1", bad, id="twice-bad", source="/institutions/INST-T",
                       subject=ref, agencyid="suqian", time="2026-03-02T18:00:00+08:00")
    await producer.raw(UP, value, key=ref)
    await producer.raw(UP, value, key=ref)
    first = await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-03", 4),
                                 subject=ref, id="twice-conflict")
    conflicting = encode_raw(T + "AttendanceRecorded.v1", b.attendance(ref, "2026-03-03", 5),
                             id=first, source="/institutions/INST-T", subject=ref, agencyid="suqian",
                             time="2026-03-01T09:00:00+08:00")
    for _ in range(2):
        await producer.raw(UP, conflicting, key=ref)
    other = dict(bad, date="2026-03-04")
    await producer.event(UP, T + "AttendanceRecorded.v1", other, subject=ref, id="twice-bad")
    await producer.event(UP, T + "TrainingFinished.v1", b.finished(ref), subject=ref)
    await collector.wait_events(OUT, "TrainingCompleted.v1", where=about(ref))
    await wait_for(lambda: len(collector.dead_letter_codes(DLQ).get("twice-bad", [])) >= 2, 30,
                   "the two different bad records")
    await asyncio.sleep(1)  # a second letter of either would be published with them
    codes = collector.dead_letter_codes(DLQ)
    assert codes["twice-bad"] == ["schema_violation", "schema_violation"]
    assert codes["twice-conflict"] == ["conflicting_duplicate"]


async def test_a_record_whose_enrollment_never_arrives_is_dead_lettered_as_unknown_reference(
    enrollment, producer, collector
) -> None:
    ghost = b.ref("GHOST")
    event_id = await producer.event(UP, T + "AttendanceRecorded.v1", b.attendance(ghost, "2026-03-02"), subject=ghost)

    await wait_for(
        lambda: collector.dead_letter_codes(DLQ).get(event_id) == ["unknown_reference"],
        30, "unknown_reference",
    )


async def test_person_lookup_takes_the_national_id_in_the_body(enrollment, producer, collector) -> None:
    _, nid = await _enrol(producer, collector)
    assert enrollment.post("/persons/lookup", {"national_id": nid}) == {"person_id": b.pid(nid), "known": True}
    other = b.national_id()
    assert enrollment.post("/persons/lookup", {"national_id": other})["known"] is False


async def test_a_closed_catalogue_rejects_unaccredited_institutions_and_uncatalogued_courses(
    stack: Stack, producer, collector, tmp_path
) -> None:
    (tmp_path / "suqian.json").write_text(orjson.dumps(
        {"agency": "suqian", "institutions": ["INST-T"], "courses": ["C-ELEC-3"]}).decode())
    closed = ServiceProcess("enrollment", stack, env={
        "ENROLLMENT_CATALOGUE_DIR": str(tmp_path),
        "ENROLLMENT_DATABASE_URL": stack.db_url("enrollment") + "_closed",
        "ENROLLMENT_CONSUMER_GROUP": "closed-catalogue",
    }).start()
    try:
        await closed.wait_ready()
        stranger, uncatalogued = b.ref("INST-X"), b.ref()
        await producer.event(UP, T + "TraineeEnrolled.v1",
                             {**b.enrolled(stranger, b.national_id()), "institution_id": "INST-X"},
                             subject=stranger)
        await producer.event(UP, T + "TraineeEnrolled.v1",
                             b.enrolled(uncatalogued, b.national_id(), course={"course_id": "C-OTHER"}),
                             subject=uncatalogued)
        for ref, reason in ((stranger, "institution_not_accredited"), (uncatalogued, "course_not_in_catalogue")):
            rejected = await collector.wait_events(OUT, "EnrollmentRejected.v1", where=about(ref))
            assert rejected[0]["data"]["reason"] == reason
    finally:
        closed.stop()
