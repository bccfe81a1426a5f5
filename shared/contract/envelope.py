"""CloudEvents 1.0 structured-mode envelope: decode a Kafka record into a typed event, or say why not.

Every failure carries one of the contract's DLQ ``error-code`` values, so a consumer can
dead-letter it with the reason and move on.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from shared.contract.events import TOPIC_TYPES, TYPE_OF, Payload

CONTENT_TYPE = "application/cloudevents+json"
MAX_RECORD_BYTES = 256 * 1024
# What PostgreSQL would refuse is refused here, with its own code, so that no record can fail
# its batch's transaction every time (a partition that never moves again). `id` and `source`
# together are the inbox's primary key: 1024 bytes each stays under a btree row's 2704 bytes.
MAX_ID_BYTES = 1024  # id, source, subject
MAX_KEY_BYTES = 1024  # the Kafka key (the subject: an enrollment_ref, a person_id, ...)
BIGINT = 2**63 - 1  # money and counts are stored as bigint at most
IDENTIFIERS = ("id", "source", "subject", "agencyid")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "agencyid", "data")
_required = operator.itemgetter(*REQUIRED_ATTRIBUTES)


class DecodeError(Exception):
    """A record that cannot be accepted; ``code`` is the contract's DLQ error-code.

    ``key`` is the record's (source, id) when it has them as strings, so that the same bad
    record delivered twice is dead-lettered once (EVENTS.md §1: the idempotency key).
    """

    def __init__(self, code: str, detail: str, key: tuple[str, str] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.key = key


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One decoded event: the envelope attributes and the validated payload."""

    id: str
    source: str
    type: str
    time: dt.datetime
    subject: str
    agencyid: str
    data: Payload
    traceparent: str | None = None
    digest: bytes = b""  # sha256 of the record value, for conflicting-duplicate detection

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key (source, id)."""
        return (self.source, self.id)


def decode(
    value: bytes | None, topic: str, agencies: frozenset[str] | None = None,
    key: bytes | None = None,
) -> CloudEvent:
    """Decode one record value read from ``topic`` (the contract's name, without any prefix)
    and, when given, check its Kafka ``key``; raise DecodeError with the contract's code (or one
    the README documents) on any failure."""
    if value is None:
        raise DecodeError("malformed_json", "record has no value")
    if key is not None:
        _check_key(key)
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError("too_large", f"record is {len(value)} bytes, limit {MAX_RECORD_BYTES}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("malformed_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_cloudevent", "record value is JSON but not an object")
    try:
        return _decode_object(obj, value, topic, agencies)
    except DecodeError as exc:
        source, id = obj.get("source"), obj.get("id")
        if _storable(source) and _storable(id):
            exc.key = (source, id)  # type: ignore[assignment]  # _storable: both are str
        raise


def _storable(text: Any) -> bool:
    """A (source, id) part that can key the dead-letter table: a short text without control
    characters (the codes above refuse the rest, which are then keyed by position only)."""
    return (isinstance(text, str) and 0 < len(text.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
            and not _CONTROL.search(text) and text.encode("utf-8", "replace").decode() == text)


def _decode_object(obj: dict[str, Any], value: bytes, topic: str,
                   agencies: frozenset[str] | None) -> CloudEvent:
    try:
        present = None not in _required(obj)  # one C call on the hot path
    except KeyError:
        present = False
    if not present:
        missing = [a for a in REQUIRED_ATTRIBUTES if obj.get(a) is None]
        raise DecodeError("not_cloudevent", f"missing attributes: {', '.join(missing)}")
    if obj["specversion"] != "1.0":
        raise DecodeError("not_cloudevent", f"specversion {obj['specversion']!r:.60} is not '1.0'")
    for attr in ("id", "source", "type", "subject", "agencyid", "time"):
        if not isinstance(obj[attr], str) or not obj[attr]:
            raise DecodeError("not_cloudevent", f"attribute {attr} must be a non-empty string")
    for attr in IDENTIFIERS:
        _check_identifier(attr, obj[attr])
    try:
        time = dt.datetime.fromisoformat(obj["time"])
    except ValueError:
        raise DecodeError("not_cloudevent", f"time {obj['time']!r:.60} is not RFC 3339") from None
    if time.tzinfo is None:
        raise DecodeError("not_cloudevent", f"time {obj['time']!r:.60} has no UTC offset")
    model = TOPIC_TYPES.get(topic, {}).get(obj["type"])
    if model is None:
        raise DecodeError(
            "unknown_type", f"type {obj['type'][:120]!r} is not a contract type of {topic}"
        )
    if agencies is not None and obj["agencyid"] not in agencies:
        raise DecodeError("unknown_agency", f"agency {obj['agencyid'][:60]!r} has no policy here")
    if not isinstance(obj["data"], dict):
        raise DecodeError("schema_violation", "data must be an object")
    try:
        data = model.model_validate(obj["data"])
    except ValidationError as exc:
        raise DecodeError("schema_violation", _summarise(exc)) from None
    _check_integers(data)
    if b"\\u0000" in value:  # JSON can only carry a NUL as this escape: the rare slow path
        _check_no_nul(data)
    traceparent = obj.get("traceparent")
    return CloudEvent(
        id=obj["id"],
        source=obj["source"],
        type=obj["type"],
        time=time,
        subject=obj["subject"],
        agencyid=obj["agencyid"],
        data=data,
        traceparent=traceparent if isinstance(traceparent, str) else None,
        digest=hashlib.sha256(value).digest(),
    )


def _check_key(key: bytes) -> None:
    if len(key) > MAX_KEY_BYTES:
        raise DecodeError("invalid_key", f"the Kafka key is {len(key)} bytes, limit {MAX_KEY_BYTES}")
    if _CONTROL_BYTES.search(key):
        raise DecodeError("invalid_key", "the Kafka key holds a control character (0x00-0x1f, 0x7f)")


def _check_identifier(attr: str, text: str) -> None:
    ascii = text.isascii()
    if not (ascii and text.isprintable()) and _CONTROL.search(text):
        raise DecodeError("control_character", f"attribute {attr} holds a control character")
    size = len(text) if ascii else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise DecodeError("too_long", f"attribute {attr} is {size} bytes, limit {MAX_ID_BYTES}")


def _check_integers(data: Payload) -> None:
    """Every integer the payload keeps fits PostgreSQL's bigint (JSON and Python have no bound;
    a lax ``int`` field also takes an integral float such as 1e19)."""
    top, nested = _integer_readers(type(data))
    if top is not None:
        for number in top(data):
            if type(number) is int and not -BIGINT - 1 <= number <= BIGINT:
                break
        else:
            top = None  # the common case: every top-level integer fits
    if top is None and not nested:
        return
    for path in _integer_paths(type(data)):
        value: Any = data
        for name in path:
            value = getattr(value, name)
            if value is None:
                break
        if type(value) is int and not -BIGINT - 1 <= value <= BIGINT:
            raise DecodeError("integer_out_of_range",
                              f"{'.'.join(path)} is beyond the 64-bit integer range")


@functools.cache
def _integer_readers(model: type[Payload]) -> tuple[Callable[[Any], tuple[Any, ...]] | None, bool]:
    """One C call reading every top-level integer field of ``model`` (as a tuple), and whether
    it has nested ones (read by the general walk): per record, once per model type."""
    names = [path[0] for path in _integer_paths(model) if len(path) == 1]
    nested = any(len(path) > 1 for path in _integer_paths(model))
    if not names:
        return None, nested
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return (lambda data: (getter(data),)), nested
    return getter, nested


@functools.cache
def _integer_paths(model: type[Payload]) -> tuple[tuple[str, ...], ...]:
    """Attribute paths to every field of ``model`` (nested payloads included) that may hold an
    int, computed once per model: the hot path reads only those few attributes."""
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        for kind in _kinds(field.annotation):
            if kind is int:
                paths.append((name,))
            elif isinstance(kind, type) and issubclass(kind, Payload):
                paths += [(name, *inner) for inner in _integer_paths(kind)]
    return tuple(dict.fromkeys(paths))


def _kinds(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [k for arg in typing.get_args(annotation) for k in _kinds(arg)]
    return [annotation]


def _check_no_nul(value: Any, path: str = "data") -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it in anything the payload keeps
    (fields the model ignores are dropped, so they may hold anything)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise DecodeError("control_character", f"{path} holds a NUL character")
    elif isinstance(value, Payload):
        for name in type(value).model_fields:
            _check_no_nul(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_no_nul(item, f"{path}.{i}")
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_no_nul(k, f"{path} (a key)")
            _check_no_nul(item, f"{path}.{k}" if "\x00" not in str(k) else path)


def _summarise(exc: ValidationError) -> str:
    # Field paths and messages only: input values may hold personal data and must not reach
    # DLQ headers.
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)[:500]


def encode(
    data: Payload,
    *,
    id: str,
    source: str,
    subject: str,
    agencyid: str,
    time: dt.datetime | str,
    traceparent: str | None = None,
) -> bytes:
    """A payload wrapped in its envelope, as the bytes of a Kafka record value."""
    return encode_raw(
        TYPE_OF[type(data)],
        data.model_dump(mode="json"),
        id=id,
        source=source,
        subject=subject,
        agencyid=agencyid,
        time=time,
        traceparent=traceparent,
    )


def encode_raw(
    type: str,
    data: dict[str, Any],
    *,
    id: str,
    source: str,
    subject: str,
    agencyid: str,
    time: dt.datetime | str,
    traceparent: str | None = None,
) -> bytes:
    """Like :func:`encode` for a payload already in JSON form."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": type,
        "time": time if isinstance(time, str) else time.isoformat(),
        "subject": subject,
        "agencyid": agencyid,
        "datacontenttype": "application/json",
        "data": data,
    }
    if traceparent:
        envelope["traceparent"] = traceparent
    return orjson.dumps(envelope)


def headers() -> list[tuple[str, bytes]]:
    """Kafka record headers every event carries."""
    return [("content-type", CONTENT_TYPE.encode())]
