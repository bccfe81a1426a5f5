"""The assessment handler (load -> decide -> record) on the in-memory store: fast, no database.

The same store contract holds for PostgreSQL (tests/integration/test_store_contract.py); the
expected events follow EVENTS.md §4.2/§5.2 and POLICY.md §5 by hand.
"""

from __future__ import annotations

from typing import Any

from shared.contract import topics
from shared.runtime.outbox import Outbox
from services.assessment.config import AssessmentSettings
from services.assessment.domain import certificate_id
from services.assessment.handlers import ACCEPTED, RESULT, REVOKED, make_handler
from services.assessment.store import MemoryAssessmentStore
from tests import builders as b
from tests.harness import SECRET
from tests.uow import dead, incoming, published

SETTINGS = AssessmentSettings(PERSON_ID_SECRET=SECRET, ENVIRONMENT="development")  # type: ignore[call-arg]  # by alias, as the environment sets it


def accepted(ref: str, nid: str) -> Any:
    data = b.enrolled(ref, nid)
    trainee = data.pop("trainee")
    data.update(person_id=b.pid(nid), categories=trainee["categories"], rural=trainee["rural"],
                hukou_agency=trainee["hukou_agency"], insured_months=trainee["insured_months"],
                hired_on=trainee["hired_on"], accepted_on="2026-03-01")
    return incoming(topics.ENROLLMENT_EVENTS, ACCEPTED, data, subject=b.pid(nid))


def result(aref: str, nid: str, enrollment_ref: str | None, *, passed: bool = True,
           level: str | None = "intermediate", kind: str = "skill_level") -> Any:
    data = {"assessment_ref": aref, "evaluator_id": "EVAL-1", "national_id": nid,
            "enrollment_ref": enrollment_ref, "occupation_code": "6-31-01-03", "level": level,
            "certificate_kind": kind, "passed": passed, "theory_score": 80.0,
            "practical_score": 75.5, "assessed_on": "2026-03-25"}
    return incoming(topics.ASSESSMENT_UPSTREAM, RESULT, data, subject=aref)


def revoked(cid: str) -> Any:
    return incoming(topics.ASSESSMENT_UPSTREAM, REVOKED,
                    {"certificate_id": cid, "revoked_on": "2026-04-01", "reason": "fraud"},
                    subject=cid)


async def run(store: MemoryAssessmentStore, items: list[Any]) -> Outbox:
    out = Outbox(source="/services/assessment", dlq_topic="dlq")
    await make_handler(SETTINGS, store)(None, items, out)  # type: ignore[arg-type]  # the in-memory store takes no connection
    return out


def ids(out: Outbox) -> list[str]:
    return [e["id"] for e in published(out)]


async def test_a_result_and_a_revocation_wait_for_the_enrollment_then_decide_in_order() -> None:
    store = MemoryAssessmentStore()
    nid, ref, aref = b.national_id(), b.ref(), b.ref("ASM")
    cid = certificate_id(aref)
    first = await run(store, [result(aref, nid, ref)])
    second = await run(store, [revoked(cid)])  # the certificate is not issued yet: waits too
    assert published(first) == published(second) == []
    assert sorted(p[1] for p in store.pending) == sorted([f"enrollment:{ref}", f"certificate:{cid}"])
    assert store.assessments[aref].status == "waiting"
    third = await run(store, [accepted(ref, nid)])
    assert ids(third) == [f"assessment-passed/{aref}", f"certificate-issued/{cid}",
                          f"certificate-revoked/{cid}"]
    issued = published(third)[1]["data"]
    assert (issued["person_id"], issued["level"], issued["issued_on"]) == (
        b.pid(nid), "intermediate", "2026-03-25")
    assert store.pending == []
    assert store.assessments[aref].status == "decided"
    assert store.certificates[cid].status == "revoked"


async def test_repeats_conflicts_and_refusals() -> None:
    store = MemoryAssessmentStore()
    nid, aref, failed = b.national_id(), b.ref("ASM"), b.ref("ASM")
    out = await run(store, [
        result(aref, nid, None),
        result(aref, nid, None),  # the same content under a new event id: no effect
        result(failed, nid, None, passed=False, level=None, kind="special_operation"),
    ])
    assert ids(out) == [f"assessment-passed/{aref}", f"certificate-issued/{certificate_id(aref)}",
                        f"assessment-failed/{failed}"]
    later = await run(store, [
        result(aref, nid, None, passed=False),  # different content: the first result stands
        result(b.ref("ASM"), nid, None, level=None),  # skill_level needs a level
        result(b.ref("ASM"), "123", None),
        revoked(certificate_id(aref)),
        revoked(certificate_id(aref)),  # a second revocation has no second effect
    ])
    assert ids(later) == [f"certificate-revoked/{certificate_id(aref)}"]
    assert [code for code, _ in dead(later)] == [
        "conflicting_duplicate", "level_required", "invalid_national_id"]
