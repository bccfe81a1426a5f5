"""End to end: budgets that bind. A demo-sized population through the three services, the subsidy
service deciding with the budgeted policy set (tools/policies/budgeted), streamed by the demo.

Who gets the last fen of a budget depends on arrival order, so this asserts invariants, not
identity (POLICY §3.9, EVENTS.md §5.3): budget_exhausted rejections in every agency, and only for
rules whose fund has a budget; committed money never above a budget at any point of the published
sequence (grants and reversals replayed per agency, fund and basis year in publication order);
each BudgetThresholdReached exactly once per (agency, fund, year, threshold) that the sequence
crossed; the ledger and the summary of the query API equal to the live grants; the demo's
terminal summary and HTML report showing the thresholds and the exhaustion per agency and fund.

Publication order: the relay publishes the outbox in commit order and each record's Kafka
timestamp is taken when it is sent, so timestamps never go back in that order; records of one
millisecond on different partitions have no known order between them, so within such a group
the replay bounds the peak from below (reversals first) and from above (grants first).

BUDGET_E2E_PERSONS (default 3000, the demo's default) and BUDGET_E2E_SEED override.
"""

from __future__ import annotations

import io
import itertools
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console

from shared.contract import topics
from tests.harness import ROOT, Collector, Received, ServiceProcess, Stack, wait_for
from tools import moneycheck
from tools.demo import Options, run_demo
from tools.population import DEFAULT_AGENCIES, YEAR
from tools.report import Report

pytestmark = pytest.mark.e2e

PERSONS = int(os.environ.get("BUDGET_E2E_PERSONS", "3000"))
SEED = int(os.environ.get("BUDGET_E2E_SEED", "20260915"))
BUDGETED = ROOT / "tools/policies/budgeted"
POLICIES = moneycheck.Policies.from_dir(BUDGETED)
SERVICES = ("enrollment", "assessment", "subsidy")
THRESHOLDS_BP = (8000, 9000, 10000)
YEARS = (YEAR - 1, YEAR, YEAR + 1)

Key = tuple[str, str, int]  # (agency, fund, year)


@dataclass
class Run:
    report: Report
    html: str
    terminal: str
    subsidy: ServiceProcess
    records: list[Received]  # every record on the three internal topics, per partition in order

    def events(self, topic: str, kind: str = "") -> list[dict[str, Any]]:
        return [r.event for r in self.records if r.topic == topic and r.event["type"].endswith(kind + ".v1")]

    @property
    def facts(self) -> moneycheck.Facts:
        return moneycheck.Facts.of(self.events(topics.ENROLLMENT_EVENTS) + self.events(topics.ASSESSMENT_EVENTS))


@pytest.fixture(scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    stack = Stack()
    await stack.create_topics(4)
    services = {name: ServiceProcess(name, stack) for name in SERVICES}
    services["subsidy"].env["SUBSIDY_POLICY_DIR"] = str(BUDGETED)
    for service in services.values():
        service.start()
    try:
        for service in services.values():
            await service.wait_ready()
        async with Collector(stack, (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS,
                                     topics.SUBSIDY_EVENTS)) as collector:
            options = Options(persons=PERSONS, seed=SEED, topic_prefix=stack.prefix,
                              urls={name: f"http://127.0.0.1:{s.port}" for name, s in services.items()},
                              report=tmp_path_factory.mktemp("budgets") / "demo.html", policy_dir=BUDGETED)
            terminal = io.StringIO()
            report, path = await run_demo(options, Console(file=terminal, width=220))
            await wait_for(lambda: collector.caught_up(), 60, "the collector caught up")
            yield Run(report, path.read_text(encoding="utf-8"), terminal.getvalue(), services["subsidy"],
                      list(collector.records))
    finally:
        for service in services.values():
            service.stop()
        await stack.drop()




def _budget(key: Key) -> int | None:
    return POLICIES.budget_fen(*key)


def exhausted_by_fund(run: Run) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for e in run.events(topics.SUBSIDY_EVENTS, "SubsidyRejected"):
        if e["data"]["reason"] == "budget_exhausted":
            fund = POLICIES.fund_of(e["data"]["agency"], e["data"]["rule"])
            assert fund is not None, e["data"]
            found[(e["data"]["agency"], fund)] += 1
    return found


async def test_every_agency_runs_out_of_budget_and_only_budgeted_funds_reject_for_it(run: Run) -> None:
    assert not run.report.problem, run.report.problem
    exhausted = exhausted_by_fund(run)
    for agency in DEFAULT_AGENCIES:
        assert any(n for (a, _f), n in exhausted.items() if a == agency), (
            f"{agency}: no budget_exhausted rejection, so its budgets never bound")
    for (agency, fund), _n in exhausted.items():
        assert any(_budget((agency, fund, y)) is not None for y in YEARS), (agency, fund)
    grants = run.events(topics.SUBSIDY_EVENTS, "SubsidyGranted")
    # How many grants fit in the budgets depends on arrival order (smaller amounts first fit more):
    # 747-761 of 3,000 persons in runs of the same seed, so the floor is a fifth, not a quarter.
    assert len(grants) > PERSONS // 5, "too few grants for the run to be demo-sized"


@dataclass
class Replayed:
    """One (agency, fund, year) replayed in publication order."""

    committed: int = 0
    peak_low: int = 0  # the highest committed the sequence certainly reached
    peak_high: int = 0  # the highest it may have reached (grants first within a millisecond)


def replay_budgets(run: Run) -> dict[Key, Replayed]:
    facts = run.facts
    held: dict[str, tuple[Key, int]] = {}
    on_hold: dict[str, tuple[Key, int]] = {}
    found: dict[Key, Replayed] = {}
    subsidy = sorted((r for r in run.records if r.topic == topics.SUBSIDY_EVENTS), key=lambda r: r.timestamp)
    for _ms, group in itertools.groupby(subsidy, key=lambda r: r.timestamp):
        granted: Counter[Key] = Counter()
        released: Counter[Key] = Counter()
        for record in group:
            e = record.event
            d = e["data"]
            if e["type"].endswith(("SubsidyGranted.v1", "SubsidyHeld.v1")):
                if d["grant_id"] in on_hold:  # a released hold: committed since it was held
                    held[d["grant_id"]] = on_hold.pop(d["grant_id"])
                    continue
                key = (d["agency"], d["fund"], facts.basis_date(d).year)
                # POLICY §6: a hold commits the budget exactly as the grant would.
                bag = on_hold if e["type"].endswith("SubsidyHeld.v1") else held
                bag[d["grant_id"]] = (key, d["amount_fen"])
                granted[key] += d["amount_fen"]
            elif e["type"].endswith("SubsidyRejected.v1") and d.get("grant_id") in on_hold:
                key, fen = on_hold.pop(d["grant_id"])  # denied or voided: the budget is freed
                released[key] += fen
            elif e["type"].endswith("SubsidyReversed.v1"):
                key, fen = held.pop(d["grant_id"])
                assert fen == d["amount_fen"], d
                released[key] += fen
        for key in granted.keys() | released.keys():
            state = found.setdefault(key, Replayed())
            state.peak_high = max(state.peak_high, state.committed + granted[key])
            state.committed += granted[key] - released[key]
            state.peak_low = max(state.peak_low, state.committed)
    return found


async def test_committed_money_never_exceeds_a_budget_and_each_threshold_is_reported_exactly_once(run: Run) -> None:
    replayed = replay_budgets(run)
    budgeted = {key: state for key, state in replayed.items() if _budget(key) is not None}
    assert {(a, f) for a, f, _y in budgeted} >= set(exhausted_by_fund(run))
    for key, state in budgeted.items():
        budget = _budget(key)
        assert budget is not None
        assert state.peak_low <= budget, f"{key}: committed {state.peak_low} fen over the budget {budget}"
    notices: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for e in run.events(topics.SUBSIDY_EVENTS, "BudgetThresholdReached"):
        d = e["data"]
        notices.setdefault((d["agency"], d["fund"], d["year"], d["threshold_bp"]), []).append(d)
        budget = _budget((d["agency"], d["fund"], d["year"]))
        assert d["budget_fen"] == budget and d["threshold"] == d["threshold_bp"] / 10_000, d
        assert budget * d["threshold_bp"] <= d["committed_fen"] * 10_000 and d["committed_fen"] <= budget, d
    for key, state in budgeted.items():
        budget = _budget(key)
        assert budget is not None
        for bp in THRESHOLDS_BP:
            sent = notices.pop((*key, bp), [])
            assert len(sent) <= 1, f"{key} {bp / 100:.0f}%: reported {len(sent)} times"
            if state.peak_low * 10_000 >= budget * bp:
                assert sent, f"{key}: committed reached {state.peak_low} of {budget} fen, no {bp / 100:.0f}% notice"
            if sent:
                assert state.peak_high * 10_000 >= budget * bp, f"{key}: {bp / 100:.0f}% reported, never reached"
        # The budgets are sized to bind in a run of this size: every one passes its 80% mark.
        assert state.peak_low * 10 >= budget * 8, f"{key}: only {state.peak_low} of {budget} fen committed"
    assert notices == {}, f"notices for funds without a budget or never granted: {list(notices)}"


async def test_the_ledger_and_the_summary_equal_the_live_grants_per_agency_fund_and_year(run: Run) -> None:
    found = moneycheck.check(POLICIES, run.facts, run.events(topics.SUBSIDY_EVENTS))
    replayed = replay_budgets(run)
    problems = []
    for agency in DEFAULT_AGENCIES:
        entries: list[dict[str, Any]] = []
        for page in itertools.count(1):
            body = run.subsidy.get(f"/agencies/{agency}/ledger?page={page}&page_size=1000")
            entries += body["entries"]
            if not body["has_more"]:
                break
        assert entries, agency
        problems += moneycheck.compare_ledger(found, agency, entries)
        for year in YEARS:
            summary = run.subsidy.get(f"/agencies/{agency}/summary?year={year}")
            problems += moneycheck.compare_summary(found, agency, summary)
            for fund, b in summary["budgets"].items():
                state = replayed.get((agency, fund, year), Replayed())
                assert b["budget_fen"] == _budget((agency, fund, year)), (agency, fund, year)
                assert b["committed_fen"] == state.committed, (agency, fund, year)
                if b["budget_fen"] is not None:
                    assert b["remaining_fen"] == b["budget_fen"] - b["committed_fen"] >= 0, (agency, fund, year)
    assert problems == []


async def test_the_demo_shows_thresholds_and_budget_exhaustion_per_agency_and_fund(run: Run) -> None:
    exhausted = exhausted_by_fund(run)
    lines = {(line.agency, line.fund): line for line in run.report.budgets()}
    assert set(lines) == {(a, f) for a, f, _y in replay_budgets(run) if _budget((a, f, _y)) is not None}
    reached: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for e in run.events(topics.SUBSIDY_EVENTS, "BudgetThresholdReached"):
        reached.setdefault((e["data"]["agency"], e["data"]["fund"]), []).append(
            (e["data"]["year"], e["data"]["threshold_bp"]))
    assert "Budgets: thresholds reached and budget_exhausted rejections" in run.terminal
    assert "Note:" not in run.terminal, run.terminal
    for (agency, fund), line in lines.items():
        assert line.exhausted == exhausted[(agency, fund)], (agency, fund)
        assert line.reached == sorted(reached[(agency, fund)]), (agency, fund)
        assert re.search(rf"{re.escape(agency)}\s+{fund}\s.*{re.escape(line.reached_text())}\s+{line.exhausted:,}\s*$",
                         run.terminal, re.M), (agency, fund, run.terminal)
        section = re.search(rf'<section class="agency" id="agency-{agency}">(.*?)</section>', run.html, re.S)
        assert section is not None
        assert re.search(rf"<tr><td>{fund}</td>.*?<td[^>]*>{re.escape(line.reached_text())}</td>"
                         rf"<td[^>]*>{line.exhausted:,}</td></tr>", section.group(1)), (agency, fund)
