"""The one adapter between the engine and the contract (services.subsidy.contract), and the
engine's boundary: it imports the standard library and the contract's vocabulary only."""

from __future__ import annotations

import ast
import datetime as dt
import sys
from pathlib import Path

import orjson
import pytest

from shared.contract import events as ev
from shared.contract import vocabulary
from services.subsidy import contract
from services.subsidy.engine import facts as f
from services.subsidy.engine.outputs import (
    BudgetThresholdReached,
    Output,
    SubsidyGranted,
    SubsidyHeld,
    SubsidyRejected,
    SubsidyReversed,
)
from services.subsidy.engine.state import BudgetLedger

from .world import World, employer

ROOT = Path(__file__).resolve().parents[3]
PID = "p_" + "ab" * 16
AT = dt.datetime(2026, 3, 20, 9, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "services/subsidy/engine").glob("*.py")),
                         ids=lambda p: p.name)
def test_the_engine_imports_the_standard_library_and_the_vocabulary_only(path: Path) -> None:
    foreign = {name for name in _imports(path)
               if name.split(".")[0] not in sys.stdlib_module_names
               and name != "shared.contract.vocabulary"}
    assert foreign == set()


def test_the_vocabulary_is_standard_library_only() -> None:
    path = ROOT / "shared/contract/vocabulary.py"
    assert {n for n in _imports(path) if n.split(".")[0] not in sys.stdlib_module_names} == set()


def _outputs() -> list[Output]:
    """Every kind of output the engine makes, for a person id the contract accepts."""
    w = World()
    ref = w.enroll("beijing", person=PID, insured_months=12, employer=employer(hardship=True))
    w.complete(ref)
    w.flag(ref)
    held = w.certify(ref, person=PID)  # SubsidyHeld: a certificate on a flagged enrollment
    base = next(o for o in held if isinstance(o, SubsidyHeld))
    w.review(base.grant.grant_id, "deny", person=PID)  # SubsidyRejected naming the grant
    other = w.enroll("beijing", person=PID, insured_months=24, occupation="B")
    w.complete(other)
    w.certify(other, person=PID)  # SubsidyGranted
    w.revoke(w.last_certificate, person=PID)  # SubsidyReversed
    third = w.enroll("beijing", person=PID, occupation="C")
    w.complete(third)
    w.certify(third, person=PID)  # SubsidyRejected: insufficient_insurance
    notices = BudgetLedger().commit("beijing", "employment", 2026, 80, 100)
    return [*w.outputs, *notices]


def test_every_output_kind_is_a_valid_contract_model_with_the_engines_json() -> None:
    outputs = _outputs()
    kinds = {type(o) for o in outputs}
    assert kinds == {SubsidyGranted, SubsidyHeld, SubsidyRejected, SubsidyReversed,
                     BudgetThresholdReached}
    assert any(isinstance(o, SubsidyRejected) and o.grant_id for o in outputs)
    assert any(isinstance(o, SubsidyRejected) and o.grant_id is None for o in outputs)
    for output in outputs:
        model = contract.payload(output)
        assert type(model) is contract.MODELS[type(output)]
        assert ev.TYPE_OF[type(model)] == output.event_type
        published = model.model_dump(mode="json")
        # Field for field, in order: the published JSON is the adapter's object.
        assert list(published.items()) == list(contract.data(output).items())
        assert type(model).model_validate(orjson.loads(orjson.dumps(published))) == model


def test_absent_additive_fields_are_left_out_and_present_ones_kept() -> None:
    notice = contract.data(BudgetThresholdReached("beijing", "employment", 2026, 100, 90, 9000))
    assert notice["threshold"] == 0.9 and notice["threshold_bp"] == 9000
    granted = next(o for o in _outputs() if isinstance(o, SubsidyGranted))
    dumped = contract.payload(granted).model_dump(mode="json")
    assert "corrects_grant_id" not in dumped and "correction" not in dumped
    corrected = ev.SubsidyGranted.model_validate({**dumped, "corrects_grant_id": "g_1"})
    assert corrected.model_dump(mode="json")["corrects_grant_id"] == "g_1"


def _accepted(**over: object) -> ev.EnrollmentAccepted:
    data = {
        "enrollment_ref": "E1", "person_id": PID, "institution_id": "I",
        "categories": ["low_income"], "employer": {"id": "X", "sector": "hitech"},
        "fee": {"amount_fen": 100, "payer": "employer"}, "accepted_on": "2026-03-01",
        "course": {"course_id": "C", "occupation_code": "O", "level": "junior",
                   "training_type": "apprenticeship", "planned_hours": 8, "program_years": 2,
                   "start_date": "2026-03-01", "end_date": "2026-03-02"},
    }
    return ev.EnrollmentAccepted.model_validate({**data, **over})


def test_facts_are_read_from_the_models_attributes() -> None:
    fact = contract.fact_from_model(_accepted(), "suqian", AT)
    assert isinstance(fact, f.EnrollmentAccepted)
    assert fact.categories == (vocabulary.Category.LOW_INCOME,)
    assert fact.course.training_type is vocabulary.TrainingType.APPRENTICESHIP
    assert fact.course.level is vocabulary.Level.JUNIOR and fact.course.program_years == 2
    assert fact.employer == f.Employer("X", sector=vocabulary.Sector.HITECH)
    assert fact.fee == f.Fee(100, vocabulary.PayeeKind.EMPLOYER)
    assert (fact.agency, fact.accepted_on, fact.rural, fact.insured_months) == (
        "suqian", dt.date(2026, 3, 1), False, 0)
    completed = ev.TrainingCompleted.model_validate({
        "enrollment_ref": "E1", "person_id": PID, "course": _accepted().course.model_dump(),
        "hours_attended": 79.5, "days_attended": 10, "attendance_rate": 0.99,
        "completed_on": "2026-03-02"})
    assert contract.fact_from_model(completed, "suqian", AT) == f.TrainingCompleted(
        "E1", PID, 79, 10, dt.date(2026, 3, 2))  # whole hours, rounded down


def test_a_review_keeps_the_instant_as_the_contract_writes_it() -> None:
    review = ev.HoldReviewed(grant_id="g_1", person_id=PID, agency="suqian", decision="deny",
                             reviewer="clerk", reviewed_at=AT)
    fact = contract.fact_from_model(review, "suqian", AT)
    assert isinstance(fact, f.HoldReviewed)
    assert fact.reviewed_at == ev.dump(review)["reviewed_at"] == "2026-03-20T09:00:00+08:00"
    assert fact.decision is vocabulary.ReviewDecision.DENY and fact.review_id == ""
