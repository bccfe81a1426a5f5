"""Batch handler of the subsidy service: load the batch's persons, decide with the engine, record.

Per Kafka batch, in one transaction: lock and load the state of every person in the batch, apply
each fact in order through the pure engine (services.subsidy.engine.domain) with the fund years it
reads locked (services.subsidy.budgets), then write the states, the decision ledger, the fund
years and the outgoing events with bulk statements; the loading and recording SQL is the
store's (services.subsidy.store, load -> decide -> record). The
engine is idempotent per fact and the inbox drops redeliveries, so a grant is never paid twice.
Reviews of held grants (skills.subsidy.reviews) are facts like the others (POLICY §6).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import asyncpg
import orjson

from shared.contract import topics
from shared.runtime.consumer import Handler, Incoming
from shared.runtime.outbox import Outbox
from services.subsidy import budgets, contract, holds, metrics, state_codec
from services.subsidy.config import SubsidySettings
from services.subsidy.contract import FactError
from services.subsidy.engine.domain import decide
from services.subsidy.engine.facts import Fact, HoldReviewed
from services.subsidy.engine.outputs import (
    Output,
    SubsidyGranted,
    SubsidyHeld,
    SubsidyRejected,
    SubsidyReversed,
)
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.state import BudgetLedger, PersonState
from services.subsidy.store import Changes, PostgresSubsidyStore, SubsidyStore

log = logging.getLogger(__name__)


def decision_row(output: Output, decided_on: dt.date, funds: dict[str, tuple[str, str]],
                 data: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
    """The ledger row of one output (None for budget notices, which are not decisions);
    ``data`` is the published payload's JSON object when the caller already has it."""
    payload = orjson.dumps(contract.data(output) if data is None else data).decode()
    if isinstance(output, SubsidyGranted):
        funds[output.grant_id] = (output.fund, output.payee_kind)
        return (output.event_id, "granted", output.person_id, output.agency, output.rule,
                output.stage.value, None, output.amount_fen, output.fund, output.payee_kind,
                output.grant_id, decided_on, payload)
    if isinstance(output, SubsidyHeld):
        # Nothing is paid on a hold: the ledger row carries no money (the payload has it).
        grant = output.grant
        funds[grant.grant_id] = (grant.fund, grant.payee_kind)
        return (output.event_id, "held", grant.person_id, grant.agency, grant.rule,
                grant.stage.value, None, 0, grant.fund, grant.payee_kind, grant.grant_id,
                decided_on, payload)
    if isinstance(output, SubsidyRejected):
        return (output.event_id, "rejected", output.person_id, output.agency, output.rule, None,
                output.reason.value, 0, None, None, None, decided_on, payload)
    if isinstance(output, SubsidyReversed):
        fund, payee_kind = funds.get(output.grant_id, (None, None))
        return (output.event_id, "reversed", output.person_id, output.agency, output.rule, None,
                output.reason.value, -output.amount_fen, fund, payee_kind, output.grant_id,
                decided_on, payload)
    return None


def count(output: Output) -> None:
    if isinstance(output, SubsidyGranted):
        metrics.GRANTS.labels(output.agency, output.rule, output.fund).inc()
        metrics.GRANTED_FEN.labels(output.agency, output.rule, output.fund).inc(output.amount_fen)
    elif isinstance(output, SubsidyHeld):
        metrics.HOLDS.labels(output.agency, output.grant.rule, output.grant.fund).inc()
    elif isinstance(output, SubsidyRejected):
        metrics.REJECTIONS.labels(output.agency, output.reason.value).inc()
    elif isinstance(output, SubsidyReversed):
        metrics.REVERSALS.labels(output.agency, output.reason.value).inc()
        metrics.REVERSED_FEN.labels(output.agency, output.reason.value).inc(output.amount_fen)


def make_handler(settings: SubsidySettings, policies: PolicySet,
                 store: SubsidyStore | None = None) -> Handler:
    """Load -> decide -> record, one batch in one transaction. ``store``: the unit of work
    (default: the service's PostgreSQL store; tests pass `store.MemorySubsidyStore`)."""
    budgeted = budgets.budgeted(policies)
    uow: SubsidyStore = store if store is not None else PostgresSubsidyStore()

    async def handle_batch(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        persons = sorted({p for i in items if (p := getattr(i.event.data, "person_id", None))})
        stored = await uow.load(conn, persons)
        facts: list[tuple[Incoming, Fact | None]] = []
        for item in items:
            event = item.event
            if event.type == holds.REVIEWED and event.source != holds.REVIEW_SOURCE:
                # Only the service's own review API decides holds (EVENTS.md §5.4).
                out.dead_letter(item.record, "untrusted_review",
                                f"HoldReviewed from {event.source[:100]}, not {holds.REVIEW_SOURCE}",
                                event.key)
                continue
            try:
                facts.append((item, contract.fact_of(event)))
            except FactError as exc:
                out.dead_letter(item.record, "schema_violation", str(exc))

        def run(ledger: BudgetLedger) -> tuple[dict[str, PersonState], list[tuple[Incoming, Output]]]:
            """The batch's decisions: pure, so they can be taken again against locked budgets."""
            states = {p: state_codec.loads(text) for p, text in stored.items()}
            touched: dict[str, PersonState] = {}
            decided: list[tuple[Incoming, Output]] = []
            for item, fact in facts:
                if fact is None:
                    continue
                state = states.get(fact.person_id) or PersonState.empty(fact.person_id)
                state, outputs = decide(policies, state, fact, ledger)
                states[fact.person_id] = touched[fact.person_id] = state
                decided += [(item, output) for output in outputs]
            return touched, decided

        (touched, decided), ledger, start = await uow.decide(conn, budgeted, run)
        rows: list[tuple[Any, ...]] = []
        funds: dict[str, tuple[str, str]] = {}
        hold_outputs: list[Output] = []
        released: list[str] = []
        reviews: list[HoldReviewed] = []
        facts_of = {id(item): fact for item, fact in facts}
        for item, output in decided:
            event = item.event
            fact = facts_of[id(item)]
            hold_outputs.append(output)
            if isinstance(fact, HoldReviewed) and isinstance(output, SubsidyGranted):
                released.append(output.grant_id)
            data = out.publish(
                topics.SUBSIDY_EVENTS, contract.payload(output),
                id=output.event_id, subject=output.key, agencyid=output.agency,
                time=event.time, traceparent=event.traceparent,
            )
            row = decision_row(output, event.time.date(), funds, data)
            if row is not None:
                rows.append(row)
            count(output)
        reviews += [f for _, f in facts if isinstance(f, HoldReviewed)]
        changed = await uow.record(conn, Changes(
            states=touched, decisions=rows, outputs=hold_outputs, released=released,
            reviews=reviews, ledger=ledger, start=start,
        ))
        if changed.funds:
            publish_budget_gauges(changed, policies)

    return handle_batch


def publish_budget_gauges(ledger: BudgetLedger, policies: PolicySet) -> None:
    for key, entry in ledger.funds.items():
        agency, fund, year = key.split("|")
        metrics.BUDGET_COMMITTED.labels(agency, fund, year).set(entry.committed_fen)
        policy = policies.for_date(agency, dt.date(int(year), 12, 31))
        budget = policy.budget_fen(fund, int(year)) if policy is not None else None
        if budget is not None:
            metrics.BUDGET_REMAINING.labels(agency, fund, year).set(budget - entry.committed_fen)

