"""Properties over random populations: the annual limit, the occupation slot, redelivery and
certificate-before-completion all hold whatever the mix of agencies, courses and outcomes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.subsidy import contract, state_codec
from services.subsidy.engine.replay import replay

from .world import DEFAULT_POLICIES, World, employer


@dataclass(frozen=True)
class Course:
    person: str
    agency: str
    training_type: str
    occupation: str
    level: str
    project_based: bool
    categories: tuple[str, ...]
    employer: dict[str, Any] | None
    insured_months: int
    payer: str
    cert_kind: str
    month: int
    failed_first: bool
    withdrawn: bool
    revoked: bool
    work_months: int


courses = st.builds(
    Course,
    person=st.sampled_from(["p_1", "p_2"]),
    agency=st.sampled_from(["city-a", "suqian", "baoshan", "beijing"]),
    training_type=st.sampled_from(["skill_upgrade", "skill_upgrade", "pre_job",
                                   "special_operation", "apprenticeship", "work_for_training"]),
    occupation=st.sampled_from(["O1", "O2", "O3"]),
    level=st.sampled_from(["junior", "intermediate"]),
    project_based=st.booleans(),
    categories=st.lists(st.sampled_from(["poor_labor", "employment_difficulty", "veteran",
                                         "pension_eligible"]), max_size=2, unique=True).map(tuple),
    employer=st.one_of(st.none(), st.builds(employer, st.sampled_from(["E1", "E2"]),
                                            insured=st.booleans(), hardship=st.booleans())),
    insured_months=st.sampled_from([0, 24]),
    payer=st.sampled_from(["person", "employer", "institution"]),
    cert_kind=st.sampled_from(["skill_level", "qualification", "special_operation",
                               "training_completion"]),
    month=st.integers(1, 12),
    failed_first=st.booleans(),
    withdrawn=st.booleans(),
    revoked=st.booleans(),
    work_months=st.integers(0, 2),
)


def _script(population: list[Course], *, certificate_first: bool = False,
            with_outcomes: bool = True) -> list[Any]:
    """The facts of every course, one course after another, in natural (or swapped) order."""
    w = World(record_only=True)
    for i, c in enumerate(population):
        day = f"2026-{c.month:02d}-15"
        employer_ok = c.employer if c.payer != "employer" or c.employer else employer()
        ref = w.enroll(c.agency, person=c.person, ref=f"E{i}", categories=c.categories,
                       insured_months=c.insured_months, employer=employer_ok,
                       occupation=c.occupation, level=c.level, training_type=c.training_type,
                       project_based=c.project_based, program_years=2, payer=c.payer,
                       start="2026-01-01", accepted_on="2026-01-01")
        for m in range(1, c.work_months + 1):
            w.month(ref, f"2026-{m:02d}", m)
        if with_outcomes and c.withdrawn:
            w.withdraw(ref, on=day)
            continue
        if with_outcomes and c.failed_first:
            w.fail(ref, kind=c.cert_kind, on=day)
        steps = [lambda: w.complete(ref, on=day, days=5, hours=40),  # noqa: B023  # called in this iteration
                 lambda: w.certify(ref, kind=c.cert_kind, on=day, person=c.person)]  # noqa: B023  # as above
        for step in reversed(steps) if certificate_first else steps:
            step()
        if with_outcomes and c.revoked:
            w.revoke(w.last_certificate, person=c.person, on=day)
    return w.facts


@settings(max_examples=60, deadline=None)
@given(st.lists(courses, min_size=1, max_size=8))
def test_never_more_than_three_counted_grants_or_one_per_occupation_slot(
        population: list[Course]) -> None:
    result = replay(DEFAULT_POLICIES, _script(population))
    for state in result.states.values():
        live = state.live_grants()
        per_year = Counter(g.counted_year for g in live if g.counted_year is not None)
        assert all(n <= 3 for n in per_year.values())
        slots = Counter(g.slot for g in live if g.slot is not None)
        assert all(n == 1 for n in slots.values())
        certificate_keys = Counter(
            (g.event.rule, g.event.basis.enrollment_ref, g.event.basis.month,
             g.event.basis.year_index, g.event.stage) for g in live)
        assert all(n == 1 for n in certificate_keys.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(courses, min_size=1, max_size=6))
def test_redelivering_every_fact_changes_nothing(population: list[Course]) -> None:
    facts = _script(population)
    once = replay(DEFAULT_POLICIES, facts)
    twice = replay(DEFAULT_POLICIES, [f for fact in facts for f in (fact, fact)])
    assert [o.event_id for o in twice.outputs] == [o.event_id for o in once.outputs]
    assert {p: state_codec.to_builtins(s) for p, s in twice.states.items()} == {
        p: state_codec.to_builtins(s) for p, s in once.states.items()}
    assert twice.budgets == once.budgets


@settings(max_examples=60, deadline=None)
@given(st.lists(courses, min_size=1, max_size=6))
def test_a_certificate_before_its_completion_gives_the_natural_outcome(
        population: list[Course]) -> None:
    natural = replay(DEFAULT_POLICIES, _script(population, with_outcomes=False))
    swapped = replay(DEFAULT_POLICIES,
                     _script(population, certificate_first=True, with_outcomes=False))
    assert [o.event_id for o in swapped.outputs] == [o.event_id for o in natural.outputs]
    assert [contract.data(o) for o in swapped.outputs] == [contract.data(o) for o in natural.outputs]


@settings(max_examples=30, deadline=None)
@given(st.lists(courses, min_size=1, max_size=6))
def test_state_round_trips_through_json_at_every_step(population: list[Course]) -> None:
    result = replay(DEFAULT_POLICIES, _script(population))
    for state in result.states.values():
        assert state_codec.from_builtins(state_codec.to_builtins(state)) == state
