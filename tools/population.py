"""A deterministic population of trainees and the upstream records their training produces.

Every person is drawn from their own ``random.Random(f"{seed}:{index}")``, so a population is a
pure function of (persons, seed, agencies, disorder), and person i is the same in a population of
100 and of 10,000. Records of one person form one *lane* (``Population.lanes``): producing a lane
to one partition gives the services the per-person order the offline oracle assumes.
"""

from __future__ import annotations

import datetime as dt
import heapq
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shared.contract.envelope import encode_raw
from shared.contract.identity import check_digit
from services.assessment.domain import certificate_id
from tools.occupations import DOMESTIC, GENERAL, SPECIAL_OPERATION, Occupation

DEFAULT_AGENCIES = ("city-a", "suqian", "baoshan", "beijing")
YEAR = 2026

T = "skills.training."
A = "skills.assessment."
ENROLLED, ATTENDANCE, FINISHED = T + "TraineeEnrolled.v1", T + "AttendanceRecorded.v1", T + "TrainingFinished.v1"
WITHDRAWN, MONTH = T + "EnrollmentWithdrawn.v1", T + "WorkTrainingMonthRecorded.v1"
RESULT, REVOKED = A + "AssessmentResultRecorded.v1", A + "CertificateRevoked.v1"

AGENCY_WEIGHTS = {"city-a": 20, "suqian": 35, "baoshan": 20, "beijing": 25}
REGION = {"city-a": "370102", "suqian": "321302", "baoshan": "530502", "beijing": "110105"}
INSTITUTION_BLOCK = {"city-a": 100, "suqian": 200, "baoshan": 300, "beijing": 400}

TYPE_WEIGHTS: dict[str, dict[str, int]] = {
    "city-a": {"skill_upgrade": 45, "apprenticeship": 15, "pre_job": 10, "job_transfer": 6,
               "safety": 5, "special_operation": 8, "non_level": 5, "entrepreneurship": 3,
               "work_for_training": 3},
    "suqian": {"skill_upgrade": 35, "pre_job": 12, "job_transfer": 6, "safety": 6,
               "special_operation": 10, "work_for_training": 10, "apprenticeship": 5,
               "non_level": 4, "domestic_prejob": 3, "entrepreneurship": 3},
    "baoshan": {"skill_upgrade": 30, "pre_job": 15, "job_transfer": 8, "safety": 8,
                "special_operation": 8, "work_for_training": 10, "apprenticeship": 8,
                "non_level": 5, "domestic_prejob": 3},
    "beijing": {"skill_upgrade": 35, "pre_job": 12, "key_industry": 12, "domestic_prejob": 5,
                "domestic_refresh": 4, "non_level": 6, "special_operation": 8,
                "work_for_training": 5, "apprenticeship": 4, "safety": 3, "job_transfer": 3},
}
HOURS = {"skill_upgrade": (60, 160), "pre_job": (24, 80), "job_transfer": (40, 100),
         "safety": (16, 40), "special_operation": (40, 100), "apprenticeship": (120, 240),
         "domestic_prejob": (80, 120), "domestic_refresh": (40, 60), "non_level": (20, 60),
         "key_industry": (40, 120), "entrepreneurship": (40, 80), "work_for_training": (160, 160)}
LEVELLED_TYPES = {"skill_upgrade", "apprenticeship"}
LEVELS = ("junior", "intermediate", "senior", "technician", "senior_technician")
LEVEL_WEIGHTS = (30, 40, 20, 7, 3)
ASSESSED = {"skill_upgrade": 0.85, "apprenticeship": 0.9, "special_operation": 0.9,
            "pre_job": 0.6, "job_transfer": 0.6, "safety": 0.6, "key_industry": 0.6,
            "domestic_prejob": 0.5, "domestic_refresh": 0.5, "non_level": 0.3,
            "entrepreneurship": 0.2, "work_for_training": 0.0}
BUSY_SHARE = 0.02  # busy trainees: five courses of counted types in the year
COUNTED_TYPES = {"city-a": ("skill_upgrade",), "suqian": ("pre_job", "safety", "job_transfer"),
                 "baoshan": ("pre_job", "safety", "job_transfer"),
                 "beijing": ("domestic_refresh", "non_level", "domestic_prejob")}
OVERRUN_SHARE = 0.12  # courses whose attendance (or months) run past the planned end date
LEVEL_NOISE_SHARE = 0.15  # level-less certificates whose result carries a level anyway
ADVANCED_TYPES = {"skill_upgrade", "pre_job", "job_transfer", "safety"}
SECTORS = ("hitech", "fintech", "culture", "life_services", "city_ops")
# (category, weight, implies rural)
CATEGORIES = (
    ("enterprise_employee", 35, False), ("rural_migrant", 15, True), ("college_graduate", 10, False),
    ("non_continuing_graduate", 8, True), ("low_income", 8, True), ("employment_difficulty", 8, False),
    ("poor_labor", 6, True), ("registered_unemployed", 6, False), ("domestic_worker", 5, False),
    ("pension_eligible", 4, False), ("job_transferee", 3, False), ("rural_labor", 3, True),
    ("zero_employment_family", 2, False), ("urban_dibao_family", 2, False), ("veteran", 2, False),
    ("poor_family_child", 1, True), ("disabled", 1, False), ("overcapacity_displaced", 1, False),
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国志红玉梅"
REVOKE_REASONS = ("fraud: attendance falsified", "fraud: impersonated candidate",
                  "error: issued to the wrong person")


class Record(NamedTuple):
    """One upstream Kafka record: the key (subject) and the CloudEvents value."""

    key: str
    value: bytes


@dataclass
class Population:
    """The upstream records of a simulated population, in production order, per topic."""

    persons: int
    seed: int
    agencies: tuple[str, ...]
    disorder: bool
    training: list[Record] = field(default_factory=list)
    assessment: list[Record] = field(default_factory=list)
    lanes: dict[str, int] = field(default_factory=dict)  # record key -> person index
    malformed: Counter[str] = field(default_factory=Counter)  # intended dead letters by "topic:code"

    def lane(self, key: str) -> int:
        return self.lanes[key]


class _Lane:
    """One person's records under construction, with their sort keys."""

    def __init__(self, seed: int, index: int) -> None:
        self.seed, self.index = seed, index
        self.counter = 0
        self.training: list[tuple[str, int, Record]] = []  # (time, seq, record)
        self.results: list[tuple[str, int, Record]] = []
        self.revocations: list[tuple[str, int, Record]] = []

    def event(self, bucket: list[tuple[str, int, Record]], type: str, data: dict[str, Any], *,
              subject: str, source: str, agency: str, time: str, id: str | None = None) -> str:
        self.counter += 1
        event_id = id or f"sim-{self.seed}-{self.index}-{self.counter}"
        value = encode_raw(type, data, id=event_id, source=source, subject=subject,
                           agencyid=agency, time=time)
        bucket.append((time, self.counter, Record(subject, value)))
        return event_id


def national_id(rng: random.Random, agency: str, born: dt.date) -> str:
    first17 = f"{REGION[agency]}{born:%Y%m%d}{rng.randint(0, 999):03d}"
    return first17 + check_digit(first17)


def _at(day: dt.date, clock: str) -> str:
    return f"{day.isoformat()}T{clock}+08:00"


def _employers(agency: str) -> list[dict[str, Any] | None]:
    rng = random.Random(f"employers:{agency}")
    pool: list[dict[str, Any] | None] = []
    for n in range(40):
        sector = rng.choice(SECTORS) if agency == "beijing" and rng.random() < 0.6 else None
        pool.append({
            "id": f"91{REGION[agency]}MA{n:04d}{rng.randint(0, 9999):04d}",
            "insured": rng.random() < 0.85, "hardship_certified": rng.random() < 0.12,
            "sector": sector, "employee_model_domestic": rng.random() < 0.15,
        })
    return pool


EMPLOYERS = {agency: _employers(agency) for agency in DEFAULT_AGENCIES}


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _trainee(rng: random.Random, agency: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    born = dt.date(1965, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 42))
    categories: list[str] = []
    rural = False
    for _ in range(rng.choice((1, 1, 1, 2))):
        name, _w, is_rural = rng.choices(CATEGORIES, weights=[c[1] for c in CATEGORIES])[0]
        if name not in categories:
            categories.append(name)
        rural = rural or is_rural
    if "pension_eligible" in categories:
        born = dt.date(1962, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 4))
    trainee: dict[str, Any] = {
        "national_id": national_id(rng, agency, born),
        "name": rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.choice((1, 2)))),
        "categories": categories,
    }
    if rng.random() < 0.9:
        trainee["rural"] = rural or rng.random() < 0.1
    if rng.random() < 0.85:
        trainee["hukou_agency"] = agency
    employed = "enterprise_employee" in categories or "domestic_worker" in categories or rng.random() < 0.3
    if rng.random() < 0.9:
        trainee["insured_months"] = rng.randint(12, 120) if employed and rng.random() < 0.8 else rng.randint(0, 11)
    employer = rng.choice(EMPLOYERS[agency]) if employed and rng.random() < 0.9 else None
    if employer is not None and rng.random() < 0.85:
        trainee["hired_on"] = (dt.date(2024, 6, 1) + dt.timedelta(days=rng.randint(0, 700))).isoformat()
    return trainee, employer


@dataclass
class _Course:
    agency: str
    institution: str
    ref: str
    data: dict[str, Any]
    occupation: Occupation
    level: str | None
    training_type: str
    start: dt.date
    end: dt.date


def _course(rng: random.Random, lane: _Lane, n: int, agency: str, previous: list[_Course],
            busy: random.Random | None = None) -> _Course:
    training_type = _pick(rng, TYPE_WEIGHTS[agency])
    if busy is not None:
        training_type = busy.choice(COUNTED_TYPES[agency])
    repeat = [c for c in previous if c.training_type == training_type]
    if repeat and rng.random() < 0.3:  # same occupation and level again (exercises the slot rules)
        occupation, level = repeat[0].occupation, repeat[0].level
    else:
        pool = (SPECIAL_OPERATION if training_type == "special_operation"
                else DOMESTIC if training_type.startswith("domestic") else GENERAL)
        occupation = rng.choice(pool)
        level = None
        if training_type in LEVELLED_TYPES or (training_type == "key_industry" and rng.random() < 0.5):
            level = rng.choices(LEVELS, weights=LEVEL_WEIGHTS)[0]
    low, high = HOURS[training_type]
    planned = rng.randrange(low, high + 1, 4)
    if training_type == "work_for_training":
        start = dt.date(YEAR, rng.randint(1, 5), 1)
        end = (start + dt.timedelta(days=31 * 7)).replace(day=1) - dt.timedelta(days=1)
    else:
        start = dt.date(YEAR, 1, 5) + dt.timedelta(days=rng.randint(0, 280))
        end = start + dt.timedelta(days=-(-planned // 7) + rng.randint(0, 4))
    institution = f"INST-{INSTITUTION_BLOCK[agency] + rng.randint(1, 25):04d}"
    ref = f"{institution}/{YEAR}/{lane.seed}-{lane.index}-{n}"
    project_based = agency != "beijing" and training_type in ADVANCED_TYPES and rng.random() < 0.15
    course = {
        "course_id": f"C-{occupation.short}-{training_type}-{level or 'none'}-{institution[-3:]}",
        "occupation_code": occupation.code, "occupation_name": occupation.name, "level": level,
        "training_type": training_type, "planned_hours": planned,
        "start_date": start.isoformat(), "end_date": end.isoformat(),
        "project_based": project_based,
        "program_years": rng.randint(1, 3) if training_type == "apprenticeship" else None,
    }
    return _Course(agency, institution, ref, course, occupation, level, training_type, start, end)


def _fee(rng: random.Random, course: _Course, employer: dict[str, Any] | None) -> dict[str, Any]:
    if course.data["project_based"]:
        payer = "institution"
    elif employer is not None and rng.random() < 0.6:
        payer = "employer"
    else:
        payer = "employer" if rng.random() < 0.03 else "person"  # a few: employer fee, no employer
    return {"amount_fen": rng.randrange(50000, 300001, 500), "payer": payer}


def _hours(rng: random.Random) -> int | float:
    return rng.randint(2, 7) + 0.5 if rng.random() < 0.1 else rng.randint(2, 8)


def _training(rng: random.Random, lane: _Lane, c: _Course, trainee: dict[str, Any],
              employer: dict[str, Any] | None) -> dt.date | None:
    """Emit one course's training records; return completed_on, or None if not completed."""
    source, base = f"/institutions/{c.institution}", {"enrollment_ref": c.ref, "institution_id": c.institution}
    enrolled_on = c.start - dt.timedelta(days=rng.randint(1, 10))
    lane.event(lane.training, ENROLLED, {**base, "trainee": trainee, "employer": employer,
                                         "course": c.data, "fee": _fee(rng, c, employer)},
               subject=c.ref, source=source, agency=c.agency, time=_at(enrolled_on, "09:00:00"))
    # Real courses slip: some run past their planned end (POLICY.md §5: the dates are a plan;
    # every day and month really attended counts). Drawn from a generator of their own, so the
    # rest of the population is what it was without them.
    slip = random.Random(f"slip:{c.ref}")
    overrun = slip.choice((7, 10, 21, 45)) if slip.random() < OVERRUN_SHARE else 0
    end = c.end + dt.timedelta(days=overrun)
    days = [c.start + dt.timedelta(days=d) for d in range((end - c.start).days + 1)]
    if c.training_type == "work_for_training":
        months = sorted({d.strftime("%Y-%m") for d in days})[: rng.randint(1, 8)]
        for m in months:
            on = dt.date.fromisoformat(m + "-01")
            wages = rng.randrange(300000, 600001, 1000)
            lane.event(lane.training, MONTH, {**base, "month": m, "wages_fen": wages},
                       subject=c.ref, source=source, agency=c.agency, time=_at(on, "10:00:00"))
            if rng.random() < 0.05:  # a corrected month record under a new id: the first stands
                lane.event(lane.training, MONTH, {**base, "month": m, "wages_fen": wages + 1000},
                           subject=c.ref, source=source, agency=c.agency, time=_at(on, "11:00:00"))
        if rng.random() < 0.5:
            return None
        lane.event(lane.training, FINISHED, {**base, "finished_on": end.isoformat()},
                   subject=c.ref, source=source, agency=c.agency, time=_at(end, "18:30:00"))
        return end
    withdrawn_on = days[rng.randint(0, len(days) - 1)] if rng.random() < 0.12 else None
    share = 1.0 if rng.random() < 0.7 else rng.uniform(0.4, 0.95)
    attended = sorted(rng.sample(days, max(1, round(len(days) * share))))
    for day in attended:
        if withdrawn_on is not None and day >= withdrawn_on and rng.random() < 0.9:
            continue  # most records after a withdrawal never come; the rest are ignored
        if rng.random() < 0.05:  # a record later replaced by a second one for the same date
            lane.event(lane.training, ATTENDANCE, {**base, "date": day.isoformat(), "hours": _hours(rng)},
                       subject=c.ref, source=source, agency=c.agency, time=_at(day, "12:00:00"))
        lane.event(lane.training, ATTENDANCE, {**base, "date": day.isoformat(), "hours": _hours(rng)},
                   subject=c.ref, source=source, agency=c.agency,
                   time=_at(day, "18:00:00" if day != withdrawn_on else "08:00:00"))
    if withdrawn_on is not None:
        lane.event(lane.training, WITHDRAWN, {**base, "withdrawn_on": withdrawn_on.isoformat(),
                                              "reason": "moved away"},
                   subject=c.ref, source=source, agency=c.agency, time=_at(withdrawn_on, "12:30:00"))
        return None
    lane.event(lane.training, FINISHED, {**base, "finished_on": end.isoformat()},
               subject=c.ref, source=source, agency=c.agency, time=_at(end, "18:30:00"))
    return end


def _certificate_kind(rng: random.Random, c: _Course) -> tuple[str, str | None]:
    if c.level is not None and c.training_type != "special_operation":
        return ("qualification" if rng.random() < 0.3 else "skill_level"), c.level
    kind = ("special_operation" if c.training_type == "special_operation"
            else "special_ability" if c.training_type == "non_level" else "training_completion")
    # Some evaluators fill in a level on a level-less certificate: it is ignored (POLICY.md §5).
    noisy = random.Random(f"level:{c.ref}")
    return kind, (noisy.choice(LEVELS) if noisy.random() < LEVEL_NOISE_SHARE else None)


def _assess(rng: random.Random, lane: _Lane, nid: str, agency: str, occupation: str,
            level: str | None, kind: str, ref: str | None, on: dt.date, passed: bool) -> str:
    evaluator = f"EV-{rng.randint(1, 40):02d}"
    assessment_ref = f"{evaluator}/{YEAR}/{lane.seed}-{lane.index}-{lane.counter + 1}"
    data: dict[str, Any] = {
        "assessment_ref": assessment_ref, "evaluator_id": evaluator, "national_id": nid,
        "occupation_code": occupation, "level": level, "certificate_kind": kind, "passed": passed,
        "theory_score": round(rng.uniform(60, 98) if passed else rng.uniform(30, 59), 1),
        "practical_score": rng.randint(60, 98) if passed else rng.randint(30, 70),
        "assessed_on": on.isoformat(),
    }
    if ref is not None:
        data["enrollment_ref"] = ref
    lane.event(lane.results, RESULT, data, subject=assessment_ref, source=f"/evaluators/{evaluator}",
               agency=agency, time=_at(on, "16:00:00"))
    if passed and rng.random() < 0.03:
        cert = certificate_id(assessment_ref)
        revoked_on = on + dt.timedelta(days=rng.randint(20, 120))
        for _ in range(2 if rng.random() < 0.15 else 1):  # a repeated revocation has no effect
            lane.event(lane.revocations, REVOKED,
                       {"certificate_id": cert, "revoked_on": revoked_on.isoformat(),
                        "reason": rng.choice(REVOKE_REASONS)},
                       subject=cert, source=f"/auditors/{agency}", agency=agency,
                       time=_at(revoked_on, "10:00:00"))
    return assessment_ref


def _person(seed: int, index: int, agencies: Sequence[str]) -> _Lane:
    rng = random.Random(f"{seed}:{index}")
    lane = _Lane(seed, index)
    home = rng.choices(agencies, weights=[AGENCY_WEIGHTS.get(a, 20) for a in agencies])[0]
    trainee, employer = _trainee(rng, home)
    # A busy trainee takes five courses of counted types in the year, with an employer, and sits
    # every assessment: what the annual limit (3 per person per year) is for. Drawn from a
    # generator of its own, so everyone else is what they were without it.
    busy_rng = random.Random(f"busy:{seed}:{index}")
    busy = busy_rng if busy_rng.random() < BUSY_SHARE else None
    if busy is not None and employer is None:
        employer = busy.choice(EMPLOYERS[home])
    nid = trainee["national_id"]
    if nid.endswith("X") and random.Random(f"x:{seed}:{index}").random() < 0.5:
        trainee["national_id"] = nid.lower()  # institutions that type a lower-case x: same person
    if rng.random() < 0.02:  # self-selected assessment without any training: links to nothing
        occupation = rng.choice(GENERAL)
        _assess(rng, lane, nid, home, occupation.code, "intermediate", "skill_level", None,
                dt.date(YEAR, rng.randint(2, 11), rng.randint(1, 28)), True)
        return lane
    courses: list[_Course] = []
    count = rng.choices((1, 2, 3, 4, 5), weights=(62, 22, 9, 5, 2))[0]
    for n in range(5 if busy else count):
        agency = home if rng.random() < 0.9 or len(agencies) == 1 else rng.choice(agencies)
        courses.append(_course(rng, lane, n, agency, courses, busy))
    for c in sorted(courses, key=lambda c: c.start):
        completed_on = _training(rng, lane, c, trainee, employer)
        if completed_on is None or (rng.random() >= ASSESSED[c.training_type] and not busy):
            continue
        kind, level = _certificate_kind(rng, c)
        ref = c.ref if rng.random() < 0.9 else None
        on = completed_on + dt.timedelta(days=rng.randint(3, 25))
        passed = rng.random() < 0.82 or busy is not None
        _assess(rng, lane, nid, c.agency, c.occupation.code, level, kind, ref, on, passed)
        if not passed and rng.random() < 0.5:  # a retake
            on += dt.timedelta(days=rng.randint(15, 40))
            _assess(rng, lane, nid, c.agency, c.occupation.code, level, kind, ref, on,
                    rng.random() < 0.8)
    return lane


def simulate(persons: int, seed: int, agencies: Sequence[str] = DEFAULT_AGENCIES,
             disorder: bool = False) -> Population:
    """The upstream records of ``persons`` simulated trainees (see the module docstring)."""
    from tools.disorder import disturb  # the disorder layer builds on this module

    agencies = tuple(agencies)
    unknown = set(agencies) - set(DEFAULT_AGENCIES)
    if unknown:
        raise ValueError(f"no simulated policy for agencies {sorted(unknown)}")
    pop = Population(persons, seed, agencies, disorder)
    training: list[list[tuple[str, int, Record]]] = []
    assessment: list[list[tuple[str, int, Record]]] = []
    for index in range(persons):
        lane = _person(seed, index, agencies)
        lane.training.sort(key=lambda t: (t[0], t[1]))
        lane.results.sort(key=lambda t: (t[0], t[1]))
        lane.revocations.sort(key=lambda t: (t[0], t[1]))
        if disorder:
            disturb(random.Random(f"{seed}:{index}:disorder"), lane, pop)
        training.append(lane.training)
        assessment.append(lane.results + lane.revocations)
        for bucket in (lane.training, lane.results, lane.revocations):
            for _t, _s, record in bucket:
                pop.lanes.setdefault(record.key, index)
    pop.training = _interleave(training)
    pop.assessment = _interleave(assessment)
    return pop


def _interleave(lanes: list[list[tuple[str, int, Record]]]) -> list[Record]:
    """Merge the lanes by time; each lane keeps its own order (heapq.merge pulls lanes in order)."""
    tagged = ([(t, index, n, r) for n, (t, _s, r) in enumerate(lane)] for index, lane in enumerate(lanes))
    return [r for _t, _i, _n, r in heapq.merge(*tagged, key=lambda x: (x[0], x[1], x[2]))]
