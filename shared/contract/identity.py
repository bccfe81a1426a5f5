"""National-id validation (GB 11643-1999, ISO 7064 MOD 11-2) and the contract's person_id."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def check_digit(first17: str) -> str:
    """The check character for the first 17 digits of a resident identity number."""
    total = sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def normalise_national_id(value: str) -> str:
    """The id with an upper-case X, or ValueError saying what is wrong with it."""
    nid = value.strip().upper()
    if len(nid) != 18:
        raise ValueError(f"national id must have 18 characters, got {len(nid)}")
    if not nid[:17].isdigit() or not (nid[17].isdigit() or nid[17] == "X"):
        raise ValueError("national id must be 17 digits and a digit or X")
    if not nid.isascii():
        raise ValueError("national id must be ASCII")
    try:
        dt.date(int(nid[6:10]), int(nid[10:12]), int(nid[12:14]))
    except ValueError:
        raise ValueError("national id carries no valid birth date") from None
    if check_digit(nid[:17]) != nid[17]:
        raise ValueError("national id check digit does not match")
    return nid


def person_id(national_id: str, secret: str) -> str:
    """``"p_"`` + the first 32 hex digits of HMAC-SHA256(secret, national id): EVENTS.md §3."""
    nid = normalise_national_id(national_id)
    mac = hmac.new(secret.encode("utf-8"), nid.encode("ascii"), hashlib.sha256).hexdigest()
    return "p_" + mac[:32]
