"""The assessment service on the real Kafka and PostgreSQL: results, certificates, revocations, DLQ."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from shared.contract import topics
from shared.contract.envelope import encode_raw
from services.assessment.domain import certificate_id
from tests import builders as b
from tests.harness import Collector, Producer, ServiceProcess, Stack, wait_for

pytestmark = pytest.mark.integration

UP = topics.ASSESSMENT_UPSTREAM
ENROLLMENTS = topics.ENROLLMENT_EVENTS
OUT = topics.ASSESSMENT_EVENTS
DLQ = topics.dlq("assessment")
COLLECT = (OUT, DLQ)  # topics the shared `collector` fixture reads (tests/conftest.py)
RESULT = "skills.assessment.AssessmentResultRecorded.v1"
REVOKED = "skills.assessment.CertificateRevoked.v1"
ACCEPTED = "skills.enrollment.EnrollmentAccepted.v1"
EVALUATOR = "/evaluators/EV-T"
TIME = "2026-03-25T16:00:00+08:00"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
async def assessment(stack: Stack) -> AsyncIterator[ServiceProcess]:
    service = ServiceProcess("assessment", stack).start()
    await service.wait_ready()
    yield service
    service.stop()




# ---- building and sending records ------------------------------------------------------------


def a_ref() -> str:
    return f"EV-T/2026/{uuid.uuid4().hex[:10]}"


def result(aref: str, nid: str, **over: Any) -> dict[str, Any]:
    data = {
        "assessment_ref": aref, "evaluator_id": "EV-T", "national_id": nid,
        "enrollment_ref": None, "occupation_code": "6-31-01-03", "level": "intermediate",
        "certificate_kind": "skill_level", "passed": True, "theory_score": 78.5,
        "practical_score": 81, "assessed_on": "2026-03-25",
    }
    data.update(over)
    return data


def accepted(eref: str, nid: str) -> dict[str, Any]:
    """An EnrollmentAccepted.v1 as the enrollment service publishes it (EVENTS.md §5.1)."""
    return {
        "enrollment_ref": eref, "person_id": b.pid(nid), "institution_id": "INST-T",
        "categories": ["rural_migrant"], "rural": True, "hukou_agency": "suqian",
        "insured_months": 14, "hired_on": "2026-01-10",
        "employer": {"id": "91321300MA1XXXXX0X", "insured": True, "hardship_certified": False,
                     "sector": None, "employee_model_domestic": False},
        "course": {"course_id": "C-ELEC-3", "occupation_code": "6-31-01-03",
                   "occupation_name": "电工", "level": "intermediate",
                   "training_type": "skill_upgrade", "planned_hours": 80,
                   "start_date": "2026-03-01", "end_date": "2026-03-20",
                   "project_based": False, "program_years": None},
        "fee": {"amount_fen": 150000, "payer": "employer"},
        "accepted_on": "2026-03-01",
    }


async def send(producer: Producer, type: str, data: dict[str, Any], *, subject: str,
               id: str | None = None, key: str | None = None, source: str = EVALUATOR,
               time: str = TIME, traceparent: str | None = None, topic: str = UP) -> str:
    """Produce one event; ``key`` (default: the subject) picks the partition."""
    event_id = id or uuid.uuid4().hex
    value = encode_raw(type, data, id=event_id, source=source, subject=subject,
                       agencyid="suqian", time=time, traceparent=traceparent)
    await producer.raw(topic, value, key=key or subject)
    return event_id


async def send_result(producer: Producer, data: dict[str, Any], **kw: Any) -> str:
    return await send(producer, RESULT, data, subject=data["assessment_ref"], **kw)


async def send_revocation(producer: Producer, cert: str, on: str = "2026-06-01",
                          reason: str = "fraud: attendance falsified", **kw: Any) -> str:
    return await send(producer, REVOKED, {"certificate_id": cert, "revoked_on": on, "reason": reason},
                      subject=cert, source="/auditors/AU-T", **kw)


async def send_enrollment(producer: Producer, eref: str, nid: str) -> str:
    return await send(producer, ACCEPTED, accepted(eref, nid), subject=b.pid(nid),
                      source="/services/enrollment", id=f"enrollment-accepted/{eref}",
                      time="2026-03-01T09:00:00+08:00", topic=ENROLLMENTS)


async def drain(producer: Producer, collector: Collector, key: str) -> None:
    """A passing result sent on ``key``'s partition after the records under test: once its
    outcome is out, everything before it on that partition has been consumed."""
    marker = a_ref()
    await send_result(producer, result(marker, b.national_id()), key=key)
    await collector.wait_events(OUT, "AssessmentPassed.v1", where=about(marker))


def about(aref: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["data"].get("assessment_ref") == aref


def of_certificate(cert: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["data"].get("certificate_id") == cert


def dead(collector: Collector, code: str, field: str, value: str) -> list[Any]:
    found = []
    for r in collector.dead_letters(DLQ):
        try:
            data = orjson.loads(r.value)["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if r.headers.get("error-code") == code and data.get(field) == value:
            found.append(r)
    return found


async def wait_dead(collector: Collector, code: str, field: str, value: str,
                    timeout: float = 30) -> list[Any]:
    return await wait_for(lambda: dead(collector, code, field, value), timeout,
                          f"{code} dead letter for {value}")


# ---- results and certificates ------------------------------------------------------------------


async def test_a_passed_assessment_publishes_assessment_passed_then_a_certificate_with_a_stable_id(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    await send_result(producer, result(aref, nid), traceparent=TRACEPARENT)
    await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    passed, issued = collector.events(OUT, "", about(aref))
    assert passed["type"].endswith("AssessmentPassed.v1")
    assert issued["type"].endswith("CertificateIssued.v1")
    assert passed["id"] == f"assessment-passed/{aref}"
    cert = certificate_id(aref)
    assert issued["id"] == f"certificate-issued/{cert}"
    assert issued["data"] == {
        "certificate_id": cert, "assessment_ref": aref, "person_id": b.pid(nid),
        "enrollment_ref": None, "occupation_code": "6-31-01-03", "level": "intermediate",
        "certificate_kind": "skill_level", "issued_on": "2026-03-25",
    }
    assert passed["data"]["person_id"] == b.pid(nid) and passed["data"]["enrollment_ref"] is None
    for event in (passed, issued):
        assert event["subject"] == b.pid(nid)
        assert event["agencyid"] == "suqian"
        assert event["time"] == TIME
        assert event["traceparent"] == TRACEPARENT
        assert event["source"] == "/services/assessment"
        assert nid not in orjson.dumps(event).decode()
    conn = await assessment.db()
    try:
        for table in ("assessment", "certificate", "pending", "enrollment"):
            rows = await conn.fetch(f"SELECT * FROM {table}")  # noqa: S608 - fixed names
            assert nid not in str([dict(r) for r in rows])
    finally:
        await conn.close()


async def test_a_failed_assessment_publishes_assessment_failed_and_no_certificate(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    await send_result(producer, result(aref, nid, passed=False))
    [failed] = await collector.wait_events(OUT, "AssessmentFailed.v1", where=about(aref))
    assert failed["id"] == f"assessment-failed/{aref}"
    assert failed["data"]["person_id"] == b.pid(nid)
    await drain(producer, collector, aref)
    assert [e["type"] for e in collector.events(OUT, "", about(aref))] == [failed["type"]]
    assert assessment.ready()


async def test_the_same_record_delivered_twice_has_one_effect(assessment, producer, collector) -> None:
    aref, nid = a_ref(), b.national_id()
    data = result(aref, nid)
    await send_result(producer, data, id="same-id")
    await send_result(producer, data, id="same-id")
    await drain(producer, collector, aref)
    assert len(collector.events(OUT, "", about(aref))) == 2  # one AssessmentPassed, one certificate


async def test_the_same_assessment_under_a_new_id_with_the_same_content_has_no_effect(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    await send_result(producer, result(aref, nid))
    await send_result(producer, result(aref, nid))
    await drain(producer, collector, aref)
    assert len(collector.events(OUT, "", about(aref))) == 2
    assert not dead(collector, "conflicting_duplicate", "assessment_ref", aref)


async def test_the_same_assessment_with_different_content_is_a_conflicting_duplicate_and_the_first_stands(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    await send_result(producer, result(aref, nid))
    await send_result(producer, result(aref, nid, passed=False))
    [letter] = await wait_dead(collector, "conflicting_duplicate", "assessment_ref", aref)
    assert nid not in str(letter.headers)
    await drain(producer, collector, aref)
    assert [e["type"].split(".")[-2] for e in collector.events(OUT, "", about(aref))] == [
        "AssessmentPassed", "CertificateIssued"]


@pytest.mark.parametrize(("code", "over"), [
    ("level_required", {"certificate_kind": "qualification", "level": None}),
    ("invalid_national_id", {"national_id": "321302199001011235"}),
])
async def test_an_invalid_result_goes_to_the_dlq_with_its_code(
    assessment, producer, collector, code: str, over: dict[str, Any]
) -> None:
    aref = a_ref()
    await send_result(producer, result(aref, b.national_id(), **over))
    [letter] = await wait_dead(collector, code, "assessment_ref", aref)
    assert letter.headers["original-topic"] == collector.prefix + UP
    assert letter.headers["error-detail"]
    assert "321302" not in letter.headers["error-detail"]
    await drain(producer, collector, aref)
    assert collector.events(OUT, "", about(aref)) == []


@pytest.mark.parametrize("level", [None, "junior"])
async def test_an_unlevelled_certificate_is_issued_without_a_level_whatever_level_was_sent(
    assessment, producer, collector, level: str | None
) -> None:
    """POLICY.md §5 "Certificate levels": a level sent on a level-less kind is ignored."""
    aref = a_ref()
    sent = await send_result(producer, result(aref, b.national_id(), certificate_kind="special_operation",
                                              level=level, occupation_code="6-29-03-01"))
    [passed] = await collector.wait_events(OUT, "AssessmentPassed.v1", where=about(aref))
    [issued] = await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    assert passed["data"]["level"] is None and issued["data"]["level"] is None
    assert issued["data"]["certificate_kind"] == "special_operation"
    assert sent not in collector.dead_letter_codes(DLQ)


# ---- order tolerance ------------------------------------------------------------------------------


async def test_a_result_before_its_enrollment_is_published_when_the_enrollment_arrives(
    assessment, producer, collector
) -> None:
    aref, eref, nid = a_ref(), b.ref(), b.national_id()
    await send_result(producer, result(aref, nid, enrollment_ref=eref))
    await drain(producer, collector, aref)
    assert collector.events(OUT, "", about(aref)) == []
    await send_enrollment(producer, eref, nid)
    await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    passed, issued = collector.events(OUT, "", about(aref))
    # Exactly what the natural order gives: ids, envelope and payload of the result's own record.
    assert passed["id"] == f"assessment-passed/{aref}"
    assert passed["time"] == TIME and passed["subject"] == b.pid(nid)
    assert passed["data"]["enrollment_ref"] == eref
    assert issued["data"]["certificate_id"] == certificate_id(aref)
    assert issued["data"]["enrollment_ref"] == eref


async def test_a_result_for_a_known_enrollment_is_published_at_once(assessment, producer, collector) -> None:
    aref, eref, nid = a_ref(), b.ref(), b.national_id()
    await send_enrollment(producer, eref, nid)
    conn = await assessment.db()
    try:
        await wait_for(lambda: conn.fetchval("SELECT 1 FROM enrollment WHERE enrollment_ref = $1", eref),
                       30, "the enrollment to be stored")
    finally:
        await conn.close()
    await send_result(producer, result(aref, nid, enrollment_ref=eref))
    [issued] = await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    assert issued["data"]["enrollment_ref"] == eref


async def test_a_result_whose_enrollment_never_arrives_is_dead_lettered_unknown_reference(
    assessment, producer, collector
) -> None:
    aref = a_ref()
    await send_result(producer, result(aref, b.national_id(), enrollment_ref=b.ref()))
    [letter] = await wait_dead(collector, "unknown_reference", "assessment_ref", aref)
    assert letter.headers["error-detail"].startswith("enrollment ")
    assert collector.events(OUT, "", about(aref)) == []


# ---- revocation -----------------------------------------------------------------------------------


async def test_a_revoked_certificate_is_revoked_once(assessment, producer, collector) -> None:
    aref, nid = a_ref(), b.national_id()
    cert = certificate_id(aref)
    await send_result(producer, result(aref, nid))
    await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    await send_revocation(producer, cert)
    await send_revocation(producer, cert, on="2026-07-01", reason="again")
    [revoked] = await collector.wait_events(OUT, "CertificateRevoked.v1", where=of_certificate(cert))
    assert revoked["id"] == f"certificate-revoked/{cert}"
    assert revoked["subject"] == b.pid(nid)
    assert revoked["data"] == {"certificate_id": cert, "person_id": b.pid(nid),
                               "revoked_on": "2026-06-01", "reason": "fraud: attendance falsified"}
    await drain(producer, collector, cert)
    assert len(collector.events(OUT, "CertificateRevoked.v1", of_certificate(cert))) == 1


async def test_a_revocation_before_the_certificate_waits_and_then_applies(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    cert = certificate_id(aref)
    await send_revocation(producer, cert)
    await drain(producer, collector, cert)
    assert collector.events(OUT, "", of_certificate(cert)) == []
    await send_result(producer, result(aref, nid))
    await collector.wait_events(OUT, "CertificateRevoked.v1", where=of_certificate(cert))
    assert [e["type"].split(".")[-2] for e in collector.events(OUT, "", of_certificate(cert))] == [
        "CertificateIssued", "CertificateRevoked"]
    assert not dead(collector, "unknown_reference", "certificate_id", cert)


async def test_a_revocation_of_an_unknown_certificate_is_dead_lettered_after_the_wait(
    assessment, producer, collector
) -> None:
    cert = certificate_id(a_ref())
    await send_revocation(producer, cert)
    [letter] = await wait_dead(collector, "unknown_reference", "certificate_id", cert)
    assert letter.headers["error-detail"].startswith("certificate ")
    assert collector.events(OUT, "", of_certificate(cert)) == []


# ---- verification API -------------------------------------------------------------------------------


async def test_the_verification_api_shows_valid_then_revoked_and_no_personal_data(
    assessment, producer, collector
) -> None:
    aref, nid = a_ref(), b.national_id()
    cert = certificate_id(aref)
    await send_result(producer, result(aref, nid))
    await collector.wait_events(OUT, "CertificateIssued.v1", where=about(aref))
    valid = await wait_for(lambda: _get(assessment, f"/certificates/{cert}"), 10, "the certificate")
    assert valid == {"certificate_id": cert, "status": "valid", "certificate_kind": "skill_level",
                     "occupation_code": "6-31-01-03", "level": "intermediate",
                     "issued_on": "2026-03-25", "revoked_on": None}
    await send_revocation(producer, cert)
    await collector.wait_events(OUT, "CertificateRevoked.v1", where=of_certificate(cert))
    revoked = await wait_for(
        lambda: (r := _get(assessment, f"/certificates/{cert}")) and r["status"] == "revoked" and r,
        10, "the revocation")
    assert revoked["revoked_on"] == "2026-06-01"
    assert "person_id" not in revoked and b.pid(nid) not in str(revoked) and nid not in str(revoked)
    mine = assessment.get(f"/persons/{b.pid(nid)}/certificates")
    assert [c["certificate_id"] for c in mine["certificates"]] == [cert]
    assert _get(assessment, "/certificates/CERT-00000000000000000000") is None


def _get(service: ServiceProcess, path: str) -> Any:
    import urllib.error

    try:
        return service.get(path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


# ---- replay determinism ------------------------------------------------------------------------------


async def test_a_fresh_deployment_replaying_the_input_in_another_order_publishes_the_same_events() -> None:
    """Certificate ids and every output event depend on the input alone, not on the run or order."""
    nid, eref = b.national_id(), b.ref()
    passed_ref, failed_ref = a_ref(), a_ref()
    cert = certificate_id(passed_ref)
    records = [
        ("enrollment", lambda p: send_enrollment(p, eref, nid)),
        ("passed", lambda p: send_result(p, result(passed_ref, nid, enrollment_ref=eref), id="r-1")),
        ("failed", lambda p: send_result(p, result(failed_ref, nid, passed=False), id="r-2")),
        ("revoked", lambda p: send_revocation(p, cert, id="v-1")),
    ]
    natural = await _run_world(records)
    reversed_order = await _run_world(list(reversed(records)))
    assert natural == reversed_order
    assert {e["data"].get("certificate_id") for e in natural} >= {cert}


async def _run_world(records: list[tuple[str, Callable[[Producer], Any]]]) -> list[dict[str, Any]]:
    world = Stack()
    await world.create_topics()
    service = ServiceProcess("assessment", world).start()
    try:
        await service.wait_ready()
        async with Producer(world) as producer, Collector(world, [OUT]) as collector:
            for _, send_one in records:
                await send_one(producer)
            await collector.wait_events(OUT, "CertificateRevoked.v1")
            await collector.wait_events(OUT, "AssessmentFailed.v1")
            events = collector.events(OUT)
    finally:
        service.stop()
        await world.drop()
    keep = ("id", "source", "type", "time", "subject", "agencyid", "data")
    return sorted(({k: e.get(k) for k in keep} for e in events), key=lambda e: e["id"])
