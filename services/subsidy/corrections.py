"""Corrections: a corrected policy version for a past period, paid as differences, exactly once.

Usage::

    python -m services.subsidy.corrections --agency suqian --from 2026-01-01 --to 2026-12-31 \
        --policy FILE [--apply] [--database-url URL] [--policy-dir DIR] [--json]

Every person with an enrollment of the agency is decided afresh (as in a what-if) with the
corrected version in force for the agency and period. For each of the agency's grants with a
basis date in the period whose amount differs from what was paid, one event is published through
the service's outbox: a top-up `SubsidyGranted` for more, a (partial) `SubsidyReversed` for less
(docs/POLICY_OPERATIONS.md gives the exact representation). In the same transaction the person's
state takes the corrected grant, the decision ledger and the budget ledger take the difference,
and `policy_correction` records the event; so a second run finds nothing left to correct.
Without --apply nothing is written (a read-only transaction) and the report says what would be.
"""

from __future__ import annotations

import asyncio
import copy
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.vocabulary import RejectionReason
from shared.runtime import db
from shared.runtime.outbox import Outbox

from . import budgets, contract, state_codec
from .config import SubsidySettings
from .engine.cases import ANNUAL_LIMIT, annual_limit_reached, slot_held
from .engine.outputs import SUBSIDY, ReversalReason, digest
from .engine.policy import Policy, PolicyError, PolicySet
from .engine.replay import GrantChange, compare, replay_person, unlogged
from .engine.rules import cny
from .engine.state import BudgetLedger, Grant, PersonState
from .whatif import Scope, arguments, describe, load

CHUNK = 200
GRANTED = SUBSIDY + "SubsidyGranted.v1"
REVERSED = SUBSIDY + "SubsidyReversed.v1"
PUBLISHED: dict[str, type[ev.Payload]] = {GRANTED: ev.SubsidyGranted, REVERSED: ev.SubsidyReversed}
# A correction that lowers an entitlement takes the difference back as `policy_correction`
# (EVENTS.md §5.3, POLICY.md §6).
CORRECTION_REASON = ReversalReason.POLICY_CORRECTION
# Rejections that come from competing with another decision, not from the rules' amounts or
# groups: a correction never takes back a grant for these (decisions already taken stand).
COMPETITION = frozenset({RejectionReason.ANNUAL_LIMIT, RejectionReason.DUPLICATE_OCCUPATION_LEVEL,
                         RejectionReason.DUPLICATE_PROJECT, RejectionReason.NOT_STACKABLE,
                         RejectionReason.BUDGET_EXHAUSTED})


@dataclass(frozen=True)
class Correction:
    """One event a correction publishes, with the grant record the person's state takes."""

    change: GrantChange
    event_id: str
    event_type: str
    payload: dict[str, Any]
    state_grant: Grant

    @property
    def signed_fen(self) -> int:
        return self.change.delta_fen


@dataclass
class PersonCorrection:
    corrections: list[Correction] = field(default_factory=list)
    held: list[tuple[GrantChange, str]] = field(default_factory=list)
    knock_on: list[GrantChange] = field(default_factory=list)


def correction_of(version: Policy, scope: Scope, change: GrantChange) -> dict[str, Any]:
    return {
        "policy": {"agency": version.agency, "version": version.version,
                   "hash": version.content_hash},
        "period": {"from": scope.start.isoformat(), "to": scope.end.isoformat()},
        "paid_fen": change.paid_fen, "entitled_fen": change.entitled_fen,
    }


def _why(change: GrantChange) -> str:
    if change.replayed is not None and change.replayed.live:
        return change.replayed.event.explanation
    if change.replayed_rejection is not None:
        return change.replayed_rejection.explanation
    return "the corrected policy grants nothing here"


def _reduction(version: Policy, scope: Scope, change: GrantChange) -> Correction:
    recorded = change.recorded
    assert recorded is not None
    event = recorded.event
    taken = change.paid_fen - change.entitled_fen
    return Correction(
        change,
        "v_" + digest(event.grant_id, CORRECTION_REASON.value, "correction",
                      version.content_hash, change.paid_fen, change.entitled_fen)[:24],
        REVERSED,
        {
            "grant_id": event.grant_id, "person_id": event.person_id, "agency": event.agency,
            "amount_fen": taken, "reason": CORRECTION_REASON.value,
            "explanation": (
                f"{event.rule} {event.stage.value} grant {event.grant_id} corrected by "
                f"{version.agency} policy version {version.version} for {scope.start} to "
                f"{scope.end}: entitled {cny(change.entitled_fen)}, paid "
                f"{cny(change.paid_fen)}; {cny(taken)} ({taken} fen) taken back. Corrected "
                f"decision: {_why(change)}"),
            "rule": event.rule,
            "correction": correction_of(version, scope, change),
        },
        change.replayed or replace(recorded, live=False),
    )


def _increase(version: Policy, scope: Scope, change: GrantChange) -> Correction:
    replayed = change.replayed
    assert replayed is not None
    event = replayed.event
    payload = contract.data(event)
    correction = {"corrects_grant_id": None, "correction": correction_of(version, scope, change)}
    if change.recorded is None:
        # Never published: the grant goes out as the engine would have made it.
        return Correction(change, event.grant_id, GRANTED, {**payload, **correction}, replayed)
    extra = change.delta_fen
    grant_id = "g_" + digest(event.agency, event.rule, event.stage.value,
                             event.basis.to_payload(), "correction", event.grant_id,
                             version.content_hash, change.paid_fen, change.entitled_fen)[:24]
    payload.update(
        grant_id=grant_id, amount_fen=extra, corrects_grant_id=event.grant_id,
        correction=correction["correction"],
        explanation=(
            f"correction top-up of {event.rule} {event.stage.value} grant {event.grant_id}: "
            f"{cny(change.entitled_fen)} under {version.agency} policy version "
            f"{version.version} for {scope.start} to {scope.end}, {cny(change.paid_fen)} paid; "
            f"this grant pays the difference {cny(extra)} ({extra} fen). Corrected decision: "
            f"{event.explanation}"),
    )
    return Correction(change, grant_id, GRANTED, payload, replayed)


def correct_person(state: PersonState, replayed: PersonState, version: Policy,
                   scope: Scope) -> PersonCorrection:
    """Plan the person's corrections and apply them to `state` (pure: no I/O).

    Reductions first, then increases; a grant newly holding an annual-limit or occupation slot
    is paid only if the slot is still free next to the decisions already taken.
    """
    result = PersonCorrection()
    changes = compare(state, replayed)
    for change in sorted(changes, key=lambda c: c.delta_fen > 0):
        if not scope.covers(change):
            result.knock_on.append(change)
            continue
        if change.delta_fen < 0:
            reason = change.replayed_rejection.reason.value if change.replayed_rejection else ""
            if reason in COMPETITION:
                result.held.append((change, f"decided first; corrected rule rejects for {reason}"))
                continue
            correction = _reduction(version, scope, change)
        else:
            conflict = _slot_conflict(state, change)
            if conflict:
                result.held.append((change, conflict))
                continue
            correction = _increase(version, scope, change)
        if change.recorded is None:
            state.grant_log.append(correction.state_grant)
        else:
            state.put_grant(correction.state_grant)
        state.corrections.append({"id": correction.event_id, "type": correction.event_type,
                                  **correction.payload})
        result.corrections.append(correction)
    return result


def _slot_conflict(state: PersonState, change: GrantChange) -> str | None:
    grant = change.replayed
    assert grant is not None
    if grant.counted_year is None or (change.recorded is not None and change.recorded.live):
        return None
    live = [g for g in state.live_grants() if g.grant_id != grant.grant_id]
    if grant.slot is not None and slot_held(live, grant.slot):
        return f"occupation slot {grant.slot} is held by a grant decided first"
    if annual_limit_reached(live, grant.counted_year):
        return f"{ANNUAL_LIMIT} counted grants in {grant.counted_year} were decided first"
    return None


@dataclass
class Run:
    """Totals of one corrections run."""

    version: Policy
    scope: Scope
    applied: bool
    persons_replayed: int = 0
    persons_without_fact_log: int = 0
    persons_corrected: set[str] = field(default_factory=set)
    topups: int = 0
    topup_fen: int = 0
    new_grants: int = 0
    new_grant_fen: int = 0
    reversals: int = 0
    reversed_fen: int = 0
    held: Counter[str] = field(default_factory=Counter)
    knock_on: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, person: str, result: PersonCorrection) -> None:
        self.knock_on += len(result.knock_on)
        for change, why in result.held:
            self.held[f"{change.grant.event.rule}: {why.split(';')[0]}"] += 1
        for c in result.corrections:
            self.persons_corrected.add(person)
            if c.event_type == REVERSED:
                self.reversals += 1
                self.reversed_fen -= c.signed_fen
            elif c.change.recorded is None:
                self.new_grants += 1
                self.new_grant_fen += c.signed_fen
            else:
                self.topups += 1
                self.topup_fen += c.signed_fen
            self.events.append({"id": c.event_id, "type": c.event_type,
                                **describe(c.change), "amount_fen": c.payload["amount_fen"]})

    def report(self) -> dict[str, Any]:
        return {
            "agency": self.scope.agency, "from": self.scope.start.isoformat(),
            "to": self.scope.end.isoformat(), "applied": self.applied,
            "policy": {"source": self.version.source, "version": self.version.version,
                       "hash": self.version.content_hash},
            "persons_replayed": self.persons_replayed,
            "persons_without_fact_log": self.persons_without_fact_log,
            "persons_corrected": len(self.persons_corrected),
            "topups": self.topups, "topup_fen": self.topup_fen,
            "new_grants": self.new_grants, "new_grant_fen": self.new_grant_fen,
            "reversals": self.reversals, "reversed_fen": self.reversed_fen,
            "net_fen": self.topup_fen + self.new_grant_fen - self.reversed_fen,
            "held": dict(self.held), "knock_on_not_applied": self.knock_on,
            "events": self.events,
        }


def render(report: dict[str, Any]) -> str:
    verb = "published" if report["applied"] else "would publish (dry run: add --apply)"
    lines = [
        f"corrections {report['agency']} {report['from']} to {report['to']}: policy "
        f"{report['policy']['source']} version {report['policy']['version']} "
        f"(sha256 {report['policy']['hash'][:12]})",
        f"replayed {report['persons_replayed']} persons ({report['persons_without_fact_log']} "
        f"without a fact log, not corrected); {report['persons_corrected']} corrected",
        f"{verb}: {report['topups']} top-ups {cny(report['topup_fen'])}, {report['new_grants']} "
        f"new grants {cny(report['new_grant_fen'])}, {report['reversals']} reversals "
        f"{cny(report['reversed_fen'])}; net {cny(report['net_fen'])}",
    ]
    lines += [f"held (not changed): {why}: {n}" for why, n in report["held"].items()]
    if report["knock_on_not_applied"]:
        lines.append(f"knock-on differences outside the agency or period, not applied: "
                     f"{report['knock_on_not_applied']}")
    lines += [f"- {e['type'].rsplit('.', 2)[-2]} {e['id']} {e['person_id']} {e['rule']} "
              f"{e['grant_id']}: {cny(e['paid_fen'])} -> {cny(e['entitled_fen'])}"
              for e in report["events"][:50]]
    return "\n".join(lines)


async def run(database_url: str, live: PolicySet, version: Policy, scope: Scope, *,
              apply: bool, topic_prefix: str = "", on: datetime | None = None,
              chunk: int = CHUNK) -> dict[str, Any]:
    """Correct every concerned person, `chunk` persons per transaction."""
    on = on or datetime.now(UTC)
    scenario = live.with_version(version, scope.start, scope.end)
    totals = Run(version, scope, apply)
    conn = await asyncpg.connect(database_url)
    try:
        persons = [r["person_id"] for r in await conn.fetch(
            "SELECT person_id FROM person_state WHERE strpos(state, $1) > 0 ORDER BY person_id",
            orjson.dumps(scope.agency).decode())]
        for first in range(0, len(persons), chunk):
            async with conn.transaction(readonly=not apply):
                await _chunk(conn, persons[first:first + chunk], scenario, version, scope,
                             totals, topic_prefix, on)
    finally:
        await conn.close()
    return totals.report()


async def _chunk(conn: asyncpg.Connection, persons: list[str], scenario: PolicySet,
                 version: Policy, scope: Scope, totals: Run, topic_prefix: str,
                 on: datetime) -> None:
    # Persons then the ledger, both locked in the live handler's order, so the two never
    # deadlock and never overwrite each other's state.
    lock = " FOR UPDATE" if totals.applied else ""
    if totals.applied:
        await db.lock_keys(conn, [f"person:{p}" for p in persons])
    rows = await conn.fetch("SELECT person_id, state FROM person_state "
                            "WHERE person_id = ANY($1::text[]) ORDER BY person_id" + lock, persons)
    # The fund years with a budget are held (in key order, as the handler holds them); the
    # others only accumulate and are added to at the end.
    held = await budgets.lock(conn, budgets.budgeted(scenario)) if totals.applied else {}
    ledger = await budgets.read_all(conn)
    ledger.funds.update(held)
    start = dict(ledger.funds)
    scratch = copy.deepcopy(ledger)
    changed: dict[str, PersonState] = {}
    planned: list[Correction] = []
    for row in rows:
        state = state_codec.loads(row["state"])
        if not scope.concerns(state):
            continue
        if unlogged(state):
            totals.persons_without_fact_log += 1
            continue
        totals.persons_replayed += 1
        result = correct_person(state, replay_person(scenario, state, scratch), version, scope)
        totals.add(state.person_id, result)
        if result.corrections:
            changed[state.person_id] = state
            planned += result.corrections
    if not totals.applied or not planned:
        return
    await _record(conn, planned, changed, ledger, scenario, version, scope, topic_prefix, on)
    await budgets.store(conn, ledger, start)


async def _record(conn: asyncpg.Connection, planned: list[Correction],
                  changed: dict[str, PersonState], ledger: BudgetLedger, scenario: PolicySet,
                  version: Policy, scope: Scope, topic_prefix: str, on: datetime) -> None:
    """States, ledger, decision rows, correction records and outbox rows: one transaction (the
    caller stores the ledger's fund years)."""
    fresh = {r["event_id"] for r in await conn.fetch(
        "INSERT INTO policy_correction (event_id, event_type, person_id, agency, rule, "
        "grant_id, amount_fen, policy_version, policy_hash, period_from, period_to) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::bigint[], $8::text[], $9::text[], $10::date[], $11::date[]) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        *zip(*[(c.event_id, "granted" if c.event_type == GRANTED else "reversed",
                c.change.person_id, c.change.grant.event.agency, c.change.grant.event.rule,
                c.change.grant.grant_id, c.signed_fen, version.version, version.content_hash,
                scope.start, scope.end) for c in planned], strict=True))}
    if len(fresh) != len(planned):
        # The states say these differences are open, the record says they were paid: refuse
        # rather than pay twice; nothing of this chunk is written.
        stale = sorted({c.change.person_id for c in planned if c.event_id not in fresh})
        raise RuntimeError(f"corrections already recorded for persons whose state is not "
                           f"corrected: {stale}")
    out = Outbox(source="/services/subsidy", topic_prefix=topic_prefix)
    rows = []
    for c in planned:
        grant = c.change.grant
        event = grant.event
        year = grant.basis_date.year
        data = out.publish(topics.SUBSIDY_EVENTS, PUBLISHED[c.event_type].model_validate(c.payload),
                           id=c.event_id, subject=c.change.person_id, agencyid=event.agency,
                           time=on)
        rows.append((c.event_id, "granted" if c.event_type == GRANTED else "reversed",
                     c.change.person_id, event.agency, event.rule,
                     event.stage.value if c.event_type == GRANTED else None,
                     None if c.event_type == GRANTED else CORRECTION_REASON.value, c.signed_fen,
                     event.fund, event.payee_kind,
                     c.event_id if c.event_type == GRANTED else event.grant_id, on.date(),
                     orjson.dumps(data).decode()))
        if c.signed_fen > 0:
            policy = scenario.for_date(event.agency, grant.basis_date)
            budget = policy.budget_fen(event.fund, year) if policy is not None else None
            for notice in ledger.commit(event.agency, event.fund, year, c.signed_fen, budget):
                out.publish(topics.SUBSIDY_EVENTS, contract.payload(notice),
                            id=notice.event_id, subject=notice.key, agencyid=notice.agency,
                            time=on)
        else:
            ledger.release(event.agency, event.fund, year, -c.signed_fen)
    await conn.execute(
        "UPDATE person_state SET state = s.state, updated_at = now() "
        "FROM unnest($1::text[], $2::text[]) AS s(person_id, state) "
        "WHERE person_state.person_id = s.person_id",
        list(changed), [state_codec.dumps(s) for s in changed.values()])
    await conn.copy_records_to_table("decision", records=rows, columns=(
        "event_id", "event_type", "person_id", "agency", "rule", "stage", "reason",
        "amount_fen", "fund", "payee_kind", "grant_id", "decided_on", "payload"))
    await out.flush(conn)


def main(argv: list[str]) -> int:
    parser = arguments("Pay the differences a corrected policy version makes, once.", "--policy")
    parser.add_argument("--apply", action="store_true",
                        help="publish and record (default: a dry run that writes nothing)")
    parser.add_argument("--on", type=date.fromisoformat, default=None,
                        help="the adoption date stamped on the events (default: today)")
    args = parser.parse_args(argv)
    try:
        live, version, scope = load(args)
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 1
    on = datetime.combine(args.on, datetime.min.time(), UTC) if args.on else None
    report = asyncio.run(run(args.database_url, live, version, scope, apply=args.apply,
                             topic_prefix=SubsidySettings().topic_prefix, on=on))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json
          else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
