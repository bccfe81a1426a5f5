"""Policy versions: the version covering a decision's basis date decides it, bad layouts are
refused naming both files, drafts are never loaded, and a version can be put in force for a
period around the loaded ones."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.subsidy.engine.outputs import SubsidyGranted
from services.subsidy.engine.policy import PolicyError
from services.subsidy.policy_files import load_policy_dir, load_policy_file

from .world import POLICY_DIR, World, employer


def _suqian(**over: Any) -> dict[str, Any]:
    raw = json.loads((POLICY_DIR / "suqian.json").read_text())
    raw.update(over)
    return raw


def _living(raw: dict[str, Any], fen: int) -> dict[str, Any]:
    next(r for r in raw["rules"] if r["id"] == "SQ-LIVING")["amount"] = fen
    return raw


def _dir(tmp_path: Path, files: dict[str, dict[str, Any]]) -> Path:
    for name in ("baoshan", "beijing", "city-a"):
        (tmp_path / f"{name}.json").write_text((POLICY_DIR / f"{name}.json").read_text())
    for name, raw in files.items():
        (tmp_path / name).write_text(json.dumps(raw))
    return tmp_path


def _two_suqian_versions(tmp_path: Path) -> Path:
    return _dir(tmp_path, {
        "suqian-2020.json": _suqian(valid_to="2025-12-31"),
        "suqian-2026.json": _living(_suqian(version="2026-01", valid_from="2026-01-01"), 4000),
    })


def _living_grant(w: World, person: str, completed_on: str) -> SubsidyGranted:
    ref = w.enroll("suqian", person=person, categories=("low_income",),
                   start=completed_on[:8] + "01", accepted_on=completed_on[:8] + "01")
    (grant,) = w.complete(ref, days=10, on=completed_on)
    assert isinstance(grant, SubsidyGranted)
    return grant


def test_the_version_covering_the_completion_date_decides_the_living_allowance(
        tmp_path: Path) -> None:
    w = World(load_policy_dir(_two_suqian_versions(tmp_path)))
    before = _living_grant(w, "p_1", "2025-12-31")
    after = _living_grant(w, "p_2", "2026-01-01")
    assert (before.amount_fen, before.policy.version) == (30000, "2020-01")
    assert (after.amount_fen, after.policy.version) == (40000, "2026-01")
    assert "version 2026-01" in after.explanation and "40.00 CNY/day" in after.explanation


def test_an_advance_follows_the_version_of_its_acceptance_date_and_the_settlement_its_own(
        tmp_path: Path) -> None:
    first = _suqian(valid_to="2025-12-31")
    second = _suqian(version="2026-01", valid_from="2026-01-01")
    next(r for r in second["rules"] if r["id"] == "SQ-PREJOB")["amount"] = 40000
    w = World(load_policy_dir(_dir(tmp_path, {"a.json": first, "b.json": second})))
    ref = w.enroll("suqian", training_type="pre_job", level=None, project_based=True,
                   employer=employer(), payer="employer", start="2025-12-01",
                   accepted_on="2025-12-01")
    (advance,) = w.last_outputs
    w.complete(ref, on="2026-01-10")
    (settlement,) = w.certify(ref, kind="training_completion", level=None, on="2026-01-15")
    assert isinstance(advance, SubsidyGranted) and isinstance(settlement, SubsidyGranted)
    assert (advance.stage.value, advance.amount_fen, advance.policy.version) == (
        "advance", 15000, "2020-01")
    assert (settlement.stage.value, settlement.amount_fen, settlement.policy.version) == (
        "settlement", 25000, "2026-01")


def _write(tmp_path: Path, name: str, raw: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("second_from,second_to,problem", [
    ("2025-06-01", None, "overlaps version 2020-01 (2020-01-01 to 2025-12-31)"),
    ("2026-02-01", None, "leaves a gap after version 2020-01 (2020-01-01 to 2025-12-31)"),
    ("2019-01-01", "2020-06-30", "overlaps version 2019-01"),
])
def test_overlapping_or_gapped_versions_are_refused_naming_both_files(
        tmp_path: Path, second_from: str, second_to: str | None, problem: str) -> None:
    first = _write(tmp_path, "suqian-old.json", _suqian(valid_to="2025-12-31"))
    second = _write(tmp_path, "suqian-new.json", _suqian(
        version="2019-01" if second_from < "2020" else "2026-01", valid_from=second_from,
        valid_to=second_to))
    with pytest.raises(PolicyError) as error:
        load_policy_dir(tmp_path)
    message = str(error.value)
    assert str(first) in message and str(second) in message, message
    assert problem in message


def test_the_gap_error_says_which_days_have_no_policy(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", _suqian(valid_to="2025-12-31"))
    _write(tmp_path, "b.json", _suqian(version="2026-03", valid_from="2026-03-01"))
    with pytest.raises(PolicyError, match="2026-01-01 to 2026-02-28 has no policy"):
        load_policy_dir(tmp_path)


def test_the_validate_cli_refuses_overlapping_versions_naming_both_files(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.json", _suqian())
    second = _write(tmp_path, "b.json", _suqian(version="2026-01", valid_from="2026-01-01"))
    result = subprocess.run(
        [sys.executable, "-m", "services.subsidy.policy_files", "validate", str(first), str(second)],
        capture_output=True, text=True, cwd=POLICY_DIR.parents[2])
    assert result.returncode == 1
    assert str(first) in result.stderr and str(second) in result.stderr


def test_drafts_beside_the_live_policies_are_never_loaded() -> None:
    drafts = sorted((POLICY_DIR / "drafts").glob("*.json"))
    assert drafts, "the example draft is shipped"
    live = load_policy_dir(POLICY_DIR)
    assert all(len(versions) == 1 for versions in live.by_agency.values())
    assert {p.source for versions in live.by_agency.values() for p in versions}.isdisjoint(
        str(d) for d in drafts)
    for draft in drafts:
        load_policy_file(draft)


def test_a_version_put_in_force_for_a_period_cuts_the_loaded_versions_around_it() -> None:
    live = load_policy_dir(POLICY_DIR)
    draft = load_policy_file(POLICY_DIR / "drafts" / "suqian-living-40.json")
    scenario = live.with_version(draft, date(2026, 1, 1), date(2026, 6, 30))
    spans = [(p.version, p.valid_from, p.valid_to) for p in scenario.by_agency["suqian"]]
    assert spans == [("2020-01", date(2020, 1, 1), date(2025, 12, 31)),
                     (draft.version, date(2026, 1, 1), date(2026, 6, 30)),
                     ("2020-01", date(2026, 7, 1), None)]
    assert scenario.by_agency["beijing"] == live.by_agency["beijing"]
    with pytest.raises(PolicyError, match="does not cover the period 2025-06-01 to 2026-06-30"):
        live.with_version(draft, date(2025, 6, 1), date(2026, 6, 30))
