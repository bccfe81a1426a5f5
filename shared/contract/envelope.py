"""CloudEvents 1.0 structured-mode envelope: decode a Kafka record into a typed event, or say why not.

Every failure carries one of the contract's DLQ ``error-code`` values, so a consumer can
dead-letter it with the reason and move on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from shared.contract.events import TOPIC_TYPES, TYPE_OF, Payload

CONTENT_TYPE = "application/cloudevents+json"
MAX_RECORD_BYTES = 256 * 1024
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


def decode(value: bytes | None, topic: str, agencies: frozenset[str] | None = None) -> CloudEvent:
    """Decode one record value read from ``topic`` (the contract's name, without any prefix);
    raise DecodeError with the contract's code on any failure."""
    if value is None:
        raise DecodeError("malformed_json", "record has no value")
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
        if isinstance(source, str) and isinstance(id, str) and source and id:
            exc.key = (source, id)
        raise


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
        raise DecodeError("not_cloudevent", f"specversion {obj['specversion']!r} is not '1.0'")
    for attr in ("id", "source", "type", "subject", "agencyid", "time"):
        if not isinstance(obj[attr], str) or not obj[attr]:
            raise DecodeError("not_cloudevent", f"attribute {attr} must be a non-empty string")
    try:
        time = dt.datetime.fromisoformat(obj["time"])
    except ValueError:
        raise DecodeError("not_cloudevent", f"time {obj['time']!r} is not RFC 3339") from None
    if time.tzinfo is None:
        raise DecodeError("not_cloudevent", f"time {obj['time']!r} has no UTC offset")
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
