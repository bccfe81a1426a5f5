"""End to end: the demo's report of a run equals the subsidy query API, and its HTML renders in Chromium.

The demo (tools.demo.run_demo, what `make demo` runs) streams a small seeded population through
the three services started as OS processes on an isolated stack; its report, counted from the
run's own events, must equal what /agencies/{agency}/summary says for the same stack.

DEMO_TEST_PERSONS (default 300) overrides the population size.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.harness import ROOT, ServiceProcess, Stack
from tools.demo import Options, run_demo
from tools.population import DEFAULT_AGENCIES, YEAR
from tools.report import Report, cny

pytestmark = pytest.mark.e2e

PERSONS = int(os.environ.get("DEMO_TEST_PERSONS", "300"))
SEED = 20260401
SERVICES = ("enrollment", "assessment", "subsidy")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


@pytest.fixture(scope="module")
async def demo_run(
        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Report, Path, str, ServiceProcess]]:
    """One demo run on an isolated stack: the report, its HTML path, the terminal text, the subsidy service."""
    stack = Stack()
    await stack.create_topics(4)
    services = {name: ServiceProcess(name, stack).start() for name in SERVICES}
    try:
        for service in services.values():
            await service.wait_ready()
        options = Options(
            persons=PERSONS, seed=SEED, topic_prefix=stack.prefix, timeout=120,
            urls={name: f"http://127.0.0.1:{s.port}" for name, s in services.items()},
            report=tmp_path_factory.mktemp("demo") / "demo.html",
            policy_dir=ROOT / "services/subsidy/policies",  # what these services run with
        )
        terminal = io.StringIO()
        report, path = await run_demo(options, Console(file=terminal, width=140))
        yield report, path, terminal.getvalue(), services["subsidy"]
    finally:
        for service in services.values():
            service.stop()
        await stack.drop()


def api_totals(subsidy: ServiceProcess, agency: str) -> dict[str, Any]:
    """The agency's totals over every year the simulated population can touch."""
    found: dict[str, Any] = {"grants": 0, "granted_fen": 0, "rejections": Counter(),
                             "reversals": 0, "reversed_fen": 0}
    for year in range(YEAR - 1, YEAR + 3):
        summary = subsidy.get(f"/agencies/{agency}/summary?year={year}")
        for key in ("grants", "granted_fen", "reversals", "reversed_fen"):
            found[key] += summary[key]
        found["rejections"].update(summary["rejections_by_reason"])
    return found


async def test_the_demo_report_equals_what_the_subsidy_query_api_says_for_the_run(demo_run) -> None:
    report, path, terminal, subsidy = demo_run
    assert not report.problem, report.problem
    assert path.is_file() and str(path) in terminal.replace("\n", "")
    for agency in DEFAULT_AGENCIES:
        tally = report.tally.agencies[agency]
        api = api_totals(subsidy, agency)
        assert tally.grants.count > 0, f"{agency}: the run granted nothing, so the comparison proves nothing"
        assert (tally.grants.count, tally.grants.fen) == (api["grants"], api["granted_fen"]), agency
        assert +tally.rejections == +api["rejections"], agency
        assert (tally.reversed.count, tally.reversed.fen) == (api["reversals"], api["reversed_fen"]), agency
        assert report.api_delta(agency).matches(tally), agency
        assert re.search(rf"{agency}\s.*{re.escape(cny(tally.grants.fen))}", terminal), agency
    # Every record the simulator broke on purpose is a dead letter with its code. unknown_reference
    # is left out: it also follows enrollments rejected as duplicates, and only after the waiting period.
    dead = Counter({f"{service}:{code}": n for (service, code), n in report.tally.dead_letters.items()
                    if code != "unknown_reference"})
    injected = Counter({k: n for k, n in report.intended_dead_letters.items() if not k.endswith(":unknown_reference")})
    assert +dead == +injected and sum(injected.values()) > 0
    assert report.tally.others == 0


async def test_the_demo_html_report_renders_every_agency_its_totals_and_charts_in_chromium(
        demo_run, tmp_path: Path) -> None:
    report, path, _terminal, _subsidy = demo_run
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian package `chromium` to render the report")
    profile = tmp_path / "profile"
    shot = path.with_suffix(".png")
    common = (str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}")
    dom = subprocess.run((*common, "--dump-dom", path.as_uri()), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    subprocess.run((*common, "--window-size=1100,2400", f"--screenshot={shot}", path.as_uri()),
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
    for agency in DEFAULT_AGENCIES:
        tally = report.tally.agencies[agency]
        section = re.search(rf'<section class="agency" id="agency-{agency}">(.*?)</section>', dom, re.S)
        assert section is not None, f"no section for {agency}"
        body = section.group(1)
        assert f'<b class="grants">{tally.grants.count:,}</b>' in body
        assert f'<b class="granted">{cny(tally.grants.fen)}</b>' in body
        assert body.count("<svg") == 3 and "<rect" in body
        for reason in tally.rejections:
            assert f">{reason}</text>" in body
    assert re.search(r'<section id="throughput">.*?<svg.*?<rect', dom, re.S)


async def test_the_demo_holds_the_money_of_its_integrity_cases_and_says_where_to_review_it(demo_run) -> None:
    """Each agency's two trainees who trip the integrity checks (POLICY.md §6) have money held;
    the terminal and the HTML show the holds, and the run names the review console."""
    report, path, terminal, subsidy = demo_run
    page = path.read_text(encoding="utf-8")
    for agency in DEFAULT_AGENCIES:
        tally = report.tally.agencies[agency]
        assert tally.holds.count >= 2, agency  # both integrity trainees' money at least
        assert {"daily_hours_exceeded", "far_outside_plan"} <= set(tally.held_checks), agency
        open_holds = sum(subsidy.get(f"/agencies/{agency}/summary?year={year}")["holds_open"]
                         for year in range(YEAR - 1, YEAR + 3))
        assert open_holds == tally.holds.count, agency  # nobody reviewed them during the run
        assert f"{tally.holds.count:,} · {cny(tally.holds.fen)}</b>held for review" in page, agency
    assert terminal.count("held for integrity review: ") == len(DEFAULT_AGENCIES)
    assert f"Review console: http://127.0.0.1:{subsidy.port}/console/" in terminal
