"""The contract in code: envelope decoding, identity, schemas and their breaking-change check."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from shared.contract import schemas, topics
from shared.contract.envelope import DecodeError, decode, encode_raw
from shared.contract.identity import check_digit, normalise_national_id, person_id

ROOT = Path(__file__).resolve().parents[2]

UP = "skills.training.upstream"
AGENCIES = frozenset({"city-a", "suqian", "baoshan", "beijing"})

# EVENTS.md §4.1, the example exactly as written.
EXAMPLE = b"""{
  "specversion": "1.0", "id": "INST-0001-evt-000001", "source": "/institutions/INST-0001",
  "type": "skills.training.TraineeEnrolled.v1", "time": "2026-03-01T09:00:00+08:00",
  "subject": "INST-0001/2026/000123", "agencyid": "suqian",
  "data": {
    "enrollment_ref": "INST-0001/2026/000123",
    "institution_id": "INST-0001",
    "trainee": {
      "national_id": "321302199001011234",
      "name": "\xe5\xbc\xa0\xe4\xb8\x89",
      "categories": ["rural_migrant", "non_continuing_graduate"],
      "rural": true,
      "hukou_agency": "suqian",
      "insured_months": 14,
      "hired_on": "2026-01-10"
    },
    "employer": {"id": "91321300MA1XXXXX0X", "insured": true, "hardship_certified": false,
                 "sector": null, "employee_model_domestic": false},
    "course": {
      "course_id": "C-ELEC-3", "occupation_code": "6-31-01-03", "occupation_name": "x",
      "level": "intermediate", "training_type": "skill_upgrade",
      "planned_hours": 80, "start_date": "2026-03-01", "end_date": "2026-03-20",
      "project_based": false, "program_years": null
    },
    "fee": {"amount_fen": 150000, "payer": "employer"}
  }
}"""


def test_the_contract_example_is_accepted_as_written() -> None:
    event = decode(EXAMPLE, UP, AGENCIES)
    assert event.type == "skills.training.TraineeEnrolled.v1"
    assert event.key == ("/institutions/INST-0001", "INST-0001-evt-000001")
    assert event.data.course.planned_hours == 80  # type: ignore[attr-defined]  # the payload of that type


def test_the_upstream_and_output_certificate_revoked_are_told_apart_by_topic() -> None:
    data = {"certificate_id": "C-1", "revoked_on": "2026-06-01", "reason": "fraud"}
    value = encode_raw("skills.assessment.CertificateRevoked.v1", data, id="1", source="/a",
                       subject="C-1", agencyid="suqian", time="2026-06-01T00:00:00Z")
    assert decode(value, "skills.assessment.upstream").data.certificate_id == "C-1"  # type: ignore[attr-defined]  # the payload of that type
    with pytest.raises(DecodeError) as exc:
        decode(value, "skills.assessment.events")
    assert exc.value.code == "schema_violation"


def _with(**changes: object) -> bytes:
    obj = orjson.loads(EXAMPLE)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"{not json", "malformed_json"),
        (None, "malformed_json"),
        (b"[1, 2]", "not_cloudevent"),
        (_with(specversion="0.3"), "not_cloudevent"),
        (_with(id=None), "not_cloudevent"),
        (_with(time="yesterday"), "not_cloudevent"),
        (_with(type="skills.training.Unheard.v1"), "unknown_type"),
        (_with(type="skills.subsidy.SubsidyGranted.v1"), "unknown_type"),
        (_with(agencyid="atlantis"), "unknown_agency"),
        (_with(data={"enrollment_ref": "x"}), "schema_violation"),
        (_with(data="text"), "schema_violation"),
        (b" " * (256 * 1024 + 1), "too_large"),
    ],
)
def test_each_kind_of_bad_record_is_refused_with_its_code(value: bytes | None, code: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(value, UP, AGENCIES)
    assert exc.value.code == code


def test_schema_violation_details_carry_no_input_values() -> None:
    obj = orjson.loads(EXAMPLE)
    obj["data"]["trainee"]["insured_months"] = "id 321302199001011234"
    with pytest.raises(DecodeError) as exc:
        decode(orjson.dumps(obj), UP, AGENCIES)
    assert "321302199001011234" not in exc.value.detail


def test_national_ids_follow_gb_11643() -> None:
    assert check_digit("32130219900101123") == "4"
    assert normalise_national_id("11010519491231002x") == "11010519491231002X"
    for bad in ("321302199001011235", "32130219900101123", "3213021990010112345",
                "32130219901301123X", "A21302199001011234"):
        with pytest.raises(ValueError):
            normalise_national_id(bad)


def test_person_id_is_the_contracts_hmac() -> None:
    import hashlib
    import hmac
    expected = "p_" + hmac.new(b"s", b"11010519491231002X", hashlib.sha256).hexdigest()[:32]
    assert person_id("11010519491231002x", "s") == expected
    assert person_id("11010519491231002X", "s") != person_id("11010519491231002X", "t")


def test_the_checked_in_schemas_match_the_code() -> None:
    assert schemas.checked_in(), "run `make schemas`"
    assert schemas.breaking_changes(schemas.checked_in(), schemas.current()) == []
    assert set(schemas.current()) == set(schemas.checked_in()), "run `make schemas`"


def test_the_breaking_change_check_catches_removals_and_passes_additions() -> None:
    old = schemas.current()
    key = "skills.subsidy.events/skills.subsidy.SubsidyGranted.v1"
    added = copy.deepcopy(old)
    added[key]["properties"]["note"] = {"type": "string"}
    assert schemas.breaking_changes(old, added) == []
    removed = copy.deepcopy(old)
    del removed[key]["properties"]["amount_fen"]
    assert any("amount_fen" in p for p in schemas.breaking_changes(old, removed))
    required = copy.deepcopy(old)
    required[key]["required"].append("note")
    assert schemas.breaking_changes(old, required)
    retyped = copy.deepcopy(old)
    retyped[key]["properties"]["amount_fen"]["type"] = "string"
    assert schemas.breaking_changes(old, retyped)
    gone = copy.deepcopy(old)
    del gone[key]
    assert schemas.breaking_changes(old, gone)


def test_the_asyncapi_document_names_every_topic_and_payload() -> None:
    from shared.contract.asyncapi import build
    from shared.contract.events import TOPIC_TYPES

    document = build().to_specification().to_jsonable()
    addresses = {c["address"] for c in document["channels"].values()}
    models = set(document["components"]["schemas"])
    for topic, types in TOPIC_TYPES.items():
        assert topic in addresses
        assert {m.__name__ for m in types.values()} <= models
    assert {topics.dlq(s) for s in ("enrollment", "assessment", "subsidy")} <= addresses


def test_the_checked_in_asyncapi_document_is_the_one_the_services_declare() -> None:
    """docs/asyncapi.json is generated from the services' brokers (``make asyncapi``)."""
    from shared.contract.asyncapi import build

    checked_in = orjson.loads((ROOT / "docs" / "asyncapi.json").read_bytes())
    assert build().to_specification().to_jsonable() == checked_in, "run `make asyncapi`"
