"""The population simulator and its offline oracle: deterministic, contract-valid, realistic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from shared.contract import topics
from shared.contract.envelope import DecodeError, decode
from shared.contract.identity import normalise_national_id
from services.subsidy.policy_files import load_policy_dir
from tools.expected import expected_outcome
from tools.population import DEFAULT_AGENCIES, ENROLLED, RESULT
from tools.simulate import main, simulate

POLICIES = load_policy_dir(Path(__file__).resolve().parents[2] / "services/subsidy/policies")
AGENCIES = frozenset(DEFAULT_AGENCIES)


@pytest.fixture(scope="module")
def clean():  # noqa: ANN201
    return simulate(400, 11)


@pytest.fixture(scope="module")
def disordered():  # noqa: ANN201
    return simulate(400, 11, disorder=True)


def test_the_same_seed_gives_the_same_bytes() -> None:
    one, two = simulate(150, 5, disorder=True), simulate(150, 5, disorder=True)
    assert one.training == two.training and one.assessment == two.assessment
    assert one.lanes == two.lanes and one.malformed == two.malformed
    assert simulate(150, 6).training != one.training


def test_a_person_does_not_depend_on_the_population_size() -> None:
    small, large = simulate(20, 5), simulate(60, 5)
    assert [r for r in small.training if small.lane(r.key) < 20] == \
           [r for r in large.training if large.lane(r.key) < 20]


def test_every_clean_record_decodes_under_the_contract(clean) -> None:
    for topic, records in ((topics.TRAINING_UPSTREAM, clean.training),
                           (topics.ASSESSMENT_UPSTREAM, clean.assessment)):
        for record in records:
            event = decode(record.value, topic, AGENCIES)
            assert event.subject == record.key


def test_only_the_intended_disorder_records_fail_to_decode(disordered) -> None:
    failures: Counter[str] = Counter()
    for service, topic, records in (("enrollment", topics.TRAINING_UPSTREAM, disordered.training),
                                    ("assessment", topics.ASSESSMENT_UPSTREAM, disordered.assessment)):
        for record in records:
            try:
                decode(record.value, topic, AGENCIES)
            except DecodeError as exc:
                failures[f"{service}:{exc.code}"] += 1
    intended = Counter({k: v for k, v in disordered.malformed.items()
                        if k.split(":")[1] in ("malformed_json", "unknown_type", "unknown_agency")})
    assert failures == intended
    assert sum(disordered.malformed.values()) > 0


def test_national_ids_are_valid_except_the_intended_ones(clean) -> None:
    for record in clean.training + clean.assessment:
        event = orjson.loads(record.value)
        if event["type"] == ENROLLED:
            assert normalise_national_id(event["data"]["trainee"]["national_id"])
        elif event["type"] == RESULT:
            assert normalise_national_id(event["data"]["national_id"])


def test_the_mix_covers_every_agency_type_and_kind(clean) -> None:
    enrolled = [orjson.loads(r.value) for r in clean.training if b"TraineeEnrolled" in r.value]
    agencies = Counter(e["agencyid"] for e in enrolled)
    assert set(agencies) == AGENCIES and min(agencies.values()) > 20
    types = {e["data"]["course"]["training_type"] for e in enrolled}
    assert {"skill_upgrade", "apprenticeship", "work_for_training", "special_operation",
            "key_industry", "domestic_prejob", "project_based"} - types == {"project_based"}
    assert any(e["data"]["course"]["project_based"] for e in enrolled)
    assert any(e["data"]["employer"] is None for e in enrolled)
    assert any("pension_eligible" in e["data"]["trainee"]["categories"] for e in enrolled)
    per_person = Counter(e["data"]["trainee"]["national_id"] for e in enrolled)
    assert max(per_person.values()) >= 4
    results = [orjson.loads(r.value)["data"] for r in clean.assessment if b"ResultRecorded" in r.value]
    assert {r["certificate_kind"] for r in results} >= {"skill_level", "qualification", "special_operation"}
    levelled = [r for r in results if r["certificate_kind"] in ("skill_level", "qualification")]
    assert levelled and all(r["level"] is not None for r in levelled)
    # Real-world noise the services must take (POLICY.md §5): levels on level-less certificates,
    # courses that run past their planned end, national ids typed with a lower-case x.
    assert any(r["level"] is not None for r in results if r not in levelled)
    plans = {e["data"]["enrollment_ref"]: e["data"]["course"] for e in enrolled}
    late = [d for r in clean.training if b"AttendanceRecorded" in r.value
            for d in [orjson.loads(r.value)["data"]]
            if d["date"] > plans[d["enrollment_ref"]]["end_date"]]
    assert late
    assert any(e["data"]["trainee"]["national_id"].endswith("x") for e in enrolled)
    assert any(b"CertificateRevoked" in r.value for r in clean.assessment)


def test_a_single_agency_population_stays_in_that_agency() -> None:
    pop = simulate(50, 3, agencies=["beijing"])
    assert {orjson.loads(r.value)["agencyid"] for r in pop.training} == {"beijing"}
    with pytest.raises(ValueError):
        simulate(5, 3, agencies=["atlantis"])


def test_the_oracle_exercises_every_outcome(clean) -> None:
    outcome = expected_outcome(clean, POLICIES)
    kinds = Counter(o.type.rsplit(".", 2)[-2] for o in outcome.enrollment.events)
    assert {"EnrollmentAccepted", "TrainingCompleted", "EnrollmentWithdrawn",
            "WorkTrainingMonthAccepted"} <= set(kinds)
    issued = [o for o in outcome.assessment.events if o.type.endswith("CertificateIssued.v1")]
    assert issued and all(o.data["certificate_id"].startswith("CERT-") for o in issued)
    assert any(o.type.endswith("AssessmentFailed.v1") for o in outcome.assessment.events)
    assert any(o.type.endswith("CertificateRevoked.v1") for o in outcome.assessment.events)
    subsidy = Counter(o.type.rsplit(".", 2)[-2] for o in outcome.subsidy)
    assert {"SubsidyGranted", "SubsidyRejected", "SubsidyReversed"} <= set(subsidy)
    reasons = {o.data["reason"] for o in outcome.subsidy if o.type.endswith("SubsidyRejected.v1")}
    assert {"annual_limit", "pension_eligible", "amount_not_configured"} <= reasons
    stages = {o.data["stage"] for o in outcome.subsidy if o.type.endswith("SubsidyGranted.v1")}
    assert {"advance", "full"} <= stages
    # A clean population dead-letters nothing but the records of an enrollment rejected as a
    # duplicate (same course over overlapping dates), which wait for it in vain.
    rejected = {o.data["enrollment_ref"] for o in outcome.enrollment.events
                if o.type.endswith("EnrollmentRejected.v1")}
    orphans = sum(1 for r in clean.training if r.key in rejected and b"TraineeEnrolled" not in r.value)
    assert +outcome.enrollment.dead_letters == +Counter({"unknown_reference": orphans})


def test_the_oracle_counts_the_intended_dead_letters(clean, disordered) -> None:
    outcome, baseline = expected_outcome(disordered, POLICIES), expected_outcome(clean, POLICIES)
    for service, expected, base in (("enrollment", outcome.enrollment, baseline.enrollment),
                                    ("assessment", outcome.assessment, baseline.assessment)):
        intended = Counter({k.split(":")[1]: v for k, v in disordered.malformed.items()
                            if k.startswith(service + ":")})
        assert +expected.dead_letters == intended + base.dead_letters


def test_disorder_does_not_change_the_outcome_of_the_clean_records(clean, disordered) -> None:
    a, b = expected_outcome(clean, POLICIES), expected_outcome(disordered, POLICIES)
    assert {(o.id, orjson.dumps(o.data)) for o in a.subsidy} == {(o.id, orjson.dumps(o.data)) for o in b.subsidy}
    assert {o.id for o in a.enrollment.events} == {o.id for o in b.enrollment.events}


def test_the_cli_writes_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pop.jsonl"
    assert main(["--persons", "30", "--seed", "2", "--agencies", "suqian,beijing", "--disorder",
                 "--out", str(out)]) == 0
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {line["topic"] for line in lines} == {topics.TRAINING_UPSTREAM, topics.ASSESSMENT_UPSTREAM}
    assert all(isinstance(line["value"], dict) for line in lines)
    assert "training" in capsys.readouterr().out
