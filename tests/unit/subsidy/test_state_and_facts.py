"""Facts are read from the contract's validated models; state and ledger round-trip through
the one serialiser (services.subsidy.state_codec)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from shared.contract import events as ev
from services.subsidy import contract, state_codec
from services.subsidy.contract import FactError, fact_from_model
from services.subsidy.engine.domain import BudgetLedger
from services.subsidy.engine.facts import EnrollmentAccepted
from services.subsidy.engine.outputs import SubsidyGranted

from .world import World, employer


def test_enrollment_accepted_fills_missing_optionals_with_zero_and_false() -> None:
    data = {
        "enrollment_ref": "E1", "person_id": "p_" + "1" * 32, "institution_id": "I", "categories": [],
        "employer": {"id": "X"}, "fee": {"amount_fen": 1, "payer": "person"},
        "accepted_on": "2026-03-01",
        "course": {"course_id": "C", "occupation_code": "O", "occupation_name": "n",
                   "level": None, "training_type": "pre_job", "planned_hours": 8,
                   "start_date": "2026-03-01", "end_date": "2026-03-02"},
    }
    fact = fact_from_model(ev.EnrollmentAccepted.model_validate(data), "suqian",
                           dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC))
    assert isinstance(fact, EnrollmentAccepted)
    assert (fact.insured_months, fact.rural, fact.hired_on) == (0, False, None)
    assert fact.employer is not None and not fact.employer.insured
    assert not fact.course.project_based and fact.agency == "suqian"


def test_rejected_enrollments_are_ignored_and_payloads_without_a_fact_refused() -> None:
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    rejected = ev.EnrollmentRejected(enrollment_ref="E1", reason="invalid_national_id")
    assert fact_from_model(rejected, "suqian", at) is None
    with pytest.raises(FactError):
        fact_from_model(ev.Fee(amount_fen=1, payer="person"), "suqian", at)


def test_state_and_ledger_round_trip_losslessly_through_json() -> None:
    w = World()
    ref = w.enroll("baoshan", categories=("poor_labor",), training_type="pre_job", level=None,
                   project_based=True, payer="institution", employer=employer())
    w.certify(ref, kind="training_completion", level=None)
    w.complete(ref)
    w.revoke("CERT-UNKNOWN")
    state = w.state()
    raw = json.loads(json.dumps(state_codec.to_builtins(state)))
    assert state_codec.from_builtins(raw) == state
    assert state_codec.loads(state_codec.dumps(state)) == state
    ledger = json.loads(json.dumps(state_codec.to_builtins(w.budgets)))
    assert state_codec.from_builtins(ledger, BudgetLedger) == w.budgets


def test_grant_payload_has_exactly_the_contract_fields_and_a_deterministic_id() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("poor_labor",))
    (grant,) = w.complete(ref)
    assert isinstance(grant, SubsidyGranted)
    payload = contract.data(grant)
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



def test_the_stored_text_is_the_json_of_the_plain_values() -> None:
    w = World()
    ref = w.enroll("beijing", categories=("enterprise_employee",), insured_months=14,
                   employer=employer(hardship=True), level="senior", payer="employer")
    w.complete(ref)
    w.certify(ref, kind="qualification")
    w.enroll("suqian", categories=("low_income",), rural=True, ref="S/1")
    state = w.state()
    assert state.grant_log and state.fact_log
    text = state_codec.dumps(state)
    assert json.loads(text) == json.loads(json.dumps(state_codec.to_builtins(state)))
    assert state_codec.loads(text) == state
    assert state_codec.dumps(state_codec.loads(text)) == text
