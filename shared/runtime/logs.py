"""Structured JSON log lines: service, message, the current event's context and trace id, and extras.

The context (event type, ids, W3C trace id) lives in a contextvar, so every line logged while a
batch or an event is being handled carries it without being passed around::

    with logs.context(**logs.event_fields(event)):
        ...  # every log line here has event_type, event_id, source, subject, agency, trace_id
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("log_context", default={})  # noqa: B039  # never mutated
# version-traceid-parentid-flags (W3C Trace Context §3.2); all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_NO_TRACE, _NO_PARENT = "0" * 32, "0" * 16  # all zeros: invalid (W3C Trace Context)


class EventLike(Protocol):
    # Read-only members, so that frozen events (CloudEvent) match.
    @property
    def id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def agencyid(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


def trace_id(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a W3C ``traceparent`` header, or None when absent or invalid."""
    if not traceparent:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None:
        return None
    version, trace, parent, _ = match.groups()
    if version == "ff" or trace == _NO_TRACE or parent == _NO_PARENT:
        return None
    return trace


def event_fields(event: EventLike) -> dict[str, Any]:
    """The log context of one consumed event: its type, ids, agency and trace id."""
    fields: dict[str, Any] = {
        "event_type": event.type, "event_id": event.id, "source": event.source,
        "subject": event.subject, "agency": event.agencyid,
    }
    trace = trace_id(event.traceparent)
    if trace is not None:
        fields["trace_id"] = trace
    return fields


def batch_fields(events: list[EventLike]) -> dict[str, Any]:
    """The log context of a batch: its size and the distinct trace ids it carries (at most 20)."""
    traces = sorted({t for e in events if (t := trace_id(e.traceparent)) is not None})
    fields: dict[str, Any] = {"batch_events": len(events)}
    if traces:
        fields["trace_ids"] = traces[:20]
    return fields


def bind(**fields: Any) -> Any:
    """Add fields to the current context; returns the token for :func:`unbind`."""
    return _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: Any) -> None:
    _CONTEXT.reset(token)


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block carries ``fields`` (None values are left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current() -> dict[str, Any]:
    """The fields the current context adds to log lines."""
    return dict(_CONTEXT.get())


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_CONTEXT.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value  # explicit extras win over the context
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel("WARNING")
