"""Facts parse from the contract payloads; state and ledger round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from services.subsidy.engine.domain import BudgetLedger, FactError, PersonState, fact_from_event
from services.subsidy.engine.facts import EnrollmentAccepted
from services.subsidy.engine.outputs import SubsidyGranted

from .world import ENR, World, employer


def test_enrollment_accepted_fills_missing_optionals_with_zero_and_false() -> None:
    data = {
        "enrollment_ref": "E1", "person_id": "p_1", "institution_id": "I", "categories": [],
        "employer": {"id": "X"}, "fee": {"amount_fen": 1, "payer": "person"},
        "accepted_on": "2026-03-01",
        "course": {"course_id": "C", "occupation_code": "O", "occupation_name": "n",
                   "level": None, "training_type": "pre_job", "planned_hours": 8,
                   "start_date": "2026-03-01", "end_date": "2026-03-02"},
    }
    fact = fact_from_event(ENR + "EnrollmentAccepted.v1", data, "suqian", "2026-03-01T09:00:00Z")
    assert isinstance(fact, EnrollmentAccepted)
    assert (fact.insured_months, fact.rural, fact.hired_on) == (0, False, None)
    assert fact.employer is not None and not fact.employer.insured
    assert not fact.course.project_based and fact.agency == "suqian"


def test_rejected_enrollments_are_ignored_and_unknown_types_refused() -> None:
    assert fact_from_event(ENR + "EnrollmentRejected.v1", {}, "suqian", "") is None
    with pytest.raises(FactError):
        fact_from_event("skills.enrollment.Nope.v1", {}, "suqian", "")
    with pytest.raises(FactError):
        fact_from_event(ENR + "TrainingCompleted.v1", {"person_id": "p"}, "suqian", "")


def test_state_and_ledger_round_trip_losslessly_through_json() -> None:
    w = World()
    ref = w.enroll("baoshan", categories=("poor_labor",), training_type="pre_job", level=None,
                   project_based=True, payer="institution", employer=employer())
    w.certify(ref, kind="training_completion", level=None)
    w.complete(ref)
    w.revoke("CERT-UNKNOWN")
    state = w.state()
    raw = json.loads(json.dumps(state.to_json()))
    assert PersonState.from_json(raw) == state
    ledger = json.loads(json.dumps(w.budgets.to_json()))
    assert BudgetLedger.from_json(ledger) == w.budgets


def test_grant_payload_has_exactly_the_contract_fields_and_a_deterministic_id() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("poor_labor",))
    (grant,) = w.complete(ref)
    assert isinstance(grant, SubsidyGranted)
    payload = grant.to_payload()
    assert set(payload) == {"grant_id", "person_id", "agency", "subsidy_type", "stage",
                            "amount_fen", "payee", "fund", "policy", "rule", "basis",
                            "explanation"}
    assert set(payload["basis"]) == {"enrollment_ref", "certificate_id", "assessment_ref",
                                     "days", "month", "year_index"}
    assert payload["policy"]["agency"] == "suqian" and payload["policy"]["version"] == "2020-01"
    assert grant.event_id == grant.grant_id and grant.grant_id.startswith("g_")
    assert len(grant.grant_id) == 26
    again = World()
    again.enroll("suqian", categories=("poor_labor",), ref=ref)
    assert again.complete(ref)[0].event_id == grant.event_id



def test_the_native_state_serialisation_equals_the_generic_one() -> None:
    import orjson

    from .world import World, employer

    w = World()
    ref = w.enroll("beijing", categories=("enterprise_employee",), insured_months=14,
                   employer=employer(hardship=True), level="senior", payer="employer")
    w.complete(ref)
    w.certify(ref, kind="qualification")
    w.enroll("suqian", categories=("low_income",), rural=True, ref="S/1")
    state = w.state()
    assert state.grant_log and state.fact_log
    assert state.to_json_text() == orjson.dumps(state.to_json()).decode()
    assert type(state).from_json(orjson.loads(state.to_json_text())).to_json() == state.to_json()
    assert type(state).from_json_text(state.to_json_text()) == state
