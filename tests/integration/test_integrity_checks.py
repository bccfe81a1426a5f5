"""The enrollment service's integrity checks (POLICY.md §6) on the real Kafka and PostgreSQL:
EnrollmentFlagged once per enrollment and check, across institutions, agencies and replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from tests import builders as b
from tests.harness import Producer, ServiceProcess, Stack

pytestmark = pytest.mark.integration

T = "skills.training."
UP = topics.TRAINING_UPSTREAM
OUT = topics.ENROLLMENT_EVENTS
COLLECT = (OUT, topics.dlq("enrollment"))  # topics the shared `collector` fixture reads


@pytest.fixture(scope="module")
async def enrollment(stack: Stack) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("enrollment", stack).start()
    await service.wait_ready()
    yield service
    service.stop()


def flags(collector, ref: str) -> list[dict[str, Any]]:  # noqa: ANN001
    return collector.events(OUT, "EnrollmentFlagged.v1", lambda e: e["data"]["enrollment_ref"] == ref)


async def enrol(producer: Producer, ref: str, nid: str, *, agency: str = "suqian",
                institution: str = "INST-T", **course: Any) -> None:
    data = b.enrolled(ref, nid, institution_id=institution, course=course)
    await producer.event(UP, T + "TraineeEnrolled.v1", data, subject=ref, agency=agency,
                         source=f"/institutions/{institution}")


async def attend(producer: Producer, ref: str, day: str, hours: float, *, agency: str = "suqian",
                 institution: str = "INST-T", id: str | None = None) -> None:
    await producer.event(UP, T + "AttendanceRecorded.v1",
                         {**b.attendance(ref, day, hours), "institution_id": institution},
                         subject=ref, agency=agency, source=f"/institutions/{institution}", id=id)


async def marker(producer: Producer, collector, ref: str, agency: str = "suqian",  # noqa: ANN001
                 institution: str = "INST-T") -> None:
    """An enrollment of someone else on the same key (so the same partition, behind the
    records sent before): once it is accepted, they have been read."""
    behind = b.ref()
    await producer.event(UP, T + "TraineeEnrolled.v1",
                         b.enrolled(behind, b.national_id(), institution_id=institution),
                         subject=ref, agency=agency, source=f"/institutions/{institution}")
    await collector.wait_events(OUT, "EnrollmentAccepted.v1",
                                where=lambda e: e["data"]["enrollment_ref"] == behind)


async def test_attendance_more_than_30_days_after_the_planned_end_flags_the_enrollment_once(
    enrollment, producer, collector
) -> None:
    ref, nid = b.ref(), b.national_id()
    await enrol(producer, ref, nid)  # planned 2026-03-01 .. 2026-03-20
    await attend(producer, ref, "2026-04-19", 8)  # 30 days after: within the slack
    await attend(producer, ref, "2026-04-21", 8)  # 32 days after: flagged
    await attend(producer, ref, "2026-04-25", 8)  # flagged already
    await marker(producer, collector, ref)
    [flag] = flags(collector, ref)
    assert flag["id"] == f"enrollment-flagged/{ref}/far_outside_plan"
    assert flag["subject"] == b.pid(nid) and flag["agencyid"] == "suqian"
    assert flag["data"] == {
        "enrollment_ref": ref, "person_id": b.pid(nid), "check": "far_outside_plan",
        "detail": "attendance on 2026-04-21 is 32 days after the planned end (more than 30)",
        "flagged_on": "2026-04-21"}
    await producer.event(UP, T + "EnrollmentWithdrawn.v1", b.withdrawn(ref, "2026-05-30"),
                         subject=ref)
    [withdrawn] = await collector.wait_events(OUT, "EnrollmentWithdrawn.v1",
                                              where=lambda e: e["data"]["enrollment_ref"] == ref)
    assert withdrawn["data"]["days_attended"] == 3  # flagged attendance still counts


async def test_attendance_31_days_before_the_planned_start_is_flagged_and_30_is_not(
    enrollment, producer, collector
) -> None:
    within, early = b.ref(), b.ref()
    await enrol(producer, within, b.national_id())
    await enrol(producer, early, b.national_id())
    await attend(producer, within, "2026-01-30", 6)  # 30 days before 2026-03-01
    await attend(producer, early, "2026-01-29", 6)  # 31 days before
    await marker(producer, collector, within)
    await marker(producer, collector, early)
    assert flags(collector, within) == []
    [flag] = flags(collector, early)
    assert flag["data"]["flagged_on"] == "2026-01-29"
    assert "31 days before the planned start" in flag["data"]["detail"]


async def test_a_persons_hours_on_one_date_over_12_across_institutions_and_agencies_flag_every_enrollment_involved(
    enrollment, producer, collector
) -> None:
    nid = b.national_id()
    first, second, third = b.ref("INST-A"), b.ref("INST-B"), b.ref("INST-C")
    await enrol(producer, first, nid, agency="suqian", institution="INST-A")
    await enrol(producer, second, nid, agency="beijing", institution="INST-B",
                course_id="C-WELD-2", occupation_code="6-18-02-04")
    await enrol(producer, third, nid, agency="baoshan", institution="INST-C",
                course_id="C-COOK-1", occupation_code="4-03-02-01")
    await attend(producer, first, "2026-03-02", 7, agency="suqian", institution="INST-A")
    await attend(producer, second, "2026-03-02", 5, agency="beijing", institution="INST-B")
    await attend(producer, third, "2026-03-03", 8, agency="baoshan", institution="INST-C")
    await marker(producer, collector, second, "beijing", "INST-B")
    assert flags(collector, first) == [] and flags(collector, second) == []  # 12 h: within
    # A second record for the same date replaces the first: 7 + 6 = 13 > 12.
    await attend(producer, second, "2026-03-02", 6, agency="beijing", institution="INST-B")
    await collector.wait_events(OUT, "EnrollmentFlagged.v1", 2,
                                where=lambda e: e["data"]["person_id"] == b.pid(nid))
    await attend(producer, first, "2026-03-04", 9, agency="suqian", institution="INST-A")
    await attend(producer, third, "2026-03-04", 9, agency="baoshan", institution="INST-C")
    await marker(producer, collector, third, "baoshan", "INST-C")
    await marker(producer, collector, first, "suqian", "INST-A")
    mine = collector.events(OUT, "EnrollmentFlagged.v1",
                            lambda e: e["data"]["person_id"] == b.pid(nid))
    by_ref = {e["data"]["enrollment_ref"]: e for e in mine}
    assert len(mine) == 3 and set(by_ref) == {first, second, third}  # once per enrollment
    assert {e["agencyid"] for e in mine} == {"suqian", "beijing", "baoshan"}
    for ref in (first, second):
        assert by_ref[ref]["data"]["check"] == "daily_hours_exceeded"
        assert by_ref[ref]["data"]["flagged_on"] == "2026-03-02"
        assert by_ref[ref]["data"]["detail"] == (
            "13 hours attended on 2026-03-02 over 2 enrollments (more than 12)")
    assert by_ref[third]["data"]["flagged_on"] == "2026-03-04"
    for event in mine:
        body = orjson.dumps(event).decode()
        assert nid not in body and "张三" not in body
    conn = await enrollment.db()
    try:
        stored = await conn.fetch("SELECT enrollment_ref, integrity_check FROM enrollment_flag "
                                  "WHERE person_id = $1", b.pid(nid))
    finally:
        await conn.close()
    assert sorted((r["enrollment_ref"], r["integrity_check"]) for r in stored) == sorted(
        (ref, "daily_hours_exceeded") for ref in (first, second, third))


async def test_a_redelivered_tripping_record_and_a_new_one_flag_nothing_more(
    enrollment, producer, collector
) -> None:
    nid = b.national_id()
    first, second = b.ref(), b.ref()
    await enrol(producer, first, nid)
    await enrol(producer, second, nid, course_id="C-WELD-2")
    await attend(producer, first, "2026-03-05", 8)
    for _ in range(2):  # the same record twice (a redelivery): one effect
        await attend(producer, second, "2026-03-05", 8, id=f"redelivered-{second}")
    await attend(producer, second, "2026-03-05", 10)  # a replacement, still over 12
    await marker(producer, collector, second)
    await marker(producer, collector, first)
    assert len(flags(collector, first)) == 1 and len(flags(collector, second)) == 1


async def test_two_replicas_see_each_others_hours_for_a_person_whose_enrollments_are_on_two_partitions(
    stack: Stack, enrollment, producer, collector
) -> None:
    """Each person's two enrollments ride different partitions, so the two replicas of the
    group may record them at the same moment; the per-person lock makes the second see the
    first's hours. 7 + 7 = 14 > 12: every enrollment of every person must be flagged."""
    second_replica = ServiceProcess("enrollment", stack).start()
    try:
        await second_replica.wait_ready()
        persons = [(b.national_id(), b.ref(), b.ref()) for _ in range(24)]
        send = producer.producer.send
        name = stack.topic(UP)

        async def record(ref: str, partition: int, type: str, data: dict[str, Any]) -> Any:
            value = encode_raw(T + type, data, id=f"{type}/{ref}/{data.get('date', '')}",
                               source="/institutions/INST-T", subject=ref, agencyid="suqian",
                               time="2026-03-01T09:00:00+08:00")
            return await send(name, value=value, key=ref.encode(), partition=partition,
                              headers=headers())

        futures = []
        for n, (nid, first, second) in enumerate(persons):
            p1, p2 = n % 4, (n + 1 + n // 4) % 4 if (n + 1 + n // 4) % 4 != n % 4 else (n + 2) % 4
            futures.append(await record(first, p1, "TraineeEnrolled.v1", b.enrolled(first, nid)))
            futures.append(await record(second, p2, "TraineeEnrolled.v1", b.enrolled(
                second, nid, course={"course_id": "C-WELD-2"})))
        for n, (_nid, first, second) in enumerate(persons):
            p1, p2 = n % 4, (n + 1 + n // 4) % 4 if (n + 1 + n // 4) % 4 != n % 4 else (n + 2) % 4
            futures.append(await record(first, p1, "AttendanceRecorded.v1", b.attendance(first, "2026-03-06", 7)))
            futures.append(await record(second, p2, "AttendanceRecorded.v1", b.attendance(second, "2026-03-06", 7)))
        await asyncio.gather(*futures)
        refs = {r for _, first, second in persons for r in (first, second)}
        await collector.wait_events(
            OUT, "EnrollmentFlagged.v1", len(refs),
            where=lambda e: e["data"]["enrollment_ref"] in refs, timeout=60)
        found = collector.events(OUT, "EnrollmentFlagged.v1",
                                 lambda e: e["data"]["enrollment_ref"] in refs)
        assert sorted(e["data"]["enrollment_ref"] for e in found) == sorted(refs)  # each once
    finally:
        second_replica.stop()
