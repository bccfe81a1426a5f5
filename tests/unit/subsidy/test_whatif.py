"""What-if runs and corrections on recorded states: the fact log replays to the same state, a
draft's differences are reported exactly, and a correction pays each difference once."""

from __future__ import annotations

import copy
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.subsidy import contract, state_codec
from services.subsidy.corrections import GRANTED, PUBLISHED, REVERSED, Correction, correct_person
from services.subsidy.engine.domain import BudgetLedger, PersonState
from services.subsidy.engine.policy import Policy
from services.subsidy.engine.replay import compare, replay, replay_person, unlogged
from services.subsidy.policy_files import load_policy_file
from services.subsidy.whatif import Scope, WhatIf

from .test_properties import _script, courses
from .world import DEFAULT_POLICIES, POLICY_DIR, STAND_IN, World, employer

DRAFT = POLICY_DIR / "drafts" / "suqian-living-40.json"
YEAR_2026 = Scope("suqian", date(2026, 1, 1), date(2026, 12, 31))


def _draft(tmp_path: Path, change: Any) -> Policy:
    raw = json.loads((POLICY_DIR / "suqian.json").read_text())
    raw["version"] = "2026-draft"
    change(raw)
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(raw))
    return load_policy_file(path)


def _rule(raw: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in raw["rules"] if r["id"] == rule_id)


def _population() -> World:
    """Suqian trainees with and without a living allowance, one in 2025, one Beijing trainee."""
    w = World()
    for person, days in (("p_1", 10), ("p_2", 5)):
        ref = w.enroll("suqian", person=person, categories=("low_income",))
        w.complete(ref, days=days)
    w.complete(w.enroll("suqian", person="p_3", categories=("veteran",)))
    old = w.enroll("suqian", person="p_4", categories=("low_income",), start="2025-03-01",
                   accepted_on="2025-03-01")
    w.complete(old, on="2025-03-20")
    w.complete(w.enroll("beijing", person="p_5", categories=("low_income",)))
    return w


@settings(max_examples=60, deadline=None)
@given(st.lists(courses, min_size=1, max_size=6))
def test_every_recorded_person_replays_from_its_fact_log_to_the_same_state(
        population: list[Any]) -> None:
    recorded = replay(DEFAULT_POLICIES, _script(population))
    for state in recorded.states.values():
        stored = state_codec.from_builtins(json.loads(json.dumps(state_codec.to_builtins(state))))
        again = replay_person(DEFAULT_POLICIES, stored, copy.deepcopy(recorded.budgets))
        assert state_codec.to_builtins(again) == state_codec.to_builtins(state)


def test_a_draft_raising_the_living_allowance_reports_exactly_the_affected_grants() -> None:
    w = _population()
    run = WhatIf(DEFAULT_POLICIES, load_policy_file(DRAFT), YEAR_2026, copy.deepcopy(w.budgets))
    for state in w.states.values():
        run.person(state)
    report = run.report()
    assert report["persons_replayed"] == 4 and report["baseline_mismatches"] == 0
    assert report["by_rule"] == [{
        "rule": "SQ-LIVING", "fund": "employment_subsidy", "changed": 2, "newly_granted": 0,
        "newly_rejected": 0, "grants": 2, "persons": 2, "paid_fen": 45000,
        "entitled_fen": 60000, "delta_fen": 15000}]
    assert report["total"]["delta_fen"] == 15000 and report["knock_on"] == []
    assert {s["person_id"] for s in report["samples"]} == {"p_1", "p_2"}
    sample = next(s for s in report["samples"] if s["person_id"] == "p_1")
    assert "30.00 CNY/day x 10" in sample["before"] and "40.00 CNY/day x 10" in sample["after"]


def test_a_draft_removing_a_group_reports_the_would_be_rejections(tmp_path: Path) -> None:
    def drop_low_income(raw: dict[str, Any]) -> None:
        rule = _rule(raw, "SQ-YGDX")
        rule["categories"] = [c for c in rule["categories"] if c != "low_income"]

    w = World()
    ref = w.enroll("suqian", categories=("low_income",), training_type="work_for_training",
                   level=None, employer=employer())
    w.month(ref, "2026-04", 1)
    w.month(ref, "2026-05", 2)
    kept = w.enroll("suqian", person="p_2", categories=("poor_labor",),
                    training_type="work_for_training", level=None, employer=employer())
    w.month(kept, "2026-04", 1)
    run = WhatIf(DEFAULT_POLICIES, _draft(tmp_path, drop_low_income), YEAR_2026)
    for state in w.states.values():
        run.person(state)
    report = run.report()
    assert [(r["rule"], r["newly_rejected"], r["persons"], r["delta_fen"])
            for r in report["by_rule"]] == [("SQ-YGDX", 2, 1, -30000)]
    assert report["newly_rejected_by_reason"] == {"ineligible_category": 2}
    assert all("rejected: ineligible_category" in s["after"] for s in report["samples"])


def test_a_draft_changes_nothing_outside_its_period_or_agency() -> None:
    w = _population()
    run = WhatIf(DEFAULT_POLICIES, load_policy_file(DRAFT),
                 Scope("suqian", date(2026, 4, 1), date(2026, 12, 31)))
    for state in w.states.values():
        run.person(state)
    assert run.report()["by_rule"] == []


def _published_as_is(correction: Correction) -> None:
    """A correction is published as its contract model (Outbox.publish): the model's JSON is
    the correction's payload, field for field and in order (a given null kept)."""
    payload = {**correction.payload, "person_id": STAND_IN}  # the contract's form of p_1
    model = PUBLISHED[correction.event_type].model_validate(payload)
    assert list(model.model_dump(mode="json").items()) == list(payload.items())


def test_a_never_made_grant_is_published_with_a_null_corrects_grant_id() -> None:
    payload = {**contract.data(_population().state("p_1").grant_log[0].event),
               "person_id": STAND_IN, "corrects_grant_id": None,
               "correction": {"policy": {"agency": "suqian", "version": "v", "hash": "h"},
                              "period": {"from": "2026-01-01", "to": "2026-12-31"},
                              "paid_fen": 0, "entitled_fen": 30000}}
    dumped = PUBLISHED[GRANTED].model_validate(payload).model_dump(mode="json")
    assert list(dumped.items()) == list(payload.items()) and dumped["corrects_grant_id"] is None


def test_a_correction_tops_up_exactly_the_difference_and_a_second_pass_finds_nothing() -> None:
    w = _population()
    draft = load_policy_file(DRAFT)
    scenario = DEFAULT_POLICIES.with_version(draft, YEAR_2026.start, YEAR_2026.end)
    state = state_codec.from_builtins(state_codec.to_builtins(w.state("p_1")))
    (grant,) = state.grant_log
    first = correct_person(state, replay_person(scenario, state, BudgetLedger()), draft, YEAR_2026)
    (topup,) = first.corrections
    assert topup.event_type == GRANTED
    assert topup.payload["amount_fen"] == 10000
    assert topup.payload["corrects_grant_id"] == grant.grant_id
    assert topup.payload["grant_id"] != grant.grant_id
    assert topup.payload["correction"]["paid_fen"] == 30000
    assert topup.payload["correction"]["entitled_fen"] == 40000
    _published_as_is(topup)
    assert state.grant(grant.grant_id).event.amount_fen == 40000
    again = correct_person(state, replay_person(scenario, state, BudgetLedger()), draft, YEAR_2026)
    assert again.corrections == [] and again.held == []


def test_a_correction_lowering_an_amount_takes_back_only_the_difference(tmp_path: Path) -> None:
    lower = _draft(tmp_path, lambda raw: _rule(raw, "SQ-LIVING").update(amount=2000))
    scenario = DEFAULT_POLICIES.with_version(lower, YEAR_2026.start, YEAR_2026.end)
    state = state_codec.from_builtins(state_codec.to_builtins(_population().state("p_1")))
    (grant,) = state.grant_log
    (reversal,) = correct_person(state, replay_person(scenario, state, BudgetLedger()), lower,
                                 YEAR_2026).corrections
    assert reversal.event_type == REVERSED
    assert (reversal.payload["grant_id"], reversal.payload["amount_fen"],
            reversal.payload["reason"]) == (grant.grant_id, 10000, "policy_correction")
    _published_as_is(reversal)
    kept = state.grant(grant.grant_id)
    assert kept.live and kept.event.amount_fen == 20000
    assert compare(state, replay_person(scenario, state, BudgetLedger())) == []


def test_a_state_decided_partly_before_the_fact_log_is_counted_not_replayed() -> None:
    w = _population()
    legacy = state_codec.from_builtins(state_codec.to_builtins(w.state("p_1")))
    legacy.fact_log = legacy.fact_log[1:]
    run = WhatIf(DEFAULT_POLICIES, load_policy_file(DRAFT), YEAR_2026)
    assert run.person(legacy) == []
    assert (run.persons_unlogged, run.persons_replayed) == (1, 0)


def _complete_log_world() -> PersonState:
    """One person with every kind of logged fact: acceptance, completion, withdrawal, months,
    an issued and a revoked certificate, and a revocation still waiting for its certificate."""
    w = World()
    done = w.enroll("suqian", categories=("low_income",))
    w.complete(done)
    w.certify(done)
    w.revoke(w.last_certificate)
    work = w.enroll("suqian", training_type="work_for_training", level=None,
                    categories=("poor_labor",), employer={"id": "EMP-1", "insured": True,
                                                          "hardship_certified": False,
                                                          "sector": None,
                                                          "employee_model_domestic": False})
    w.month(work, "2026-04", 1)
    w.month(work, "2026-05", 2)
    w.withdraw(w.enroll("suqian", start="2026-05-01", end="2026-05-20"))
    w.revoke("CERT-NOT-YET")
    return w.state()


@pytest.mark.parametrize("code", ["a", "c", "w", "m", "i", "r"])
def test_a_fact_log_missing_any_kind_of_fact_is_refused_by_what_if(code: str) -> None:
    state = _complete_log_world()
    assert not unlogged(state), "the complete log is replayable"
    kinds = [entry[0] for entry in state.fact_log]
    assert code in kinds
    for drop in (kinds.index(code), len(kinds) - 1 - kinds[::-1].index(code)):
        gap = state_codec.from_builtins(state_codec.to_builtins(state))
        del gap.fact_log[drop]
        assert unlogged(gap), f"a log without {state.fact_log[drop]} has a gap"
