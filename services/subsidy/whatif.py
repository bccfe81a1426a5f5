"""What-if runs: an agency's recorded facts replayed against a draft policy, nothing written.

Usage::

    python -m services.subsidy.whatif --agency suqian --from 2026-01-01 --to 2026-12-31 \
        --draft services/subsidy/policies/drafts/suqian-living-40.json \
        [--database-url URL] [--policy-dir DIR] [--samples 10] [--json]

Every person with an enrollment of the agency is read from the subsidy database in one
read-only transaction (a server-side cursor, in chunks), their logged facts are decided afresh
by the pure engine with the draft in force for the agency from --from to --to (every other
agency and period keeps its loaded versions: the annual limit spans agencies), and the report
says how the outcome differs from what was decided: per rule and fund, persons, money, newly
granted and newly rejected, with explanations. Nothing is published and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from . import budgets, state_codec
from .config import SubsidySettings
from .engine.policy import Policy, PolicyError, PolicySet
from .engine.replay import ChangeKind, GrantChange, compare, replay_person, unlogged
from .engine.rules import cny
from .engine.state import BudgetLedger, PersonState
from .policy_files import load_policy_dir, load_policy_file

CHUNK = 500


@dataclass(frozen=True)
class Scope:
    """Which decisions a run is about: one agency's, with a basis date in the period."""

    agency: str
    start: date
    end: date

    def covers(self, change: GrantChange) -> bool:
        grant = change.grant
        return (grant.event.agency == self.agency
                and self.start <= grant.basis_date <= self.end)

    def concerns(self, state: PersonState) -> bool:
        return any(e.accepted.agency == self.agency for e in state.enrollments.values())


@dataclass
class Tally:
    """Differences for one rule and fund."""

    changed: int = 0
    newly_granted: int = 0
    newly_rejected: int = 0
    paid_fen: int = 0
    entitled_fen: int = 0
    persons: set[str] = field(default_factory=set)

    @property
    def delta_fen(self) -> int:
        return self.entitled_fen - self.paid_fen

    def add(self, change: GrantChange) -> None:
        if change.kind is ChangeKind.CHANGED:
            self.changed += 1
        elif change.kind is ChangeKind.NEWLY_GRANTED:
            self.newly_granted += 1
        else:
            self.newly_rejected += 1
        self.paid_fen += change.paid_fen
        self.entitled_fen += change.entitled_fen
        self.persons.add(change.person_id)

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "newly_granted": self.newly_granted,
                "newly_rejected": self.newly_rejected, "grants": self.changed
                + self.newly_granted + self.newly_rejected, "persons": len(self.persons),
                "paid_fen": self.paid_fen, "entitled_fen": self.entitled_fen,
                "delta_fen": self.delta_fen}


def describe(change: GrantChange) -> dict[str, Any]:
    """One difference as a clerk reads it: what was decided, what the draft decides."""
    grant = change.grant
    before = (change.recorded.event.explanation if change.recorded and change.recorded.live
              else change.recorded_rejection.explanation if change.recorded_rejection
              else "no grant" if change.recorded is None else "granted, then reversed")
    after = (change.replayed.event.explanation if change.replayed and change.replayed.live
             else change.replayed_rejection.explanation if change.replayed_rejection
             else "no grant" if change.replayed is None else "granted, then reversed")
    return {
        "person_id": change.person_id, "grant_id": grant.grant_id, "agency": grant.event.agency,
        "rule": grant.event.rule, "fund": grant.event.fund, "stage": grant.event.stage.value,
        "basis_date": grant.basis_date.isoformat(), "kind": change.kind.value,
        "paid_fen": change.paid_fen, "entitled_fen": change.entitled_fen,
        "delta_fen": change.delta_fen,
        "rejected_for": change.replayed_rejection.reason.value
        if change.replayed_rejection else None,
        "before": before, "after": after,
    }


@dataclass
class WhatIf:
    """A what-if run over persons fed one at a time (pure: no I/O)."""

    live: PolicySet
    draft: Policy
    scope: Scope
    budgets: BudgetLedger = field(default_factory=BudgetLedger)
    sample_size: int = 10
    check_baseline: bool = True
    persons_replayed: int = 0
    facts_replayed: int = 0
    persons_unlogged: int = 0
    baseline_mismatches: int = 0
    affected: set[str] = field(default_factory=set)
    by_rule: dict[tuple[str, str], Tally] = field(default_factory=dict)
    knock_on: dict[tuple[str, str], Tally] = field(default_factory=dict)
    rejected_for: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scenario = self.live.with_version(self.draft, self.scope.start, self.scope.end)
        self.baseline_budgets = copy.deepcopy(self.budgets)

    def person(self, state: PersonState) -> list[GrantChange]:
        """Replay one recorded person under the draft; tally and return the differences."""
        if not self.scope.concerns(state):
            return []
        if unlogged(state):
            self.persons_unlogged += 1
            return []
        self.persons_replayed += 1
        self.facts_replayed += len(state.fact_log)
        if self.check_baseline and compare(
                state, replay_person(self.live, state, self.baseline_budgets)):
            self.baseline_mismatches += 1
        changes = compare(state, replay_person(self.scenario, state, self.budgets))
        for change in changes:
            grant = change.grant
            key = (grant.event.rule, grant.event.fund)
            if not self.scope.covers(change):
                self.knock_on.setdefault(key, Tally()).add(change)
                continue
            self.by_rule.setdefault(key, Tally()).add(change)
            self.affected.add(change.person_id)
            if change.kind is ChangeKind.NEWLY_REJECTED:
                reason = change.replayed_rejection.reason.value if change.replayed_rejection \
                    else "not_selected"
                self.rejected_for[reason] += 1
            if len(self.samples) < self.sample_size:
                self.samples.append(describe(change))
        return changes

    def report(self, seconds: float = 0.0) -> dict[str, Any]:
        total = Tally()
        for tally in self.by_rule.values():
            total.changed += tally.changed
            total.newly_granted += tally.newly_granted
            total.newly_rejected += tally.newly_rejected
            total.paid_fen += tally.paid_fen
            total.entitled_fen += tally.entitled_fen
        total.persons = self.affected
        return {
            "agency": self.scope.agency, "from": self.scope.start.isoformat(),
            "to": self.scope.end.isoformat(),
            "draft": {"source": self.draft.source, "version": self.draft.version,
                      "hash": self.draft.content_hash},
            "persons_replayed": self.persons_replayed, "facts_replayed": self.facts_replayed,
            "persons_without_fact_log": self.persons_unlogged,
            "baseline_mismatches": self.baseline_mismatches if self.check_baseline else None,
            "total": total.to_json(),
            "by_rule": [{"rule": rule, "fund": fund, **tally.to_json()}
                        for (rule, fund), tally in sorted(self.by_rule.items())],
            "newly_rejected_by_reason": dict(sorted(self.rejected_for.items())),
            "knock_on": [{"rule": rule, "fund": fund, **tally.to_json()}
                         for (rule, fund), tally in sorted(self.knock_on.items())],
            "samples": self.samples, "seconds": round(seconds, 3),
        }


def render(report: dict[str, Any]) -> str:
    """The report as text for an operator's terminal."""
    draft, total = report["draft"], report["total"]
    lines = [
        f"what-if {report['agency']} {report['from']} to {report['to']}: draft "
        f"{draft['source']} version {draft['version']} (sha256 {draft['hash'][:12]})",
        f"replayed {report['persons_replayed']} persons, {report['facts_replayed']} facts in "
        f"{report['seconds']} s; {report['persons_without_fact_log']} without a fact log "
        f"(not replayed); baseline mismatches: {report['baseline_mismatches']}",
        f"affected: {total['persons']} persons, {total['grants']} grants "
        f"({total['changed']} changed, {total['newly_granted']} newly granted, "
        f"{total['newly_rejected']} newly rejected), money {cny(total['paid_fen'])} -> "
        f"{cny(total['entitled_fen'])} (difference {cny(total['delta_fen'])})",
    ]
    if report["by_rule"]:
        lines.append(f"{'rule':<18}{'fund':<26}{'changed':>8}{'new':>6}{'lost':>6}"
                     f"{'persons':>9}{'difference':>18}")
        for row in report["by_rule"]:
            lines.append(f"{row['rule']:<18}{row['fund']:<26}{row['changed']:>8}"
                         f"{row['newly_granted']:>6}{row['newly_rejected']:>6}"
                         f"{row['persons']:>9}{cny(row['delta_fen']):>18}")
    for reason, n in report["newly_rejected_by_reason"].items():
        lines.append(f"newly rejected: {reason}: {n}")
    for row in report["knock_on"]:
        lines.append(f"knock-on outside {report['agency']} {report['from']}..{report['to']}: "
                     f"{row['rule']} {row['fund']}: {row['grants']} grants, "
                     f"{cny(row['delta_fen'])}")
    for sample in report["samples"]:
        lines += [f"- {sample['person_id']} {sample['rule']} {sample['grant_id']} "
                  f"{sample['kind']}: {cny(sample['paid_fen'])} -> {cny(sample['entitled_fen'])}",
                  f"    before: {sample['before']}", f"    after:  {sample['after']}"]
    return "\n".join(lines)


async def states_of(conn: asyncpg.Connection, agency: str,
                    chunk: int = CHUNK) -> AsyncIterator[PersonState]:
    """Every recorded person that may concern the agency, streamed from a server-side cursor.

    The state is JSON text; a cheap substring test on the agency's quoted name narrows the
    scan in the database, and `Scope.concerns` decides exactly.
    """
    needle = orjson.dumps(agency).decode()
    async for row in conn.cursor(
        "SELECT state FROM person_state WHERE strpos(state, $1) > 0 ORDER BY person_id",
        needle, prefetch=chunk,
    ):
        yield state_codec.loads(row["state"])


async def load_ledger(conn: asyncpg.Connection) -> BudgetLedger:
    return await budgets.read_all(conn)


async def run(database_url: str, live: PolicySet, draft: Policy, scope: Scope, *,
              samples: int = 10, check_baseline: bool = True) -> dict[str, Any]:
    """Run a what-if against the subsidy database, inside a read-only transaction."""
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            whatif = WhatIf(live, draft, scope, await load_ledger(conn), samples, check_baseline)
            async for state in states_of(conn, scope.agency):
                whatif.person(state)
    finally:
        await conn.close()
    return whatif.report(time.monotonic() - started)


def arguments(description: str, policy_flag: str) -> argparse.ArgumentParser:
    """The options what-if and corrections share."""
    settings = SubsidySettings()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--agency", required=True)
    parser.add_argument("--from", dest="start", required=True, type=date.fromisoformat)
    parser.add_argument("--to", dest="end", required=True, type=date.fromisoformat)
    parser.add_argument(policy_flag, dest="policy", required=True, type=Path,
                        help="the policy version to put in force for the agency and period")
    parser.add_argument("--database-url", default=settings.database_url)
    parser.add_argument("--policy-dir", type=Path, default=settings.policy_dir,
                        help="the live policies (default: the service's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def load(args: argparse.Namespace) -> tuple[PolicySet, Policy, Scope]:
    """The live policies, the version to try and the scope; PolicyError if they do not fit."""
    live = load_policy_dir(args.policy_dir)
    version = load_policy_file(args.policy)
    if version.agency != args.agency:
        raise PolicyError(f"{version.source}: field 'agency': {version.agency!r} is not the "
                          f"agency asked for ({args.agency!r})")
    scope = Scope(args.agency, args.start, args.end)
    live.with_version(version, scope.start, scope.end)
    return live, version, scope


def main(argv: list[str]) -> int:
    parser = arguments("Replay an agency's recorded facts against a draft policy.", "--draft")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip checking that the live policies reproduce the record")
    args = parser.parse_args(argv)
    try:
        live, draft, scope = load(args)
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 1
    report = asyncio.run(run(args.database_url, live, draft, scope, samples=args.samples,
                             check_baseline=not args.no_baseline))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json
          else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
