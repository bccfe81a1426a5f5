"""The pure rules of the assessment service: levels, certificate ids, duplicates, revocation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from services.assessment import domain
from services.assessment.domain import Refusal, Repeat, Result


def result(**over: object) -> Result:
    fields: dict[str, object] = dict(
        assessment_ref="EV-07/2026/5531", evaluator_id="EV-07", person_id="p_" + "a" * 32,
        enrollment_ref="INST-0001/2026/000123", occupation_code="6-31-01-03",
        level="intermediate", certificate_kind="skill_level", passed=True,
        theory_score=78.5, practical_score=81, assessed_on=dt.date(2026, 3, 25),
    )
    fields.update(over)
    return Result(**fields)  # type: ignore[arg-type]  # fields by name, validated by pydantic


@pytest.mark.parametrize("kind", ["qualification", "skill_level"])
def test_a_levelled_certificate_without_a_level_is_refused_as_level_required(kind: str) -> None:
    with pytest.raises(Refusal) as caught:
        domain.certificate_level(kind, None)
    assert caught.value.code == "level_required"


@pytest.mark.parametrize(
    "kind", ["special_operation", "special_equipment", "special_ability", "training_completion"]
)
def test_a_level_sent_on_a_level_less_certificate_is_ignored(kind: str) -> None:
    # POLICY.md §5 "Certificate levels": treated as null, not a dead letter.
    assert domain.certificate_level(kind, "junior") is None
    assert domain.certificate_level(kind, None) is None


def test_a_levelled_certificate_keeps_its_level() -> None:
    assert domain.certificate_level("skill_level", "senior") == "senior"
    assert domain.certificate_level("qualification", "junior") == "junior"


def test_the_certificate_id_is_derived_from_the_assessment_ref_alone() -> None:
    first = domain.certificate_id("EV-07/2026/5531")
    assert first == domain.certificate_id("EV-07/2026/5531")
    assert re.fullmatch(r"CERT-[0-9A-F]{20}", first)
    assert first != domain.certificate_id("EV-07/2026/5532")


def test_a_passed_assessment_issues_one_certificate_on_the_day_it_was_assessed() -> None:
    certificate = domain.issue(result())
    assert certificate is not None
    assert certificate.certificate_id == domain.certificate_id("EV-07/2026/5531")
    assert certificate.issued_on == dt.date(2026, 3, 25)
    assert certificate.status == "valid"


def test_a_failed_assessment_issues_no_certificate() -> None:
    assert domain.issue(result(passed=False)) is None


def test_the_same_content_is_a_repeat_and_different_content_a_conflict() -> None:
    digest = result().digest()
    assert domain.compare(None, digest) is Repeat.NEW
    assert domain.compare(digest, result().digest()) is Repeat.SAME
    assert domain.compare(digest, result(practical_score=81.0).digest()) is Repeat.SAME
    for change in ({"passed": False}, {"level": "senior"}, {"assessed_on": dt.date(2026, 3, 26)},
                   {"person_id": "p_" + "b" * 32}, {"enrollment_ref": None}):
        assert domain.compare(digest, result(**change).digest()) is Repeat.CONFLICT, change


def test_the_digest_never_holds_the_person_in_clear() -> None:
    fields = {f.name for f in dataclasses.fields(Result)}
    assert "national_id" not in fields and "name" not in fields


def test_a_certificate_is_revoked_once() -> None:
    certificate = domain.issue(result())
    assert certificate is not None
    assert domain.revoke(certificate, dt.date(2026, 6, 1), "fraud") is True
    assert domain.revoke(certificate, dt.date(2026, 7, 1), "again") is False
    assert (certificate.status, certificate.revoked_on, certificate.revoke_reason) == (
        "revoked", dt.date(2026, 6, 1), "fraud")
