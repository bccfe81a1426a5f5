"""Policy files: the defaults load, bad files are refused naming file, rule and field."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from services.subsidy.engine.policy import PolicyError, PolicySet
from services.subsidy.policy_files import load_policy_dir, load_policy_file

from .world import POLICY_DIR


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def _beijing() -> dict[str, Any]:
    return json.loads((POLICY_DIR / "beijing.json").read_text())


def test_default_policies_cover_the_four_agencies_with_a_stable_hash() -> None:
    policies = load_policy_dir(POLICY_DIR)
    assert policies.agencies() == {"city-a", "suqian", "baoshan", "beijing"}
    first = load_policy_file(POLICY_DIR / "beijing.json")
    assert first.content_hash == load_policy_file(POLICY_DIR / "beijing.json").content_hash
    assert len(first.content_hash) == 64


def test_masked_amounts_are_marked_assumed() -> None:
    beijing = load_policy_file(POLICY_DIR / "beijing.json")
    assert beijing.rule("BJ-CERT-IND").amount_by_level["senior"].assumed
    assert beijing.rule("BJ-DOM-PRE").amount is not None
    assert beijing.rule("BJ-DOM-PRE").amount.assumed  # type: ignore[union-attr]  # present in this example


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["rules"][0].update(kind="per_hour"), "rule BJ-CERT-IND: field 'kind'"),
    (lambda r: r["rules"][2].update(amount=-5), "rule BJ-SPECOP: field 'amount'"),
    (lambda r: r["rules"][2].update(amount=10.5), "rule BJ-SPECOP: field 'amount'"),
    (lambda r: r["rules"][2].update(amonut=100), "rule BJ-SPECOP: field 'amonut'"),
    (lambda r: r["rules"][3].update(categories=["aliens"]), "rule BJ-PREJOB: field 'categories'"),
    (lambda r: r["rules"][1].update(base_rule="NOPE"), "rule BJ-CERT-HARDENT: field 'base_rule'"),
    (lambda r: r["rules"][7].pop("max_months"), "rule BJ-YGDX: field 'max_months'"),
    (lambda r: r["rules"][3].pop("payee"), "rule BJ-PREJOB: field 'payee'"),
    (lambda r: r["rules"].append(dict(r["rules"][3])), "rule BJ-PREJOB: field 'id'"),
    (lambda r: r.update(valid_from="01/01/2020"), "field 'valid_from'"),
    (lambda r: r.update(advance_rate_bp=20000), "field 'advance_rate_bp'"),
    # What the pydantic models of services.subsidy.policy_files refuse, named the same way:
    (lambda r: r.update(agnecy="beijing"), "field 'agnecy': unknown field"),
    (lambda r: r.update(agency="  "), "field 'agency'"),
    (lambda r: r.update(valid_to="2020-13-01"), "field 'valid_to'"),
    (lambda r: r.update(budgets={"employment": {"twenty": 5}}), "field 'budgets'"),
    (lambda r: r.update(budgets={"employment": {"2026": True}}), "field 'budgets'"),
    (lambda r: r.update(rules={}), "field 'rules'"),
    (lambda r: r["rules"][3].update(training_types=["pre-job"]),
     "rule BJ-PREJOB: field 'training_types'"),
    (lambda r: r["rules"][3].update(fee_payers=["state"]), "rule BJ-PREJOB: field 'fee_payers'"),
    (lambda r: r["rules"][3].update(counts_toward_annual_limit="yes"),
     "rule BJ-PREJOB: field 'counts_toward_annual_limit'"),
    (lambda r: r["rules"][3].update(min_hours=-1), "rule BJ-PREJOB: field 'min_hours'"),
    (lambda r: r["rules"][0].update(amount_by_level={"master": 100}),
     "rule BJ-CERT-IND: field 'amount_by_level'"),
    (lambda r: r["rules"][2].update(amount={"fen": 100, "assumd": True}),
     "rule BJ-SPECOP: field 'amount'"),
    (lambda r: r["rules"][2].update(certified_on_or_after="soon"),
     "rule BJ-SPECOP: field 'certified_on_or_after'"),
    (lambda r: r["rules"].__setitem__(2, "BJ-SPECOP"), "field 'rules': Input should be a valid dictionary (at 2)"),
])
def test_a_bad_file_is_refused_naming_file_rule_and_field(tmp_path: Path, mutate: Any,
                                                          needle: str) -> None:
    raw = _beijing()
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(PolicyError) as error:
        load_policy_file(path)
    assert str(path) in str(error.value) and needle in str(error.value)


def test_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy_file(path)


@pytest.mark.parametrize("second_from,problem", [("2024-06-01", "overlaps"),
                                                 ("2025-03-01", "gap")])
def test_overlapping_or_gapped_versions_are_refused(tmp_path: Path, second_from: str,
                                                    problem: str) -> None:
    first, second = _beijing(), _beijing()
    first["valid_to"] = "2024-12-31"
    second.update(version="2025-01", valid_from=second_from)
    with pytest.raises(PolicyError, match=problem):
        PolicySet.of([load_policy_file(_write(tmp_path, first, "a.json")),
                      load_policy_file(_write(tmp_path, second, "b.json"))])


def test_an_open_ended_version_followed_by_another_overlaps(tmp_path: Path) -> None:
    second = _beijing()
    second.update(version="2025-01", valid_from="2025-01-01")
    with pytest.raises(PolicyError, match="overlaps"):
        PolicySet.of([load_policy_file(POLICY_DIR / "beijing.json"),
                      load_policy_file(_write(tmp_path, second))])


def test_version_selection_by_date(tmp_path: Path) -> None:
    first, second = _beijing(), _beijing()
    first["valid_to"] = "2024-12-31"
    second.update(version="2025-01", valid_from="2025-01-01")
    policies = PolicySet.of([load_policy_file(_write(tmp_path, first, "a.json")),
                             load_policy_file(_write(tmp_path, second, "b.json"))])
    assert policies.for_date("beijing", date(2024, 12, 31)).version == "2020-01"  # type: ignore[union-attr]  # found
    assert policies.for_date("beijing", date(2025, 1, 1)).version == "2025-01"  # type: ignore[union-attr]  # found
    assert policies.for_date("beijing", date(2019, 12, 31)) is None
    assert policies.for_date("nowhere", date(2025, 1, 1)) is None


def test_the_validate_cli_accepts_defaults_and_names_the_bad_field(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "services.subsidy.policy_files", "validate"]
    ok = subprocess.run(command + [str(p) for p in POLICY_DIR.glob("*.json")],
                        capture_output=True, text=True, cwd=POLICY_DIR.parents[2])
    assert ok.returncode == 0, ok.stderr
    raw = _beijing()
    raw["rules"][3]["min_hours"] = "forty"
    bad = subprocess.run(command + [str(_write(tmp_path, raw))], capture_output=True, text=True,
                         cwd=POLICY_DIR.parents[2])
    assert bad.returncode == 1
    assert "bad.json: rule BJ-PREJOB: field 'min_hours'" in bad.stderr
