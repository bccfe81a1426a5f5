"""The subsidy service on the real Kafka and PostgreSQL, fed the internal topics directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.contract import topics
from tests import builders as b
from tests.harness import Producer, ServiceProcess, Stack

pytestmark = pytest.mark.integration

ENR = topics.ENROLLMENT_EVENTS
ASM = topics.ASSESSMENT_EVENTS
OUT = topics.SUBSIDY_EVENTS
COLLECT = (OUT, topics.dlq("subsidy"))  # topics the shared `collector` fixture reads (tests/conftest.py)


@pytest.fixture(scope="module")
async def subsidy(stack: Stack) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("subsidy", stack).start()
    await service.wait_ready()
    yield service
    service.stop()




def accepted(ref: str, pid: str, **over: Any) -> dict[str, Any]:
    data = b.enrolled(ref, "x")
    trainee = data.pop("trainee")
    out = {
        "enrollment_ref": ref, "person_id": pid, "institution_id": data["institution_id"],
        "categories": trainee["categories"], "rural": trainee["rural"],
        "hukou_agency": trainee["hukou_agency"], "insured_months": trainee["insured_months"],
        "hired_on": trainee["hired_on"], "employer": None, "course": data["course"],
        "fee": {"amount_fen": 150000, "payer": "person"}, "accepted_on": "2026-03-01",
    }
    out.update(over)
    return out


async def send(producer: Producer, topic: str, kind: str, data: dict[str, Any], agency: str,
               time: str = "2026-03-01T09:00:00+08:00") -> None:
    prefix = "skills.enrollment." if topic == ENR else "skills.assessment."
    await producer.event(topic, prefix + kind, data, subject=data["person_id"], agency=agency,
                         source=f"/services/{prefix.split('.')[1]}", time=time)


def mine(pid: str):  # noqa: ANN201
    return lambda e: e["data"].get("person_id") == pid


async def test_example_1_suqian_rural_school_leaver(subsidy, producer, collector) -> None:
    """EXAMPLES.md 1: living allowance on completion; SQ-CERT amount_not_configured."""
    pid, ref = b.pid(b.national_id()), b.ref()
    await send(producer, ENR, "EnrollmentAccepted.v1", accepted(ref, pid), "suqian")
    course = accepted(ref, pid)["course"]
    await send(producer, ENR, "TrainingCompleted.v1", {
        "enrollment_ref": ref, "person_id": pid, "course": course, "hours_attended": 80,
        "days_attended": 10, "attendance_rate": 1.0, "completed_on": "2026-03-20"}, "suqian",
        time="2026-03-20T18:00:00+08:00")
    assessment = {"assessment_ref": f"EV/{uuid.uuid4().hex[:8]}", "person_id": pid,
                  "enrollment_ref": ref, "occupation_code": "6-31-01-03", "level": "intermediate",
                  "certificate_kind": "skill_level", "assessed_on": "2026-03-25"}
    await send(producer, ASM, "AssessmentPassed.v1", assessment, "suqian", time="2026-03-25T10:00:00+08:00")
    await send(producer, ASM, "CertificateIssued.v1", {
        **{k: v for k, v in assessment.items() if k != "assessed_on"},
        "certificate_id": "CERT-" + uuid.uuid4().hex[:12], "issued_on": "2026-03-25"}, "suqian",
        time="2026-03-25T10:00:00+08:00")
    [grant] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=mine(pid))
    [rejected] = await collector.wait_events(OUT, "SubsidyRejected.v1", where=mine(pid))
    g = grant["data"]
    assert (g["rule"], g["stage"], g["amount_fen"], g["fund"]) == ("SQ-LIVING", "full", 30000, "employment_subsidy")
    assert g["payee"] == {"kind": "person", "id": pid} and g["basis"]["days"] == 10
    assert grant["id"] == g["grant_id"] and grant["subject"] == pid
    assert rejected["data"]["rule"] == "SQ-CERT"
    assert rejected["data"]["reason"] == "amount_not_configured"
    record = subsidy.get(f"/persons/{pid}/subsidies")
    assert [x["rule"] for x in record["grants"]] == ["SQ-LIVING"]
    summary = subsidy.get("/agencies/suqian/summary?year=2026")
    assert summary["by_rule"]["SQ-LIVING"]["amount_fen"] >= 30000
    assert summary["rejections_by_reason"]["amount_not_configured"] >= 1


async def test_example_5_a_withdrawn_project_based_course_takes_the_advance_back(
    subsidy, producer, collector
) -> None:
    """EXAMPLES.md 5: BS-PREJOB advance 40000 to the institution, then advance_not_earned."""
    pid, ref = b.pid(b.national_id()), b.ref()
    enrolment = accepted(
        ref, pid, categories=["poor_labor"], rural=False, institution_id="INST-9",
        course={**accepted(ref, pid)["course"], "training_type": "pre_job", "level": None,
                "project_based": True, "start_date": "2026-04-01", "end_date": "2026-04-20"},
        fee={"amount_fen": 90000, "payer": "institution"}, accepted_on="2026-04-01",
    )
    await send(producer, ENR, "EnrollmentAccepted.v1", enrolment, "baoshan", time="2026-04-01T09:00:00+08:00")
    await send(producer, ENR, "EnrollmentWithdrawn.v1", {
        "enrollment_ref": ref, "person_id": pid, "withdrawn_on": "2026-04-08", "days_attended": 5},
        "baoshan", time="2026-04-08T09:00:00+08:00")
    [advance] = await collector.wait_events(OUT, "SubsidyGranted.v1", where=mine(pid))
    [reversal] = await collector.wait_events(OUT, "SubsidyReversed.v1", where=mine(pid))
    assert (advance["data"]["rule"], advance["data"]["stage"], advance["data"]["amount_fen"]) == (
        "BS-PREJOB", "advance", 40000)
    assert advance["data"]["payee"] == {"kind": "institution", "id": "INST-9"}
    assert reversal["data"]["grant_id"] == advance["data"]["grant_id"]
    assert (reversal["data"]["amount_fen"], reversal["data"]["reason"]) == (40000, "advance_not_earned")
    ledger = subsidy.get("/agencies/baoshan/ledger?from=2026-04-01&to=2026-04-30")
    mine_rows = [e for e in ledger["entries"] if e["person_id"] == pid]
    assert [(e["event_type"], e["amount_fen"], e["fund"]) for e in mine_rows] == [
        ("granted", 40000, "unemployment_insurance"), ("reversed", -40000, "unemployment_insurance")]


async def test_redelivered_facts_pay_once(subsidy, producer, collector) -> None:
    pid, ref = b.pid(b.national_id()), b.ref()
    course = accepted(ref, pid)["course"]
    enrolment = accepted(ref, pid, categories=["low_income"])
    completed = {"enrollment_ref": ref, "person_id": pid, "course": course, "hours_attended": 40,
                 "days_attended": 5, "attendance_rate": 0.5, "completed_on": "2026-03-20"}
    for _ in range(2):
        for kind, data in (("EnrollmentAccepted.v1", enrolment), ("TrainingCompleted.v1", completed)):
            await producer.event(ENR, "skills.enrollment." + kind, data, subject=pid, agency="suqian",
                                 id=f"{kind}/{ref}", source="/services/enrollment")
    # The same facts under new ids (an upstream replay) must not pay again either.
    await producer.event(ENR, "skills.enrollment.TrainingCompleted.v1", completed, subject=pid,
                         agency="suqian", source="/services/enrollment")
    marker = b.pid(b.national_id())
    await send(producer, ENR, "EnrollmentAccepted.v1", accepted(b.ref(), marker, categories=["low_income"]), "suqian")
    mref = b.ref()
    await send(producer, ENR, "EnrollmentAccepted.v1", accepted(mref, marker, categories=["low_income"]), "suqian")
    await send(producer, ENR, "TrainingCompleted.v1", {**completed, "enrollment_ref": mref, "person_id": marker},
               "suqian")
    await collector.wait_events(OUT, "SubsidyGranted.v1", where=mine(marker))
    grants = collector.events(OUT, "SubsidyGranted.v1", mine(pid))
    assert [(g["data"]["rule"], g["data"]["amount_fen"]) for g in grants] == [("SQ-LIVING", 15000)]
