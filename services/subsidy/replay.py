"""Offline reference run: apply facts in order through the engine, for comparing with the pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .domain import BudgetLedger, Fact, Output, PersonState, decide
from .policy import PolicySet


@dataclass
class Replay:
    """The outcome of a replay: every output in decision order, final states and ledger."""

    outputs: list[Output] = field(default_factory=list)
    states: dict[str, PersonState] = field(default_factory=dict)
    budgets: BudgetLedger = field(default_factory=BudgetLedger)


def replay(
    policies: PolicySet,
    facts: Iterable[Fact],
    *,
    states: dict[str, PersonState] | None = None,
    budgets: BudgetLedger | None = None,
) -> Replay:
    """Decide every fact in the given order, each against its person's state."""
    result = Replay(states=dict(states or {}), budgets=budgets or BudgetLedger())
    for fact in facts:
        state = result.states.get(fact.person_id) or PersonState.empty(fact.person_id)
        result.states[fact.person_id], outputs = decide(policies, state, fact, result.budgets)
        result.outputs.extend(outputs)
    return result
