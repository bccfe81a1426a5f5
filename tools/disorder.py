"""Real-world disorder for a simulated lane: redeliveries, early records and malformed ones.

Exact duplicates (same id, same bytes) must have no effect; an attendance record arriving before
its enrollment must wait for it; about 1% malformed records must be dead letters with the
contract's codes. ``Population.malformed`` counts the intended dead letters by "service:code".
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from shared.contract.envelope import encode_raw
from shared.contract.identity import check_digit
from services.assessment.domain import certificate_id
from tools.population import ATTENDANCE, ENROLLED, RESULT, Population, Record, _Lane

MALFORMED_RATE = 0.01
DUPLICATE_RATE = 0.01
EARLY_RATE = 0.03
CONFLICT_RATE = 0.002


def disturb(rng: random.Random, lane: _Lane, pop: Population) -> None:
    lane.training = _disturb_topic(rng, lane, pop, lane.training, "enrollment")
    results = _disturb_topic(rng, lane, pop, lane.results, "assessment")
    if rng.random() < CONFLICT_RATE:  # a revocation of a certificate never issued
        bogus = certificate_id(f"EV-00/never/{lane.seed}-{lane.index}")
        _append(lane, results, "skills.assessment.CertificateRevoked.v1",
                {"certificate_id": bogus, "revoked_on": "2026-12-01", "reason": "audit"},
                subject=bogus, source="/auditors/suqian", agency="suqian")
        pop.malformed["assessment:unknown_reference"] += 1
    lane.results = results


def _append(lane: _Lane, bucket: list[tuple[str, int, Record]], type: str, data: dict[str, Any], *,
            subject: str, source: str, agency: str, at: int | None = None) -> None:
    time = bucket[-1][0] if bucket else "2026-12-01T00:00:00+08:00"
    scratch: list[tuple[str, int, Record]] = []
    lane.event(scratch, type, data, subject=subject, source=source, agency=agency, time=time)
    bucket.insert(len(bucket) if at is None else at, scratch[0])


def _disturb_topic(rng: random.Random, lane: _Lane, pop: Population,
                   bucket: list[tuple[str, int, Record]], service: str) -> list[tuple[str, int, Record]]:
    out = list(bucket)
    # Attendance before its enrollment: swap an enrollment with the record right after it.
    for i in range(len(out) - 1):
        event = orjson.loads(out[i][2].value)
        if event["type"] == ENROLLED and rng.random() < EARLY_RATE:
            following = orjson.loads(out[i + 1][2].value)
            if following["type"] == ATTENDANCE and following["subject"] == event["subject"]:
                out[i], out[i + 1] = out[i + 1], out[i]
    result: list[tuple[str, int, Record]] = []
    for item in out:
        result.append(item)
        event = orjson.loads(item[2].value)
        if rng.random() < DUPLICATE_RATE:  # redelivered as is, a little later
            result.append(item)
        if event["type"] == ATTENDANCE and rng.random() < CONFLICT_RATE:
            changed = dict(event, data=dict(event["data"], hours=event["data"]["hours"] + 1))
            if changed["data"]["hours"] <= 12:
                result.append((item[0], item[1], Record(item[2].key, orjson.dumps(changed))))
                pop.malformed[f"{service}:conflicting_duplicate"] += 1
        if rng.random() < MALFORMED_RATE:
            code = rng.choice(("malformed_json", "unknown_type", "invalid_national_id", "unknown_agency"))
            result.append((item[0], item[1], _malformed(rng, lane, event, code, service)))
            pop.malformed[f"{service}:{code}"] += 1
    return result


def _malformed(rng: random.Random, lane: _Lane, event: dict[str, Any], code: str, service: str) -> Record:
    lane.counter += 1
    n = f"{lane.seed}-{lane.index}-{lane.counter}"
    if code == "malformed_json":
        return Record(f"garbage-{n}", b'{"specversion": "1.0", "id": "sim-' + n.encode() + b'", "data": {')
    if code == "unknown_type":
        kind = ("skills.training.TraineeTransferred.v1" if service == "enrollment"
                else "skills.assessment.ScoreAdjusted.v1")
        value = encode_raw(kind, {"note": "not a contract type"}, id=f"sim-{n}", source=event["source"],
                           subject=event["subject"], agencyid=event["agencyid"], time=event["time"])
        return Record(event["subject"], value)
    first17 = f"321302{rng.randint(1970, 2000)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}{rng.randint(0, 999):03d}"
    wrong = next(c for c in "0123456789X" if c != check_digit(first17))
    nid = first17 + wrong if code == "invalid_national_id" else first17 + check_digit(first17)
    agency = "atlantis" if code == "unknown_agency" else event["agencyid"]
    if service == "enrollment":
        ref = f"INST-0999/2026/bad-{n}"
        data: dict[str, Any] = {"enrollment_ref": ref, "institution_id": "INST-0999",
                "trainee": {"national_id": nid, "name": "测试", "categories": []}, "employer": None,
                "course": {"course_id": "C-X", "occupation_code": "6-31-01-03", "occupation_name": "电工",
                           "level": None, "training_type": "safety", "planned_hours": 16,
                           "start_date": "2026-05-01", "end_date": "2026-05-03"},
                "fee": {"amount_fen": 10000, "payer": "person"}}
        value = encode_raw(ENROLLED, data, id=f"sim-{n}", source="/institutions/INST-0999",
                           subject=ref, agencyid=agency, time=event["time"])
        return Record(ref, value)
    ref = f"EV-99/2026/bad-{n}"
    data = {"assessment_ref": ref, "evaluator_id": "EV-99", "national_id": nid,
            "occupation_code": "6-31-01-03", "level": "junior", "certificate_kind": "skill_level",
            "passed": True, "assessed_on": "2026-06-01"}
    value = encode_raw(RESULT, data, id=f"sim-{n}", source="/evaluators/EV-99", subject=ref,
                       agencyid=agency, time=event["time"])
    return Record(ref, value)
