"""Property-based fuzzing of the decoder and the pure entry points: hostile input only ever errs."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.envelope import MAX_RECORD_BYTES, CloudEvent, DecodeError, decode, encode_raw
from shared.contract.identity import normalise_national_id, person_id
from services.assessment import domain as assessment
from services.subsidy.contract import FactError, fact_of
from services.subsidy.engine.domain import decide
from services.subsidy.engine.policy import PolicyError
from services.subsidy.engine.state import BudgetLedger, PersonState
from services.subsidy.policy_files import load_policy_dir, parse_policy
from tests import builders as b
from tests.harness import ROOT

pytestmark = pytest.mark.security

CODES = {"malformed_json", "not_cloudevent", "unknown_type", "schema_violation", "unknown_agency",
         "too_large", "control_character", "too_long", "integer_out_of_range", "invalid_key"}
AGENCIES = frozenset({"city-a", "suqian", "baoshan", "beijing"})
POLICIES = load_policy_dir(ROOT / "services/subsidy/policies")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


def valid_events() -> list[tuple[str, bytes]]:
    """One well-formed record of each kind the services read, as (topic, value)."""
    nid, ref = b.national_id(), b.ref()
    upstream = [
        ("skills.training.TraineeEnrolled.v1", b.enrolled(ref, nid)),
        ("skills.training.AttendanceRecorded.v1", b.attendance(ref, "2026-03-02")),
        ("skills.training.TrainingFinished.v1", b.finished(ref)),
        ("skills.training.EnrollmentWithdrawn.v1", b.withdrawn(ref)),
        ("skills.training.WorkTrainingMonthRecorded.v1", b.month(ref, "2026-03")),
    ]
    out = [(topics.TRAINING_UPSTREAM, encode_raw(t, d, id="e1", source="/i", subject=ref,
                                                 agencyid="suqian", time="2026-03-01T09:00:00+08:00"))
           for t, d in upstream]
    result = {"assessment_ref": "EV/1", "evaluator_id": "EV", "national_id": nid, "enrollment_ref": ref,
              "occupation_code": "6-31-01-03", "level": "intermediate", "certificate_kind": "skill_level",
              "passed": True, "theory_score": 70.0, "practical_score": 80, "assessed_on": "2026-03-25"}
    out.append((topics.ASSESSMENT_UPSTREAM, encode_raw(
        "skills.assessment.AssessmentResultRecorded.v1", result, id="a1", source="/e", subject="EV/1",
        agencyid="suqian", time="2026-03-25T09:00:00+08:00")))
    out += internal_events(nid, ref)
    return out


def internal_events(nid: str, ref: str) -> list[tuple[str, bytes]]:
    pid = b.pid(nid)
    course = {"course_id": "C-ELEC-3", "occupation_code": "6-31-01-03", "occupation_name": "电工",
              "level": "intermediate", "training_type": "skill_upgrade", "planned_hours": 80,
              "start_date": "2026-03-01", "end_date": "2026-03-20", "project_based": False,
              "program_years": None}
    accepted = {"enrollment_ref": ref, "person_id": pid, "institution_id": "INST-T",
                "categories": ["rural_migrant"], "rural": True, "hukou_agency": "suqian",
                "insured_months": 14, "hired_on": "2026-01-10", "employer": None, "course": course,
                "fee": {"amount_fen": 150000, "payer": "person"}, "accepted_on": "2026-03-01"}
    completed = {"enrollment_ref": ref, "person_id": pid, "course": course, "hours_attended": 80,
                 "days_attended": 10, "attendance_rate": 1.0, "completed_on": "2026-03-20"}
    cert = {"certificate_id": "CERT-1", "assessment_ref": "EV/1", "person_id": pid,
            "enrollment_ref": ref, "occupation_code": "6-31-01-03", "level": "intermediate",
            "certificate_kind": "skill_level", "issued_on": "2026-03-25"}
    return [
        (topics.ENROLLMENT_EVENTS, encode_raw("skills.enrollment.EnrollmentAccepted.v1", accepted,
                                              id="x1", source="/services/enrollment", subject=pid,
                                              agencyid="suqian", time="2026-03-01T09:00:00+08:00")),
        (topics.ENROLLMENT_EVENTS, encode_raw("skills.enrollment.TrainingCompleted.v1", completed,
                                              id="x2", source="/services/enrollment", subject=pid,
                                              agencyid="suqian", time="2026-03-20T09:00:00+08:00")),
        (topics.ASSESSMENT_EVENTS, encode_raw("skills.assessment.CertificateIssued.v1", cert,
                                              id="x3", source="/services/assessment", subject=pid,
                                              agencyid="suqian", time="2026-03-25T09:00:00+08:00")),
    ]


VALID = valid_events()


def decode_or_dead_letter(value: bytes | None, topic: str) -> CloudEvent | None:
    """What a consumer does: an event, or a DecodeError carrying a contract code (None)."""
    try:
        return decode(value, topic, AGENCIES)
    except DecodeError as exc:
        assert exc.code in CODES, exc.code
        assert len(exc.detail) <= 1000
        return None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid record with one part replaced, removed or corrupted."""
    topic, value = draw(st.sampled_from(VALID))
    event = orjson.loads(value)
    how = draw(st.sampled_from(["attribute", "data_field", "drop", "bytes"]))
    if how == "bytes":
        raw = bytearray(value)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return topic, bytes(raw)
    holder = event if how == "attribute" else event["data"]
    if how == "data_field" and "trainee" in holder and draw(st.booleans()):
        holder = holder["trainee"]
    key = draw(st.sampled_from(sorted(holder)))
    if how == "drop":
        del holder[key]
    else:
        holder[key] = draw(json_values)
    return topic, json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(topics.ALL_TOPICS))
def test_random_bytes_are_decoded_or_refused_with_a_contract_code(value, topic) -> None:
    decode_or_dead_letter(value, topic)


@FUZZ
@given(json_values, st.sampled_from(topics.ALL_TOPICS))
def test_random_json_is_decoded_or_refused_with_a_contract_code(value, topic) -> None:
    # The standard library writes what orjson will not (huge integers, lone surrogates).
    decode_or_dead_letter(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"), topic)


@FUZZ
@given(mutated())
def test_mutated_valid_events_are_decoded_or_refused_with_a_contract_code(record) -> None:
    topic, value = record
    decode_or_dead_letter(value, topic)


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid record with one attribute or (nested) data field set to what PostgreSQL refuses:
    a string with NUL or another control character, a long string, an integer beyond bigint."""
    topic, value = draw(st.sampled_from(VALID))
    event = orjson.loads(value)
    holders = [event, event["data"], *(v for v in event["data"].values() if isinstance(v, dict))]
    holder = draw(st.sampled_from(holders))
    key = draw(st.sampled_from(sorted(k for k in holder if k not in ("data", "specversion"))))
    holder[key] = draw(
        st.builds(lambda a, c, b: a + c + b, st.text(max_size=8),
                  st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\x85"]), st.text(max_size=8))
        | st.text(min_size=1025, max_size=1100, alphabet="ab")
        | st.integers(min_value=2**63, max_value=2**64 - 1)
        | st.integers(min_value=2**63).map(float)
    )
    return topic, json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


@FUZZ
@given(mutated() | poisoned())
def test_a_decoded_event_holds_nothing_postgresql_would_refuse(record) -> None:
    """No NUL in a kept string, no control character or over-long envelope identifier, no
    integer beyond bigint: what would fail the batch's transaction every time."""
    topic, value = record
    event = decode_or_dead_letter(value, topic)
    if event is None:
        return
    for attr in (event.id, event.source, event.subject, event.agencyid):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in attr)
        assert len(attr.encode("utf-8", "surrogatepass")) <= 1024

    def storable(value: Any) -> None:
        if isinstance(value, str):
            assert "\x00" not in value
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            assert -(2**63) <= value < 2**63
        elif isinstance(value, dict):
            for k, v in value.items():
                storable(k)
                storable(v)
        elif isinstance(value, list):
            for v in value:
                storable(v)

    storable(ev.dump(event.data))


def test_every_unmutated_event_decodes() -> None:
    assert all(decode_or_dead_letter(value, topic) is not None for topic, value in VALID)


def test_a_record_over_256_kib_is_refused_as_too_large_before_parsing() -> None:
    with pytest.raises(DecodeError) as refused:
        decode(b"{" + b" " * MAX_RECORD_BYTES + b"}", topics.TRAINING_UPSTREAM, AGENCIES)
    assert refused.value.code == "too_large"


@FUZZ
@given(st.text(max_size=30) | st.from_regex(r"\A[0-9]{17}[0-9Xx]\Z"))
def test_a_national_id_is_normalised_or_refused_with_a_value_error(value) -> None:
    try:
        nid = normalise_national_id(value)
    except ValueError:
        return
    assert person_id(nid, "secret").startswith("p_")


@FUZZ
@given(st.text(max_size=30), st.none() | st.text(max_size=20), st.text(max_size=60))
def test_assessment_level_checks_and_certificate_ids_take_any_text(kind, level, assessment_ref) -> None:
    try:
        assert assessment.certificate_level(kind, level) in {level, None}
    except assessment.Refusal as exc:
        assert exc.code == "level_required"
    try:
        cert = assessment.certificate_id(assessment_ref)
    except UnicodeEncodeError:
        return  # lone surrogates: unreachable, the JSON decoder refuses them first
    assert cert.startswith("CERT-") and len(cert) == 25


@FUZZ
@given(st.data())
def test_the_subsidy_engine_decides_any_internal_event_the_decoder_accepts(data) -> None:
    """Decode, build the fact, decide: the subsidy service's whole pure path, on mutations."""
    topic, value = data.draw(mutated().filter(lambda r: r[0] in (topics.ENROLLMENT_EVENTS,
                                                                  topics.ASSESSMENT_EVENTS)))
    event = decode_or_dead_letter(value, topic)
    if event is None:
        return
    try:
        fact = fact_of(event)
    except FactError:
        return
    if fact is None:
        return
    decide(POLICIES, PersonState.empty(fact.person_id), fact, BudgetLedger())


@FUZZ
@given(json_values)
def test_a_policy_document_is_parsed_or_refused_with_a_policy_error(raw: Any) -> None:
    try:
        parse_policy(raw, source="fuzz.json", content_hash="0" * 64)
    except PolicyError:
        pass
