"""A batch's statements do not grow with its size: load -> decide -> record on PostgreSQL.

Each service's handler runs with its PostgreSQL store on a connection that counts every
statement (COPY included); the same mix of records at two batch sizes must cost the same number
of round trips (the hot path stays batched). The subsidy batches are the enrollment and
assessment services' own outputs (their handlers on the in-memory stores).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from shared.contract import topics
from shared.contract.envelope import decode
from shared.runtime.consumer import Incoming
from shared.runtime.outbox import Outbox, RawRecord
from services.assessment import handlers as assessment
from services.assessment.config import AssessmentSettings
from services.assessment.store import MemoryAssessmentStore
from services.enrollment import handlers as enrollment
from services.enrollment.config import EnrollmentSettings
from services.enrollment.store import MemoryEnrollmentStore
from services.subsidy import handlers as subsidy
from services.subsidy.app import policies_from
from services.subsidy.config import SubsidySettings
from tests import builders as b
from tests.harness import SECRET
from tests.uow import Counting, drop_database, fresh_database, incoming

pytestmark = pytest.mark.integration

ENV = {"PERSON_ID_SECRET": SECRET, "ENVIRONMENT": "development"}
ENROLLMENT = EnrollmentSettings(**ENV)  # type: ignore[arg-type]  # fields by name, validated by pydantic
ASSESSMENT = AssessmentSettings(**ENV)  # type: ignore[arg-type]  # fields by name, validated by pydantic
SUBSIDY = SubsidySettings(**ENV)  # type: ignore[arg-type]  # fields by name, validated by pydantic


@pytest.fixture(scope="module")
async def databases() -> AsyncIterator[dict[str, str]]:
    dsns = {s: await fresh_database(s) for s in ("enrollment", "assessment", "subsidy")}
    yield dsns
    for dsn in dsns.values():
        await drop_database(dsn)


async def statements(dsn: str, handler: Any, items: list[Incoming]) -> list[str]:
    """The statements one batch sends (committed, as the consumer would)."""
    conn = await asyncpg.connect(dsn)
    try:
        counting = Counting(conn)
        async with conn.transaction():
            await handler(counting, items, Outbox(source="/tests", dlq_topic="dlq"))
        return counting.statements
    finally:
        await conn.close()


NIDS: dict[str, str] = {}  # enrollment ref -> the trainee's national id


def training(n: int) -> tuple[list[Incoming], list[Incoming], list[Incoming]]:
    """``n`` persons: a first batch enrolling each, with attendance, a work month and a finish,
    and attendance for an enrollment not seen yet (parked); a second batch bringing those
    enrollments (the parked records replayed) and attendance on the first ones (the daily-hours
    check over two enrollments); a third closing them."""
    first, second, third = [], [], []
    for _ in range(n):
        nid, ref, later = b.national_id(), b.ref(), b.ref()
        NIDS[ref] = NIDS[later] = nid
        up = topics.TRAINING_UPSTREAM
        first += [incoming(up, enrollment.ENROLLED, b.enrolled(ref, nid), subject=ref),
                  incoming(up, enrollment.ATTENDANCE, b.attendance(ref, "2026-03-02", 8), subject=ref),
                  incoming(up, enrollment.ATTENDANCE, b.attendance(ref, "2026-03-03", 6), subject=ref),
                  incoming(up, enrollment.MONTH, b.month(ref, "2026-03"), subject=ref),
                  incoming(up, enrollment.ATTENDANCE, b.attendance(later, "2026-03-02", 6),
                           subject=later)]
        second += [incoming(up, enrollment.ENROLLED,
                            b.enrolled(later, nid, course={"course_id": "C-WELD-2"}), subject=later),
                   incoming(up, enrollment.ATTENDANCE, b.attendance(ref, "2026-03-04", 8), subject=ref)]
        third += [incoming(up, enrollment.FINISHED, b.finished(ref), subject=ref),
                  incoming(up, enrollment.FINISHED, b.finished(later), subject=later)]
    return first, second, third


async def test_enrollment_statements_per_batch_do_not_grow_with_its_size(
        databases: dict[str, str]) -> None:
    handler = enrollment.make_handler(ENROLLMENT)
    counts = {}
    for n in (3, 12):
        counts[n] = [len(await statements(databases["enrollment"], handler, batch))
                     for batch in training(n)]
    assert counts[3] == counts[12]
    # lock, persons, parked, enrollments, months, flags, the persons' enrollments + 5 writes
    # (each person has one enrollment: no stored hours are read); then the same with the parked
    # records replayed and the stored hours of the persons' dates read (each has two now; the
    # old handler read the person-days once per replayed attendance); then lock, enrollments,
    # attendance + 1 write.
    assert counts[3] == [12, 12, 4]


def outputs(out: Outbox, topic: str) -> list[Incoming]:
    """The events an outbox would publish, as the next service receives them."""
    found = []
    for i, row in enumerate(out.rows):
        record = RawRecord(topic, 0, i, row[1], row[3])
        found.append(Incoming(decode(row[3], topic), record))
    return found


async def chain(n: int) -> tuple[list[Incoming], list[Incoming]]:
    """``n`` persons through the enrollment and assessment handlers (in memory): the assessment
    service's batches (results, then the enrollments they wait for) and the subsidy service's
    (every enrollment and assessment event)."""
    first, second, third = training(n)
    enrol = enrollment.make_handler(ENROLLMENT, MemoryEnrollmentStore())
    out = Outbox(source="/services/enrollment", dlq_topic="dlq")
    for batch in (first, second, third):
        await enrol(None, batch, out)  # type: ignore[arg-type]  # the in-memory store takes no connection
    enrolled = outputs(out, topics.ENROLLMENT_EVENTS)
    results = []
    for event in enrolled:
        if event.event.type == assessment.ACCEPTED:
            data: Any = event.event.data
            aref = b.ref("ASM")
            results.append(incoming(topics.ASSESSMENT_UPSTREAM, assessment.RESULT, {
                "assessment_ref": aref, "evaluator_id": "EVAL-1",
                "national_id": NIDS[data.enrollment_ref], "enrollment_ref": data.enrollment_ref,
                "occupation_code": data.course.occupation_code, "level": "intermediate",
                "certificate_kind": "skill_level", "passed": True,
                "assessed_on": "2026-03-25"}, subject=aref))
    return enrolled, results


async def test_assessment_and_subsidy_statements_per_batch_do_not_grow(
        databases: dict[str, str]) -> None:
    counts: dict[str, dict[int, list[int]]] = {"assessment": {}, "subsidy": {}}
    for n in (3, 12):
        enrolled, results = await chain(n)
        grade = assessment.make_handler(ASSESSMENT)
        # Results first (parked: their enrollments are not known yet), then the enrollments.
        assessed = [len(await statements(databases["assessment"], grade, results)),
                    len(await statements(databases["assessment"], grade, enrolled))]
        counts["assessment"][n] = assessed
        memory_grade = assessment.make_handler(ASSESSMENT, MemoryAssessmentStore())
        out = Outbox(source="/services/assessment", dlq_topic="dlq")
        for batch in (results, enrolled):
            await memory_grade(None, batch, out)  # type: ignore[arg-type]  # the in-memory store takes no connection
        facts = enrolled + outputs(out, topics.ASSESSMENT_EVENTS)
        decide = subsidy.make_handler(SUBSIDY, policies_from(SUBSIDY.policy_dir))
        counts["subsidy"][n] = [len(await statements(databases["subsidy"], decide, facts))]
    assert counts["assessment"][3] == counts["assessment"][12]
    assert counts["subsidy"][3] == counts["subsidy"][12]

