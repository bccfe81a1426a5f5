"""What PostgreSQL would refuse is refused at decode, each with its documented dead-letter code;
and which database errors are a record's fault (isolate it) and which are transient (retry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest

from shared.contract.envelope import MAX_ID_BYTES, MAX_KEY_BYTES, DecodeError, decode
from shared.runtime import db
from tests.unit.test_contract import AGENCIES, EXAMPLE, UP

Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        holder = event
        for name in parents:
            holder = holder[name]
        holder[last] = value
    return change


def _decode(change: Change, key: bytes | None = None) -> Any:
    event = orjson.loads(EXAMPLE)
    change(event)
    # The standard library writes what orjson will not (an integer beyond 64 bits).
    return decode(json.dumps(event, ensure_ascii=False).encode(), UP, AGENCIES, key)


@pytest.mark.parametrize(("change", "code"), [
    (_set("id", "evt\x00001"), "control_character"),
    (_set("source", "/institutions/\x00"), "control_character"),
    (_set("subject", "INST-0001/2026/\n000123"), "control_character"),
    (_set("id", "evt\x7f"), "control_character"),
    (_set("id", "evt\x85"), "control_character"),  # C1 control (NEL)
    (_set("data.course.occupation_name", "电\x00工"), "control_character"),
    (_set("data.trainee.name", "\x00"), "control_character"),
    (_set("id", "x" * (MAX_ID_BYTES + 1)), "too_long"),
    (_set("id", "证" * (MAX_ID_BYTES // 3 + 1)), "too_long"),  # counted in UTF-8 bytes
    (_set("source", "/" + "s" * MAX_ID_BYTES), "too_long"),
    (_set("subject", "s" * (MAX_ID_BYTES + 1)), "too_long"),
    (_set("id", "x" * MAX_ID_BYTES), None),
    (_set("data.fee.amount_fen", 2**63), "integer_out_of_range"),
    (_set("data.fee.amount_fen", 2**63 - 1), None),
    (_set("data.trainee.insured_months", 2**64 - 1), "integer_out_of_range"),
    (_set("data.course.planned_hours", 2**63), "integer_out_of_range"),
    (_set("data.fee.amount_fen", 2**64), "schema_violation"),  # a float to JSON: not an integer
])
def test_values_the_database_would_refuse_are_refused_with_their_code(change: Change, code: str | None) -> None:
    if code is None:
        assert _decode(change).id
        return
    with pytest.raises(DecodeError) as refused:
        _decode(change)
    assert refused.value.code == code
    assert "\x00" not in refused.value.detail  # headers are stored as jsonb


def test_a_nul_in_a_field_the_model_ignores_is_not_a_reason_to_refuse() -> None:
    assert _decode(_set("data.course.future_field", "a\x00b")).id


@pytest.mark.parametrize(("key", "ok"), [
    (b"INST-0001/2026/000123", True),
    (None, True),
    ("证书/2026".encode(), True),
    (b"INST-0001/\x002026", False),
    (b"INST-0001/\r\n", False),
    (b"k" * MAX_KEY_BYTES, True),
    (b"k" * (MAX_KEY_BYTES + 1), False),
])
def test_a_kafka_key_with_a_control_byte_or_too_long_is_refused_as_invalid_key(key: bytes | None, ok: bool) -> None:
    if ok:
        assert _decode(lambda e: None, key).id
        return
    with pytest.raises(DecodeError) as refused:
        _decode(lambda e: None, key)
    assert refused.value.code == "invalid_key"


@pytest.mark.parametrize("exc", [
    asyncpg.CharacterNotInRepertoireError("NUL in text"),  # 22021
    asyncpg.UntranslatableCharacterError("\\u0000 in jsonb"),  # 22P05
    asyncpg.DataError("value out of int32 range"),  # 22000, also asyncpg's argument encoding
    asyncpg.NumericValueOutOfRangeError("overflow"),  # 22003
    asyncpg.UniqueViolationError("duplicate key"),  # 23505
    asyncpg.CheckViolationError("check"),  # 23514
    asyncpg.ProgramLimitExceededError("index row size exceeds maximum"),  # 54000
])
def test_data_integrity_and_limit_errors_are_the_records_fault(exc: BaseException) -> None:
    assert db.refused(exc)


@pytest.mark.parametrize("exc", [
    asyncpg.SerializationError("could not serialize"),  # 40001
    asyncpg.DeadlockDetectedError("deadlock"),  # 40P01
    asyncpg.AdminShutdownError("terminating connection"),  # 57P01
    asyncpg.TooManyConnectionsError("too many clients"),  # 53300
    asyncpg.UndefinedColumnError("no such column"),  # 42703: the code's or schema's fault
    asyncpg.ConnectionDoesNotExistError("closed"),
    ConnectionRefusedError(),
    TimeoutError(),
])
def test_connection_contention_and_shutdown_errors_are_transient(exc: BaseException) -> None:
    assert not db.refused(exc)


@pytest.mark.parametrize(("fields", "path"), [
    (dict(wages_fen=2**63), "wages_fen"),  # the one top-level integer
    (dict(year=2026, budget_fen=1, committed_fen=-(2**63) - 1, threshold_bp=8000), "committed_fen"),
    (dict(year=2026, budget_fen=1, committed_fen=1, threshold_bp=2**64), "threshold_bp"),
])
def test_a_top_level_integer_beyond_bigint_is_refused_whichever_field(fields: dict[str, Any], path: str) -> None:
    # The top-level fields are read in one call per model (envelope._integer_readers); every
    # one of them is checked, not only the first.
    from shared.contract import envelope, events

    model: Any = events.WorkTrainingMonthRecorded if "wages_fen" in fields else events.BudgetThresholdReached
    with pytest.raises(DecodeError) as refused:
        envelope._check_integers(model.model_construct(**fields))
    assert refused.value.code == "integer_out_of_range"
    assert refused.value.detail.startswith(path)
    fitting = {k: (v if abs(v) < 2**63 else 2**63 - 1) for k, v in fields.items()}
    envelope._check_integers(model.model_construct(**fitting))
