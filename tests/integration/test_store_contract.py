"""One contract per service store, run against the in-memory fake and PostgreSQL alike.

Each test records changes through the port, loads a snapshot through the port and compares it
with what is expected by hand: both stores must give the same answer, so the fakes the handler
tests use cannot drift from the database. PostgreSQL: a fresh migrated database per service
and test session (dropped at the end).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from shared.contract import topics
from shared.runtime import crypto
from services.assessment import domain as ad
from services.assessment.config import AssessmentSettings
from services.assessment.handlers import REVOKED
from services.assessment.handlers import translate as assessment_translate
from services.assessment.store import MemoryAssessmentStore, PostgresAssessmentStore
from services.enrollment import domain as ed
from services.enrollment.config import EnrollmentSettings
from services.enrollment.handlers import ATTENDANCE, FINISHED
from services.enrollment.handlers import translate as enrollment_translate
from services.enrollment.store import MemoryEnrollmentStore, PostgresEnrollmentStore
from services.subsidy import state_codec
from services.subsidy.engine.state import BudgetLedger, FundYear, PersonState
from services.subsidy.store import Changes as SubsidyChanges
from services.subsidy.store import MemorySubsidyStore, PostgresSubsidyStore
from tests import builders as b
from tests.harness import SECRET
from tests.uow import drop_database, fresh_database, incoming

pytestmark = pytest.mark.integration

D = dt.date
T0 = dt.datetime(2026, 3, 1, 1, 0, tzinfo=dt.UTC)
ENROLLMENT = EnrollmentSettings(PERSON_ID_SECRET=SECRET, ENVIRONMENT="development")  # type: ignore[call-arg]  # by alias, as the environment sets it
ASSESSMENT = AssessmentSettings(PERSON_ID_SECRET=SECRET, ENVIRONMENT="development")  # type: ignore[call-arg]  # by alias, as the environment sets it


class Unit:
    """A store and how to run one step of it: in a transaction on PostgreSQL, as is in memory."""

    def __init__(self, store: Any, conn: asyncpg.Connection | None) -> None:
        self.store, self.conn = store, conn

    async def __call__(self, method: str, *args: Any) -> Any:
        if self.conn is None:
            return await getattr(self.store, method)(None, *args)
        async with self.conn.transaction():
            return await getattr(self.store, method)(self.conn, *args)


@pytest.fixture(scope="module")
async def databases() -> AsyncIterator[dict[str, str]]:
    dsns = {s: await fresh_database(s) for s in ("enrollment", "assessment", "subsidy")}
    yield dsns
    for dsn in dsns.values():
        await drop_database(dsn)


async def unit(kind: str, service: str, databases: dict[str, str]) -> tuple[Unit, Any]:
    memory = {"enrollment": MemoryEnrollmentStore, "assessment": MemoryAssessmentStore,
              "subsidy": MemorySubsidyStore}
    if kind == "memory":
        return Unit(memory[service](), None), None
    conn = await asyncpg.connect(databases[service])
    postgres: dict[str, Any] = {"enrollment": lambda: PostgresEnrollmentStore(crypto.Keyring.of(
                    ENROLLMENT.data_keys).fernet),
                "assessment": PostgresAssessmentStore, "subsidy": PostgresSubsidyStore}
    return Unit(postgres[service](), conn), conn


def enrollment(ref: str, pid: str, course: str, **over: Any) -> ed.Enrollment:
    base: dict[str, Any] = dict(
        enrollment_ref=ref, agency="suqian", person_id=pid, institution_id="INST-T",
        course_id=course, start_date=D(2026, 3, 1), end_date=D(2026, 3, 20), planned_hours=80,
        accepted={"course": {"course_id": course}}, event_time=T0,
    )
    base.update(over)
    return ed.Enrollment(**base)


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_enrollment_store(kind: str, databases: dict[str, str]) -> None:
    run, conn = await unit(kind, "enrollment", databases)
    try:
        await _enrollment_contract(run)
    finally:
        if conn is not None:
            await conn.close()


async def _enrollment_contract(run: Unit) -> None:
    nid = b.national_id()
    pid = b.pid(nid)
    r1, r2, r3, unknown = "A/" + b.ref(), "B/" + b.ref(), "C/" + b.ref(), "D/" + b.ref()
    waiting_attend = incoming(topics.TRAINING_UPSTREAM, ATTENDANCE, b.attendance(r3, "2026-03-02", 6),
                              subject=r3)
    waiting_finish = incoming(topics.TRAINING_UPSTREAM, FINISHED, b.finished(r3), subject=r3)
    await run("record", ed.Changes(
        trainees={pid: (nid, "张三")},
        enrollments=[enrollment(r1, pid, "C-1", dirty=True, new=True),
                     enrollment(r2, pid, "C-2", dirty=True, new=True)],
        attendance={(r1, D(2026, 3, 2)): Decimal(7), (r2, D(2026, 3, 2)): Decimal(3),
                    (r1, D(2026, 3, 3)): Decimal("5.5")},
        months=[(r1, "2026-03", 400000, 1)],
        rejections=[("/src", "e-1", r1, pid, "duplicate_enrollment", "known", "suqian")],
        flags=[(r1, "far_outside_plan", pid, D(2026, 3, 2), "far")],
        parked=[(r3, waiting_attend), (r3, waiting_finish)],
    ))
    translate = lambda item: enrollment_translate(ENROLLMENT, item)  # noqa: E731
    enrol = enrollment_translate(ENROLLMENT, incoming(
        topics.TRAINING_UPSTREAM, "skills.training.TraineeEnrolled.v1", b.enrolled(r3, nid),
        subject=r3))
    commands = [
        ed.Attend(None, r1, "INST-T", D(2026, 3, 2), Decimal(1)),
        ed.Finish(None, r2, "INST-T", D(2026, 3, 20)),
        ed.Month(None, r1, "INST-T", "2026-04", 1),
        enrol,
        ed.Attend(None, unknown, "INST-T", D(2026, 3, 9), Decimal(1)),
    ]
    snap = await run("load", commands, translate)
    assert snap.enrollments == {
        # The accepted payload only of the enrollment a command of the batch closes (r2).
        r1: enrollment(r1, pid, "C-1", months={"2026-03": (400000, 1)}, accepted=None),
        r2: enrollment(r2, pid, "C-2", attendance={D(2026, 3, 2): Decimal(3)}),
    }
    assert list(snap.enrollments) == [r1, r2]  # in ref order: the duplicate check names the first
    assert list(snap.waiting) == [r3]
    seqs = [seq for seq, _ in snap.waiting[r3]]
    assert seqs == sorted(seqs)
    assert [c for _, c in snap.waiting[r3]] == [translate(waiting_attend), translate(waiting_finish)]
    # r1's attendance and r3's waiting one count for the person's 2 March (over all enrollments).
    assert snap.day_hours == {(pid, D(2026, 3, 2)): {r1: Decimal(7), r2: Decimal(3)}}
    assert snap.agency_of == {r1: "suqian", r2: "suqian"}
    assert snap.flagged == {(r1, "far_outside_plan")}

    # A closing, a replacement of hours and the waiting records replayed.
    closed = enrollment(r2, pid, "C-2", status="completed", closed_on=D(2026, 3, 20),
                        hours_attended=Decimal(3), days_attended=1, dirty=True)
    await run("record", ed.Changes(enrollments=[closed], replayed=seqs,
                                   attendance={(r1, D(2026, 3, 2)): Decimal(8)}))
    snap = await run("load", commands, translate)
    assert snap.enrollments[r2] == enrollment(
        r2, pid, "C-2", status="completed", closed_on=D(2026, 3, 20), hours_attended=Decimal(3),
        days_attended=1, attendance={D(2026, 3, 2): Decimal(3)})
    assert snap.waiting == {}
    assert snap.day_hours == {(pid, D(2026, 3, 2)): {r1: Decimal(8), r2: Decimal(3)}}
    snap = await run("load", [ed.Attend(None, r2, "INST-T", D(2026, 3, 3), Decimal(2))], translate)
    assert snap.day_hours == {(pid, D(2026, 3, 3)): {r1: Decimal("5.5")}}
    assert snap.agency_of == {r1: "suqian"}
    # A person with one enrollment: no stored hours are read (only that one's can count, and
    # the batch's attendance replaces them); once the batch enrols a second one, they are.
    nid2 = b.national_id()
    pid2, only, second = b.pid(nid2), "E/" + b.ref(), "F/" + b.ref()
    await run("record", ed.Changes(
        trainees={pid2: (nid2, "李四")}, enrollments=[enrollment(only, pid2, "C-1", dirty=True, new=True)],
        attendance={(only, D(2026, 3, 5)): Decimal(6)}))
    attend = ed.Attend(None, only, "INST-T", D(2026, 3, 5), Decimal(7))
    snap = await run("load", [attend], translate)
    assert snap.day_hours == {(pid2, D(2026, 3, 5)): {}}
    enrol2 = enrollment_translate(ENROLLMENT, incoming(
        topics.TRAINING_UPSTREAM, "skills.training.TraineeEnrolled.v1", b.enrolled(second, nid2),
        subject=second))
    snap = await run("load", [enrol2, attend], translate)
    assert snap.day_hours == {(pid2, D(2026, 3, 5)): {only: Decimal(6)}}
    # A new person enrolling twice in the batch, with attendance: nothing stored to read.
    nid3 = b.national_id()
    pid3, g, h = b.pid(nid3), "G/" + b.ref(), "H/" + b.ref()
    enrolments = [enrollment_translate(ENROLLMENT, incoming(
        topics.TRAINING_UPSTREAM, "skills.training.TraineeEnrolled.v1",
        b.enrolled(ref, nid3, course={"course_id": course}), subject=ref))
        for ref, course in ((g, "C-1"), (h, "C-2"))]
    snap = await run("load", [*enrolments, ed.Attend(None, g, "INST-T", D(2026, 3, 6), Decimal(7))],
                     translate)
    assert snap.day_hours == {(pid3, D(2026, 3, 6)): {}}


def a_result(aref: str, pid: str, ref: str | None) -> ad.Result:
    return ad.Result(aref, "EVAL-1", pid, ref, "6-31-01-03", "intermediate", "skill_level", True,
                     80.0, None, D(2026, 3, 25))


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_assessment_store(kind: str, databases: dict[str, str]) -> None:
    run, conn = await unit(kind, "assessment", databases)
    try:
        await _assessment_contract(run)
    finally:
        if conn is not None:
            await conn.close()


async def _assessment_contract(run: Unit) -> None:
    pid = b.pid(b.national_id())
    ref, waiting_ref, aref, waiting_aref = b.ref(), b.ref(), b.ref("ASM"), b.ref("ASM")
    cid, waiting_cid = ad.certificate_id(aref), ad.certificate_id(waiting_aref)
    enr = ad.Enrollment(ref, pid, "6-31-01-03", "intermediate", D(2026, 3, 1), "suqian", dirty=True)
    decided = ad.Assessment(aref, b"d" * 32, "decided", "suqian", a_result(aref, pid, ref), dirty=True)
    parked_result = ad.Assessment(waiting_aref, b"w" * 32, "waiting", "suqian",
                                  a_result(waiting_aref, pid, waiting_ref), dirty=True)
    cert = ad.issue(a_result(aref, pid, ref))
    assert cert is not None
    # A result waiting for its enrollment, and a revocation waiting for that result's certificate.
    waiting_result = incoming(topics.ASSESSMENT_UPSTREAM, "skills.assessment.AssessmentResultRecorded.v1",
                              {"assessment_ref": waiting_aref, "evaluator_id": "EVAL-1",
                               "national_id": b.national_id(), "enrollment_ref": waiting_ref,
                               "occupation_code": "6-31-01-03", "level": "intermediate",
                               "certificate_kind": "skill_level", "passed": True,
                               "assessed_on": "2026-03-25"}, subject=waiting_aref)
    waiting_revocation = incoming(topics.ASSESSMENT_UPSTREAM, REVOKED,
                                  {"certificate_id": waiting_cid, "revoked_on": "2026-04-01"},
                                  subject=waiting_cid)
    await run("record", ad.Changes(
        enrollments=[enr], assessments=[decided, parked_result], certificates=[cert],
        parked=[(ad.ENROLLMENT + waiting_ref, waiting_result),
                (ad.CERTIFICATE + waiting_cid, waiting_revocation)],
    ))
    translate = lambda item: assessment_translate(ASSESSMENT, item)  # noqa: E731
    commands = [
        ad.EnrollmentAccepted(None, "suqian", waiting_ref, pid, "6-31-01-03", None, D(2026, 3, 1)),
        ad.EnrollmentWithdrawn(None, "suqian", ref, D(2026, 3, 5)),
        ad.Revoke(None, "suqian", cid, D(2026, 4, 1), "fraud"),
    ]
    snap = await run("load", commands, translate)
    # The waiting result is taken with its enrollment, and the revocation its certificate would
    # release with it (the second round of the load).
    assert {k: [c for _, c in v] for k, v in snap.waiting.items()} == {
        ad.ENROLLMENT + waiting_ref: [translate(waiting_result)],
        ad.CERTIFICATE + waiting_cid: [translate(waiting_revocation)],
    }
    assert snap.enrollments == {ref: ad.Enrollment(ref, pid, "6-31-01-03", "intermediate",
                                                   D(2026, 3, 1), "suqian")}
    assert snap.assessments == {waiting_aref: ad.Assessment(waiting_aref, b"w" * 32, "waiting",
                                                            "suqian")}
    assert snap.certificates == {cid: ad.Certificate(
        cid, aref, pid, ref, "6-31-01-03", "intermediate", "skill_level", D(2026, 3, 25))}

    # Updates keep what they do not change; consumed records are gone.
    enr.status, enr.withdrawn_on = "withdrawn", D(2026, 3, 5)
    ad.revoke(cert, D(2026, 4, 1), "fraud")
    parked_result.status = "decided"
    consumed = [seq for v in snap.waiting.values() for seq, _ in v]
    await run("record", ad.Changes(enrollments=[enr], assessments=[parked_result],
                                   certificates=[cert], consumed=consumed))
    snap = await run("load", [*commands, translate(waiting_result)], translate)
    assert all(v == [] for v in snap.waiting.values())
    assert snap.enrollments[ref].status == "withdrawn"
    assert snap.enrollments[ref].withdrawn_on == D(2026, 3, 5)
    assert snap.assessments[waiting_aref].status == "decided"
    assert snap.assessments[waiting_aref].digest == b"w" * 32
    got = snap.certificates[cid]
    assert (got.status, got.revoked_on, got.revoke_reason, got.issued_on) == (
        "revoked", D(2026, 4, 1), "fraud", D(2026, 3, 25))


async def decisions(run: Unit) -> list[tuple[Any, ...]]:
    """The decision ledger (what the store has no port for: the queries read it)."""
    if run.conn is None:
        return list(run.store.decisions)
    rows = await run.conn.fetch("SELECT event_id, event_type, fund, payee_kind, amount_fen"
                                " FROM decision ORDER BY event_id")
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("kind", ["memory", "postgres"])
async def test_subsidy_store(kind: str, databases: dict[str, str]) -> None:
    run, conn = await unit(kind, "subsidy", databases)
    try:
        await _subsidy_contract(run)
    finally:
        if conn is not None:
            await conn.close()


def ledger_row(event_id: str, kind: str, grant: str, amount: int,
               fund: str | None) -> tuple[Any, ...]:
    return (event_id, kind, "p_1", "suqian", "R1", None, None, amount, fund,
            "trainee" if fund else None, grant, D(2026, 3, 25), "{}")


async def _subsidy_contract(run: Unit) -> None:
    p1, p2 = b.pid(b.national_id()), b.pid(b.national_id())
    assert await run("load", [p1, p2]) == {}
    key = "suqian|employment|2026"
    start = {key: FundYear()}
    spent = BudgetLedger({key: FundYear(150000, (5000,))})
    await run("record", SubsidyChanges(
        states={p1: PersonState.empty(p1)},
        decisions=[ledger_row("g-1", "granted", "G1", 150000, "employment")],
        ledger=spent, start=start,
    ))
    assert await run("load", [p1, p2]) == {p1: state_codec.dumps(PersonState.empty(p1))}

    # The next batch's decisions start from the stored fund years; what it adds is added.
    seen: list[FundYear] = []
    result, ledger, began = await run("decide", frozenset({key}),
                                      lambda led: seen.append(led.get("suqian", "employment", 2026)) or "ok")  # type: ignore[func-returns-value]  # then "ok"
    assert (result, seen, began[key]) == ("ok", [FundYear(150000, (5000,))], FundYear(150000, (5000,)))
    ledger.funds[key] = FundYear(100000, (5000,))  # a reversal gives 50,000 back
    changed = await run("record", SubsidyChanges(
        decisions=[ledger_row("r-1", "reversed", "G1", -50000, None)], ledger=ledger, start=began,
    ))
    assert changed.funds == {key: FundYear(100000, (5000,))}
    # The reversal of a grant decided in an earlier batch carries that grant's fund.
    rows = [(r[0], r[1], r[8], r[9], r[7]) if len(r) > 5 else r for r in await decisions(run)]
    assert sorted(rows) == [("g-1", "granted", "employment", "trainee", 150000),
                            ("r-1", "reversed", "employment", "trainee", -50000)]
