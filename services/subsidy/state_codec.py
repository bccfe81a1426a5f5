"""The one serialiser of the engine's state (msgspec): person states as the JSON text the
``person_state`` table keeps, and the same trees as plain JSON values.

The engine (services.subsidy.engine.state) declares its state as standard-library dataclasses;
msgspec encodes them natively (dataclasses as objects in field order, dates as ISO strings,
enums as their values) and decodes the text straight back into the same dataclasses, which
every batch does for every person it touches.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from services.subsidy.engine.state import PersonState

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PersonState)


def dumps(state: PersonState) -> str:
    """A person's state as the JSON text the ``person_state`` table keeps."""
    return _encoder.encode(state).decode()


def loads(text: str | bytes) -> PersonState:
    """``dumps``'s inverse."""
    return _decoder.decode(text)


def to_builtins(value: Any) -> Any:
    """A state (or any tree of the engine's dataclasses) as plain JSON values."""
    return msgspec.to_builtins(value)


@overload
def from_builtins(raw: Any) -> PersonState: ...
@overload
def from_builtins(raw: Any, type: type[T]) -> T: ...
def from_builtins(raw: Any, type: type[Any] = PersonState) -> Any:
    """``to_builtins``'s inverse, into ``type`` (a person's state unless told)."""
    return msgspec.convert(raw, type)
