"""The offline oracle: what the three services must publish for a population, without running them.

The enrollment and assessment outcomes are recomputed here from EVENTS.md and POLICY.md §5
("Facts and dates"), independently of the services' code, and expressed through the contract's
payload models, so they are byte-for-byte what a correct service publishes. The subsidy outcome
is the pure engine (services.subsidy.engine.replay) fed exactly those events, per person in the order
the two-phase e2e stream delivers them: all enrollment events, then all assessment events.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.envelope import CloudEvent, DecodeError, decode
from shared.contract.identity import normalise_national_id, person_id
from shared.contract.vocabulary import LEVELLED_KINDS
from services.assessment.domain import certificate_id
from services.subsidy.contract import data as subsidy_data
from services.subsidy.contract import fact_from_model
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.replay import replay
from tools.population import DEFAULT_AGENCIES, Population, Record

DEFAULT_SECRET = "test-person-id-secret"  # tests.harness.SECRET
DAILY_HOURS_LIMIT = Decimal(12)  # POLICY.md §6 defaults (ENROLLMENT_DAILY_HOURS_LIMIT,
PLAN_SLACK_DAYS = 30  # ENROLLMENT_PLAN_SLACK_DAYS)


@dataclass(frozen=True)
class Out:
    """One expected output event: type, id, key (person_id), agencyid, time and data payload."""

    type: str
    id: str
    key: str
    agency: str
    time: str
    data: dict[str, Any]


@dataclass
class Expected:
    events: list[Out] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)


@dataclass
class _Enr:
    ref: str
    agency: str
    pid: str
    institution: str
    course_id: str
    start: dt.date
    end: dt.date
    planned: int
    course: dict[str, Any]
    status: str = "open"
    attendance: dict[dt.date, Decimal] = field(default_factory=dict)
    months: dict[str, int] = field(default_factory=dict)


class _Inbox:
    """(source, id) idempotency: a repeat with the same bytes is dropped, different bytes refused."""

    def __init__(self, dead: Counter[str], agencies: frozenset[str]) -> None:
        self.seen: dict[tuple[str, str], bytes] = {}
        self.dead, self.agencies = dead, agencies
        self.letters: set[tuple[str, str, bytes]] = set()  # one dead letter per (source, id, bytes)

    def _dead(self, code: str, key: tuple[str, str] | None, value: bytes) -> None:
        if key is not None:
            identity = (*key, value)
            if identity in self.letters:
                return
            self.letters.add(identity)
        self.dead[code] += 1

    def admit(self, record: Record, topic: str) -> CloudEvent | None:
        try:
            event = decode(record.value, topic, self.agencies)
        except DecodeError as exc:
            self._dead(exc.code, exc.key, record.value)
            return None
        known = self.seen.setdefault(event.key, event.digest)
        if known != event.digest:
            self._dead("conflicting_duplicate", event.key, record.value)
            return None
        return event if known is event.digest else None


def _emit(out: Expected, payload: ev.Payload, id: str, key: str, agency: str, time: dt.datetime) -> None:
    out.events.append(Out(ev.TYPE_OF[type(payload)], id, key, agency, time.isoformat(), ev.dump(payload)))


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def expected_enrollment_events(pop: Population, secret: str = DEFAULT_SECRET,
                               agencies: frozenset[str] = frozenset(DEFAULT_AGENCIES)) -> Expected:
    """Everything the enrollment service publishes for ``pop.training``, in per-person order."""
    out = Expected()
    inbox = _Inbox(out.dead_letters, agencies)
    enrollments: dict[str, _Enr] = {}
    by_person: dict[str, list[_Enr]] = {}
    parked: dict[str, list[CloudEvent]] = {}
    hours_on: dict[tuple[str, dt.date], dict[str, Decimal]] = {}  # (person, date) -> ref -> h
    flagged: set[tuple[str, str]] = set()

    def flag(ref: str, check: str, on: dt.date, detail: str, e: CloudEvent) -> None:
        """POLICY.md §6: one EnrollmentFlagged per enrollment and check."""
        if (ref, check) in flagged:
            return
        flagged.add((ref, check))
        target = enrollments[ref]
        _emit(out, ev.EnrollmentFlagged(enrollment_ref=ref, person_id=target.pid, check=check,
                                        detail=detail, flagged_on=on),
              f"enrollment-flagged/{ref}/{check}", target.pid, target.agency, e.time)

    def handle(e: CloudEvent) -> None:
        d: Any = e.data
        if e.type.endswith("TraineeEnrolled.v1"):
            try:
                nid = normalise_national_id(d.trainee.national_id)
            except ValueError:
                out.dead_letters["invalid_national_id"] += 1
                return
            pid = person_id(nid, secret)
            twin = next((o for o in by_person.get(pid, []) if o.course_id == d.course.course_id
                         and o.status != "withdrawn" and o.start <= d.course.end_date
                         and d.course.start_date <= o.end), None)
            if d.enrollment_ref in enrollments or twin is not None:
                reason = ev.EnrollmentRejected(enrollment_ref=d.enrollment_ref, person_id=pid,
                                               reason="duplicate_enrollment", detail="")
                _emit(out, reason, f"enrollment-rejected/{e.source}/{e.id}", pid, e.agencyid, e.time)
                return
            accepted = ev.EnrollmentAccepted(
                enrollment_ref=d.enrollment_ref, person_id=pid, institution_id=d.institution_id,
                categories=d.trainee.categories, rural=d.trainee.rural,
                hukou_agency=d.trainee.hukou_agency, insured_months=d.trainee.insured_months,
                hired_on=d.trainee.hired_on, employer=d.employer, course=d.course, fee=d.fee,
                accepted_on=e.time.date())
            enr: _Enr | None  # None below: not enrolled (yet)
            enr = _Enr(d.enrollment_ref, e.agencyid, pid, d.institution_id, d.course.course_id,
                       d.course.start_date, d.course.end_date, d.course.planned_hours,
                       ev.dump(accepted)["course"])
            enrollments[enr.ref] = enr
            by_person.setdefault(pid, []).append(enr)
            _emit(out, accepted, f"enrollment-accepted/{enr.ref}", pid, enr.agency, e.time)
            for waiting in parked.pop(enr.ref, []):
                handle(waiting)
            return
        enr = enrollments.get(d.enrollment_ref)
        if enr is None:
            parked.setdefault(d.enrollment_ref, []).append(e)
            return
        if d.institution_id != enr.institution:
            out.dead_letters["institution_mismatch"] += 1
            return
        if enr.status != "open":
            return
        if e.type.endswith("AttendanceRecorded.v1"):
            hours = Decimal(str(d.hours))
            if not Decimal(0) < hours <= 12:
                out.dead_letters["invalid_hours"] += 1
            else:  # the course's dates are a plan, not a fence (POLICY.md §5)
                enr.attendance[d.date] = hours
                # ... but attendance far outside it, or a person's day over 12 hours summed over
                # all their enrollments, flags the enrollments (POLICY.md §6)
                if (enr.start - d.date).days > PLAN_SLACK_DAYS:
                    flag(enr.ref, "far_outside_plan", d.date,
                         f"attendance on {d.date} is {(enr.start - d.date).days} days before the "
                         f"planned start (more than {PLAN_SLACK_DAYS})", e)
                elif (d.date - enr.end).days > PLAN_SLACK_DAYS:
                    flag(enr.ref, "far_outside_plan", d.date,
                         f"attendance on {d.date} is {(d.date - enr.end).days} days after the "
                         f"planned end (more than {PLAN_SLACK_DAYS})", e)
                day = hours_on.setdefault((enr.pid, d.date), {})
                day[enr.ref] = hours
                total = sum(day.values(), Decimal(0))
                if total > DAILY_HOURS_LIMIT:
                    for ref in sorted(day):
                        flag(ref, "daily_hours_exceeded", d.date,
                             f"{_number(total)} hours attended on {d.date} over {len(day)} "
                             f"enrollments (more than {_number(DAILY_HOURS_LIMIT)})", e)
        elif e.type.endswith("TrainingFinished.v1"):
            enr.status = "completed"
            hours = sum((h for h in enr.attendance.values() if h > 0), Decimal(0))
            days = sum(1 for h in enr.attendance.values() if h > 0)
            rate = min(Decimal(1), hours / Decimal(enr.planned))
            done = ev.TrainingCompleted(
                enrollment_ref=enr.ref, person_id=enr.pid, course=enr.course,
                hours_attended=_number(hours), days_attended=days,
                attendance_rate=float(round(rate, 4)), completed_on=d.finished_on)
            _emit(out, done, f"training-completed/{enr.ref}", enr.pid, enr.agency, e.time)
        elif e.type.endswith("EnrollmentWithdrawn.v1"):
            enr.status = "withdrawn"
            days = sum(1 for h in enr.attendance.values() if h > 0)
            gone = ev.EnrollmentWithdrawn(enrollment_ref=enr.ref, person_id=enr.pid,
                                          withdrawn_on=d.withdrawn_on, days_attended=days)
            _emit(out, gone, f"enrollment-withdrawn/{enr.ref}", enr.pid, enr.agency, e.time)
        elif e.type.endswith("WorkTrainingMonthRecorded.v1"):
            if d.month not in enr.months:
                enr.months[d.month] = len(enr.months) + 1
                month = ev.WorkTrainingMonthAccepted(
                    enrollment_ref=enr.ref, person_id=enr.pid, month=d.month,
                    wages_fen=d.wages_fen, month_index=enr.months[d.month])
                _emit(out, month, f"work-month-accepted/{enr.ref}/{d.month}", enr.pid,
                      enr.agency, e.time)

    for record in pop.training:
        event = inbox.admit(record, topics.TRAINING_UPSTREAM)
        if event is not None:
            handle(event)
    out.dead_letters["unknown_reference"] += sum(len(v) for v in parked.values())
    return out


def expected_assessment_events(pop: Population, enrollment: Expected, secret: str = DEFAULT_SECRET,
                               agencies: frozenset[str] = frozenset(DEFAULT_AGENCIES)) -> Expected:
    """Everything the assessment service publishes once it has seen ``enrollment``'s events."""
    out = Expected()
    inbox = _Inbox(out.dead_letters, agencies)
    accepted = {o.data["enrollment_ref"] for o in enrollment.events if o.type.endswith("EnrollmentAccepted.v1")}
    results: dict[str, tuple[Any, ...]] = {}
    certificates: dict[str, tuple[str, bool]] = {}  # id -> (person_id, revoked)
    waiting: dict[str, list[CloudEvent]] = {}

    def handle(e: CloudEvent) -> None:
        d: Any = e.data
        if e.type.endswith("CertificateRevoked.v1"):
            cert = certificates.get(d.certificate_id)
            if cert is None:
                waiting.setdefault(d.certificate_id, []).append(e)
            elif not cert[1]:
                certificates[d.certificate_id] = (cert[0], True)
                _emit(out, ev.CertificateRevoked(certificate_id=d.certificate_id, person_id=cert[0],
                                                 revoked_on=d.revoked_on, reason=d.reason),
                      f"certificate-revoked/{d.certificate_id}", cert[0], e.agencyid, e.time)
            return
        try:
            pid = person_id(d.national_id, secret)
        except ValueError:
            out.dead_letters["invalid_national_id"] += 1
            return
        levelled = d.certificate_kind in LEVELLED_KINDS
        if levelled and d.level is None:
            out.dead_letters["level_required"] += 1
            return
        level = d.level if levelled else None  # a level on a level-less kind is ignored
        content = (pid, d.evaluator_id, d.enrollment_ref, d.occupation_code, level,
                   d.certificate_kind, d.passed, d.theory_score, d.practical_score, d.assessed_on)
        known = results.setdefault(d.assessment_ref, content)
        if known is not content:
            if known != content:
                out.dead_letters["conflicting_duplicate"] += 1
            return
        if d.enrollment_ref is not None and d.enrollment_ref not in accepted:
            out.dead_letters["unknown_reference"] += 1
            return
        outcome = dict(assessment_ref=d.assessment_ref, person_id=pid, enrollment_ref=d.enrollment_ref,
                       occupation_code=d.occupation_code, level=level,
                       certificate_kind=d.certificate_kind, assessed_on=d.assessed_on)
        if not d.passed:
            _emit(out, ev.AssessmentFailed(**outcome), f"assessment-failed/{d.assessment_ref}",
                  pid, e.agencyid, e.time)
            return
        _emit(out, ev.AssessmentPassed(**outcome), f"assessment-passed/{d.assessment_ref}",
              pid, e.agencyid, e.time)
        cert_id = certificate_id(d.assessment_ref)
        certificates[cert_id] = (pid, False)
        issued = ev.CertificateIssued(certificate_id=cert_id, issued_on=d.assessed_on, **outcome)
        _emit(out, issued, f"certificate-issued/{cert_id}", pid, e.agencyid, e.time)
        for revocation in waiting.pop(cert_id, []):
            handle(revocation)

    for record in pop.assessment:
        event = inbox.admit(record, topics.ASSESSMENT_UPSTREAM)
        if event is not None:
            handle(event)
    out.dead_letters["unknown_reference"] += sum(len(v) for v in waiting.values())
    return out


def expected_subsidy_outputs(policies: PolicySet, enrollment: Expected, assessment: Expected) -> list[Out]:
    """The engine's outputs when each person's enrollment events precede their assessment events."""
    lanes: dict[str, list[Out]] = {}
    for o in enrollment.events + assessment.events:
        lanes.setdefault(o.key, []).append(o)
    models = {**ev.TOPIC_TYPES[topics.ENROLLMENT_EVENTS], **ev.TOPIC_TYPES[topics.ASSESSMENT_EVENTS]}
    facts = [fact for pid in sorted(lanes) for o in lanes[pid]
             if (fact := fact_from_model(models[o.type].model_validate(o.data), o.agency,
                                         dt.datetime.fromisoformat(o.time))) is not None]
    return [Out(o.event_type, o.event_id, o.key, o.agency, "", subsidy_data(o))
            for o in replay(policies, facts).outputs]


def national_ids_by_lane(pop: Population) -> dict[int, set[str]]:
    """The (normalised) national ids each lane's records name; malformed ones are skipped."""
    nids: dict[int, set[str]] = {}
    for record in pop.training + pop.assessment:
        if b'"national_id"' not in record.value:
            continue
        try:
            data = orjson.loads(record.value)["data"]
            raw = data["trainee"]["national_id"] if "trainee" in data else data["national_id"]
            nid = normalise_national_id(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        nids.setdefault(pop.lane(record.key), set()).add(nid)
    return nids


def persons_in_several_lanes(pop: Population, secret: str = DEFAULT_SECRET) -> set[str]:
    """The person ids whose national id occurs in more than one lane.

    National ids are drawn at random, so now and then two lanes are one person (as when one
    trainee enrols at two institutions). Their lanes go to different partitions, and the order
    between records of different partitions is the order they happen to be read in: for such a
    person the oracle's decision order (and only the order) is one of several correct ones."""
    owners = Counter(n for nids in national_ids_by_lane(pop).values() for n in nids)
    return {person_id(n, secret) for n, lanes in owners.items() if lanes > 1}


@dataclass
class Outcome:
    """All three services' expected outputs and dead letters for one population."""

    enrollment: Expected
    assessment: Expected
    subsidy: list[Out]


def expected_outcome(pop: Population, policies: PolicySet, secret: str = DEFAULT_SECRET) -> Outcome:
    enrollment = expected_enrollment_events(pop, secret)
    assessment = expected_assessment_events(pop, enrollment, secret)
    return Outcome(enrollment, assessment, expected_subsidy_outputs(policies, enrollment, assessment))
