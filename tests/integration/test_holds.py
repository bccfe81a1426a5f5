"""Integrity holds and their review on the real Kafka and PostgreSQL (POLICY.md §6).

The enrollment service flags from real attendance; the subsidy service holds what rests on a
flagged enrollment, and its review API releases or denies through skills.subsidy.reviews, once,
across a redelivery and a kill between the review and its decision. Amounts by hand from §4:
SQ-LIVING 30 CNY a day, SQ-SAFETY 300 CNY (employer), BJ-CERT-IND 1500 CNY at intermediate.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shared.contract import topics
from shared.runtime.auth import hash_token
from tests import builders as b
from tests.harness import ROOT, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

T = "skills.training."
UP = topics.TRAINING_UPSTREAM
ENR = topics.ENROLLMENT_EVENTS
ASM = topics.ASSESSMENT_EVENTS
OUT = topics.SUBSIDY_EVENTS
REVIEWS = topics.SUBSIDY_REVIEWS
COLLECT = (ENR, OUT, REVIEWS, topics.dlq("subsidy"))

TOKENS = {  # token -> API_TOKENS entry
    "suqian-reviewer": {"role": "reviewer", "agency": "suqian", "name": "suqian-clerk-1"},
    "beijing-reviewer": {"role": "reviewer", "agency": "beijing", "name": "beijing-clerk-1"},
    "suqian-staff": {"role": "agency", "agency": "suqian", "name": "suqian-staff"},
    "auditor": {"role": "auditor", "name": "audit-office"},
}
BEIJING_BUDGET = 450000  # unemployment_insurance 2026: three BJ-CERT-IND grants of 150000


@pytest.fixture(scope="module")
async def services(stack: Stack, tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[dict[str, ServiceProcess]]:
    policies = tmp_path_factory.mktemp("policies")
    for path in (ROOT / "services/subsidy/policies").glob("*.json"):
        shutil.copy(path, policies / path.name)
    beijing = json.loads((policies / "beijing.json").read_text())
    beijing["budgets"] = {"unemployment_insurance": {"2026": BEIJING_BUDGET}}
    # Other content under the shipped version name would be refused by a database (this
    # session's) that recorded the shipped file: a version names one content.
    beijing["version"] = "2020-01-holds-test"
    (policies / "beijing.json").write_text(json.dumps(beijing))
    tokens = json.dumps({hash_token(t): entry for t, entry in TOKENS.items()})
    found = {
        "enrollment": ServiceProcess("enrollment", stack, env={"API_TOKENS": tokens}).start(),
        "subsidy": ServiceProcess("subsidy", stack, env={
            "API_TOKENS": tokens, "SUBSIDY_POLICY_DIR": str(policies)}).start(),
    }
    for service in found.values():
        await service.wait_ready()
    yield found
    for service in found.values():
        service.stop()


def call(service: ServiceProcess, method: str, path: str, token: str,
         body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{service.port}{path}", method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def of(pid: str):  # noqa: ANN201
    return lambda e: e["data"].get("person_id") == pid


def distinct(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events by id: a relay re-publication after a crash is the same event (same bytes)."""
    seen: dict[str, dict[str, Any]] = {}
    for e in events:
        assert seen.setdefault(e["id"], e) == e
    return list(seen.values())


async def upstream(producer: Producer, type: str, data: dict[str, Any], ref: str,
                   agency: str = "suqian", time: str = "2026-03-01T09:00:00+08:00") -> None:
    await producer.event(UP, T + type, data, subject=ref, agency=agency, time=time,
                         source=f"/institutions/{data['institution_id']}")


async def test_a_flagged_enrollments_money_is_held_and_a_reviewer_releases_one_hold_and_denies_another(
    services, producer, collector
) -> None:
    subsidy = services["subsidy"]
    nid = b.national_id()
    pid = b.pid(nid)
    first, second = b.ref("INST-A"), b.ref("INST-B")
    await upstream(producer, "TraineeEnrolled.v1", b.enrolled(
        first, nid, institution_id="INST-A", trainee={"categories": ["low_income"]},
        course={"training_type": "safety", "level": None, "course_id": "C-SAFE-1"}), first)
    await upstream(producer, "TraineeEnrolled.v1", b.enrolled(
        second, nid, institution_id="INST-B", course={"course_id": "C-WELD-2"}), second,
        agency="beijing")
    for day in range(2, 12):  # ten days of 8 hours at INST-A
        await upstream(producer, "AttendanceRecorded.v1",
                       {**b.attendance(first, f"2026-03-{day:02d}", 8), "institution_id": "INST-A"},
                       first, time=f"2026-03-{day:02d}T18:00:00+08:00")
    # 6 hours at INST-B (another agency) on 2026-03-05: 14 hours that day, over 12
    await upstream(producer, "AttendanceRecorded.v1",
                   {**b.attendance(second, "2026-03-05", 6), "institution_id": "INST-B"},
                   second, agency="beijing", time="2026-03-05T19:00:00+08:00")
    flags = await collector.wait_events(ENR, "EnrollmentFlagged.v1", 2, where=of(pid))
    assert {f["data"]["enrollment_ref"] for f in flags} == {first, second}
    await upstream(producer, "TrainingFinished.v1",
                   {"enrollment_ref": first, "institution_id": "INST-A", "finished_on": "2026-03-20"},
                   first, time="2026-03-20T18:30:00+08:00")
    [living] = await collector.wait_events(OUT, "SubsidyHeld.v1", where=of(pid))
    assert (living["data"]["rule"], living["data"]["amount_fen"]) == ("SQ-LIVING", 30000)  # 30 x 10
    assert living["data"]["hold"] == {"checks": ["daily_hours_exceeded"], "enrollment_ref": first,
                                      "held_on": "2026-03-20"}
    cert = "CERT-" + uuid.uuid4().hex[:12]
    await producer.event(ASM, "skills.assessment.CertificateIssued.v1", {
        "certificate_id": cert, "assessment_ref": f"EV/{cert}", "person_id": pid,
        "enrollment_ref": first, "occupation_code": "6-31-01-03", "level": None,
        "certificate_kind": "training_completion", "issued_on": "2026-03-25"},
        subject=pid, source="/services/assessment", time="2026-03-25T10:00:00+08:00")
    held = await collector.wait_events(OUT, "SubsidyHeld.v1", 2, where=of(pid))
    safety = next(h for h in held if h["data"]["rule"] == "SQ-SAFETY")
    assert (safety["data"]["amount_fen"], safety["data"]["payee"]["kind"]) == (30000, "employer")
    assert collector.events(OUT, "SubsidyGranted.v1", of(pid)) == []  # nothing paid

    # The metrics count the open holds, their age and the money held (refreshed every 5 s).
    def gauge(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{subsidy.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(rf'^{name}{{agency="suqian"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else -1.0
    await wait_for(lambda: gauge("subsidy_holds_open") >= 2, 30, "two open holds on /metrics")
    assert gauge("subsidy_held_fen") >= 60000 and gauge("subsidy_hold_oldest_age_seconds") >= 0

    # The queue: suqian's staff and reviewer see both holds with explanation, checks and facts.
    status, queue = call(subsidy, "GET", "/agencies/suqian/holds", "suqian-staff")
    assert status == 200
    mine = {h["grant_id"]: h for h in queue["holds"] if h["person_id"] == pid}
    assert set(mine) == {living["data"]["grant_id"], safety["data"]["grant_id"]}
    view = mine[living["data"]["grant_id"]]
    assert view["checks"] == ["daily_hours_exceeded"] and view["amount_fen"] == 30000
    assert view["explanation"] == living["data"]["explanation"]
    assert view["facts"]["flags"][0]["flagged_on"] == "2026-03-05"
    assert view["facts"]["enrollment"]["days_attended"] == 10
    assert nid not in orjson.dumps(queue).decode()
    # Beijing's reviewer sees none of suqian's holds and cannot decide them; nor can an auditor
    # or suqian's plain staff token.
    assert call(subsidy, "GET", "/agencies/suqian/holds", "beijing-reviewer")[0] == 403
    for token in ("beijing-reviewer", "auditor", "suqian-staff"):
        assert call(subsidy, "POST", f"/holds/{living['data']['grant_id']}/review", token,
                    {"decision": "release", "note": ""})[0] == 403
    assert call(subsidy, "POST", "/holds/g_unknown/review", "suqian-reviewer",
                {"decision": "release", "note": ""})[0] == 404
    assert call(subsidy, "POST", f"/holds/{living['data']['grant_id']}/review", "suqian-reviewer",
                {"decision": "pay", "note": ""})[0] == 422

    status, release = call(subsidy, "POST", f"/holds/{living['data']['grant_id']}/review",
                           "suqian-reviewer", {"decision": "release", "note": "sign-in sheets checked"})
    assert status == 202 and release["review_id"].startswith("hr_")
    status, deny = call(subsidy, "POST", f"/holds/{safety['data']['grant_id']}/review",
                        "suqian-reviewer", {"decision": "deny", "note": "two places at once"})
    assert status == 202
    again = call(subsidy, "POST", f"/holds/{living['data']['grant_id']}/review", "suqian-reviewer",
                 {"decision": "deny", "note": ""})
    assert again[0] == 409 and again[1]["error"] == "already_reviewed"

    [granted] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=of(pid))
    [denied] = await collector.wait_events(OUT, "SubsidyRejected.v1", where=of(pid))
    assert granted["id"] == granted["data"]["grant_id"] == living["data"]["grant_id"]
    assert {k: v for k, v in granted["data"].items() if k != "explanation"} == {
        k: v for k, v in living["data"].items() if k not in ("explanation", "hold")}
    assert f"review {release['review_id']} by suqian-clerk-1" in granted["data"]["explanation"]
    assert denied["data"]["reason"] == "integrity_denied"
    assert denied["data"]["grant_id"] == safety["data"]["grant_id"]
    [review] = collector.events(REVIEWS, "HoldReviewed.v1",
                                lambda e: e["data"]["grant_id"] == living["data"]["grant_id"])
    assert review["source"] == "/services/subsidy/reviews" and review["id"] == release["review_id"]
    assert review["data"]["reviewer"] == "suqian-clerk-1" and review["subject"] == pid

    async def ended() -> bool:
        _, q = call(subsidy, "GET", "/agencies/suqian/holds?status=all", "suqian-staff")
        return {h["grant_id"]: h["status"] for h in q["holds"] if h["person_id"] == pid} == {
            living["data"]["grant_id"]: "released", safety["data"]["grant_id"]: "denied"}
    await wait_for(ended, 30, "the holds ended")
    _, reviews = call(subsidy, "GET", "/agencies/suqian/reviews", "auditor")
    assert {r["review_id"] for r in reviews["reviews"]} >= {release["review_id"], deny["review_id"]}
    _, reviewers = call(subsidy, "GET", "/agencies/suqian/reviewers", "suqian-staff")
    clerk = next(r for r in reviewers["reviewers"] if r["name"] == "suqian-clerk-1")
    assert clerk["configured"] and clerk["released"] >= 1 and clerk["denied"] >= 1
    _, trail = call(subsidy, "GET", "/audit", "auditor")
    assert {"suqian-staff", "suqian-clerk-1", "beijing-clerk-1"} <= {a["principal"] for a in trail}
    assert call(subsidy, "GET", "/audit", "suqian-reviewer")[0] == 403


def _beijing_accepted(ref: str, pid: str, occupation: str) -> dict[str, Any]:
    data = b.enrolled(ref, "x", course={"occupation_code": occupation, "course_id": f"C-{occupation}"})
    return {"enrollment_ref": ref, "person_id": pid, "institution_id": data["institution_id"],
            "categories": [], "rural": False, "hukou_agency": "beijing", "insured_months": 24,
            "hired_on": None, "employer": None, "course": data["course"],
            "fee": {"amount_fen": 150000, "payer": "person"}, "accepted_on": "2026-03-01"}


async def certified_in_beijing(producer: Producer, pid: str, occupation: str, *,
                               flagged: bool = False) -> str:
    """Acceptance, completion, (a flag,) a certificate: BJ-CERT-IND 150000 to the person."""
    ref = b.ref()
    accepted = _beijing_accepted(ref, pid, occupation)
    facts: list[tuple[str, str, dict[str, Any]]] = [
        (ENR, "skills.enrollment.EnrollmentAccepted.v1", accepted),
        (ENR, "skills.enrollment.TrainingCompleted.v1", {
            "enrollment_ref": ref, "person_id": pid, "course": accepted["course"],
            "hours_attended": 80, "days_attended": 10, "attendance_rate": 1.0,
            "completed_on": "2026-03-20"}),
    ]
    if flagged:
        facts.append((ENR, "skills.enrollment.EnrollmentFlagged.v1", {
            "enrollment_ref": ref, "person_id": pid, "check": "far_outside_plan",
            "detail": "attendance on 2026-05-01 is 42 days after the planned end (more than 30)",
            "flagged_on": "2026-05-01"}))
    cert = "CERT-" + uuid.uuid4().hex[:12]
    facts.append((ASM, "skills.assessment.CertificateIssued.v1", {
        "certificate_id": cert, "assessment_ref": f"EV/{cert}", "person_id": pid,
        "enrollment_ref": ref, "occupation_code": occupation, "level": "intermediate",
        "certificate_kind": "skill_level", "issued_on": "2026-03-25"}))
    for topic, type, data in facts:
        await producer.event(topic, type, data, subject=pid, agency="beijing",
                             source=f"/services/{topic.split('.')[1]}",
                             time="2026-03-25T10:00:00+08:00")
    return ref


async def test_a_hold_counts_toward_the_annual_limit_and_the_budget_and_a_denial_frees_both_once_across_a_kill(
    services, producer, collector
) -> None:
    subsidy = services["subsidy"]
    pid = b.pid(b.national_id())
    decided = lambda n: collector.wait_events(  # noqa: E731
        OUT, "", n, where=lambda e: of(pid)(e) and not e["type"].endswith("BudgetThresholdReached.v1"))
    await certified_in_beijing(producer, pid, "6-01-00-01", flagged=True)
    [hold] = await collector.wait_events(OUT, "SubsidyHeld.v1", where=of(pid))
    for occupation in ("6-01-00-02", "6-01-00-03"):
        await certified_in_beijing(producer, pid, occupation)
    await certified_in_beijing(producer, pid, "6-01-00-04")
    outcomes = await decided(4)
    assert [(e["type"].split(".")[2], e["data"]["rule"], e["data"].get("reason")) for e in outcomes] == [
        ("SubsidyHeld", "BJ-CERT-IND", None), ("SubsidyGranted", "BJ-CERT-IND", None),
        ("SubsidyGranted", "BJ-CERT-IND", None), ("SubsidyRejected", "BJ-CERT-IND", "annual_limit")]
    _, summary = call(subsidy, "GET", "/agencies/beijing/summary?year=2026", "auditor")
    assert summary["budgets"]["unemployment_insurance"]["committed_fen"] == 450000  # held included
    thresholds = collector.events(OUT, "BudgetThresholdReached.v1",
                                  lambda e: e["data"]["fund"] == "unemployment_insurance")
    assert sorted(e["data"]["threshold"] for e in thresholds) == [0.8, 0.9, 1.0]

    # A kill between the review and its decision: the service exits right after the database
    # commit of the batch that decides the review, before its offsets reach Kafka, so the
    # restarted service reads the review again.
    subsidy.stop()
    subsidy.start(SUBSIDY_CRASH_AFTER_DB_COMMIT="true")
    await subsidy.wait_ready()
    status, review = call(subsidy, "POST", f"/holds/{hold['data']['grant_id']}/review",
                          "beijing-reviewer", {"decision": "deny", "note": "not attended"})
    assert status == 202
    await wait_for(lambda: subsidy.proc is not None and subsidy.proc.poll() == 17, 60,
                   "the subsidy service to exit after deciding the review")
    subsidy.start()
    await subsidy.wait_ready()
    await certified_in_beijing(producer, pid, "6-01-00-05")
    outcomes = await decided(6)
    assert [(e["type"].split(".")[2], e["data"].get("reason")) for e in distinct(outcomes)][4:] == [
        ("SubsidyRejected", "integrity_denied"), ("SubsidyGranted", None)]  # limit and budget freed
    denials = distinct(collector.events(OUT, "SubsidyRejected.v1",
                                        lambda e: e["data"].get("grant_id") == hold["data"]["grant_id"]))
    assert len(denials) == 1
    conn = await subsidy.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM decision WHERE grant_id = $1 AND "
                                   "event_type <> 'held'", hold["data"]["grant_id"]) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM decision WHERE person_id = $1 AND reason = 'integrity_denied'",
            pid) == 1
        assert await conn.fetchval("SELECT status FROM hold WHERE grant_id = $1",
                                   hold["data"]["grant_id"]) == "denied"
        assert await conn.fetchval("SELECT count(*) FROM inbox WHERE id = $1",
                                   review["review_id"]) == 1
    finally:
        await conn.close()
    _, summary = call(subsidy, "GET", "/agencies/beijing/summary?year=2026", "auditor")
    assert summary["budgets"]["unemployment_insurance"]["committed_fen"] == 450000  # 3 paid
    assert call(subsidy, "POST", f"/holds/{hold['data']['grant_id']}/review", "beijing-reviewer",
                {"decision": "release", "note": ""})[0] == 409


async def test_a_review_not_from_the_review_api_is_dead_lettered(services, producer, collector) -> None:
    pid = b.pid(b.national_id())
    event_id = await producer.event(REVIEWS, "skills.subsidy.HoldReviewed.v1", {
        "grant_id": "g_forged", "person_id": pid, "agency": "beijing", "decision": "release",
        "reviewer": "mallory", "note": "", "reviewed_at": "2026-04-01T10:00:00Z"},
        subject=pid, agency="beijing", source="/somebody/else")
    await wait_for(lambda: collector.dead_letter_codes(topics.dlq("subsidy")).get(event_id), 30,
                   "the forged review dead-lettered")
    assert collector.dead_letter_codes(topics.dlq("subsidy"))[event_id] == ["untrusted_review"]


async def test_a_release_survives_a_kill_right_after_the_review_was_accepted(
    services, producer, collector
) -> None:
    """SIGKILL as soon as the API answered 202: the review and its outbox row are committed, the
    decision is not taken yet (or taken and not acknowledged); after the restart the held grant
    is published once."""
    subsidy = services["subsidy"]
    pid, ref = b.pid(b.national_id()), b.ref()
    course = b.enrolled(ref, "x")["course"]
    facts = [
        ("EnrollmentAccepted.v1", {
            "enrollment_ref": ref, "person_id": pid, "institution_id": "INST-T",
            "categories": ["low_income"], "rural": True, "hukou_agency": "suqian",
            "insured_months": 0, "hired_on": None, "employer": None, "course": course,
            "fee": {"amount_fen": 50000, "payer": "person"}, "accepted_on": "2026-03-01"}),
        ("EnrollmentFlagged.v1", {
            "enrollment_ref": ref, "person_id": pid, "check": "far_outside_plan",
            "detail": "attendance on 2026-05-01 is 42 days after the planned end (more than 30)",
            "flagged_on": "2026-05-01"}),
        ("TrainingCompleted.v1", {
            "enrollment_ref": ref, "person_id": pid, "course": course, "hours_attended": 56,
            "days_attended": 7, "attendance_rate": 0.7, "completed_on": "2026-05-01"}),
    ]
    for type, data in facts:
        await producer.event(ENR, "skills.enrollment." + type, data, subject=pid, agency="suqian",
                             source="/services/enrollment")
    [held] = await collector.wait_events(OUT, "SubsidyHeld.v1", where=of(pid))
    assert (held["data"]["rule"], held["data"]["amount_fen"]) == ("SQ-LIVING", 21000)  # 30 x 7
    status, _ = call(subsidy, "POST", f"/holds/{held['data']['grant_id']}/review",
                     "suqian-reviewer", {"decision": "release", "note": "course slipped"})
    assert status == 202
    subsidy.kill()
    subsidy.start()
    await subsidy.wait_ready()
    await collector.wait_events(OUT, "SubsidyGranted.v1", where=of(pid))
    conn = await subsidy.db()
    try:
        await wait_for(lambda: conn.fetchval("SELECT count(*) = 0 FROM outbox"), 30, "the outbox drained")
        assert await conn.fetchval("SELECT status FROM hold WHERE grant_id = $1",
                                   held["data"]["grant_id"]) == "released"
    finally:
        await conn.close()
    granted = distinct(collector.events(OUT, "SubsidyGranted.v1", of(pid)))
    assert [(g["id"], g["data"]["amount_fen"]) for g in granted] == [(held["data"]["grant_id"], 21000)]
