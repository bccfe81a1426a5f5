"""Bearer-token authentication and agency scoping for the services' query APIs (docs/SECURITY.md).

Tokens are configured hashed (``sha256:<hex>``) in ``API_TOKENS``, each naming a role: an
``agency`` token reads that agency's data only, a ``reviewer`` token reads it too and decides
its held grants (POLICY.md §6), an ``auditor`` token reads every agency's and decides nothing.
An entry may carry a ``name`` (no personal data) recorded with every review and audited read.
A request without a valid token gets 401; a route refuses a principal with :class:`Forbidden`
(403). Health, readiness, metrics and public certificate verification need no token.

    python -m shared.runtime.auth hash-token <token>        # or "-" to read it from stdin
    python -m shared.runtime.auth new-token --agency suqian # a fresh token and its table entry
    python -m shared.runtime.auth new-token --agency suqian --reviewer --name suqian-clerk-1
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

Role = Literal["agency", "reviewer", "auditor"]
ROLES: tuple[Role, ...] = ("agency", "reviewer", "auditor")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Roles that may be granted POST /persons/lookup (national id -> person_id) with
# "lookup": true in their API_TOKENS entry; every other token is refused it.
LOOKUP_ROLES: frozenset[str] = frozenset({"agency", "auditor"})
HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
# Operators' endpoints (reached from the operators' network, carrying no personal data) and
# public certificate verification, which anyone holding a certificate id may use.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/console"})
# The subsidy service's review console signs in with a token and authenticates its pages by its
# own session cookie (services/subsidy/console.py), not by a bearer header.
PUBLIC_PREFIXES = ("/certificates/", "/console/")


class TokenConfigError(ValueError):
    """API_TOKENS cannot be used: the service refuses to start with this message."""


class Forbidden(Exception):
    """The authenticated principal may not read what it asked for (HTTP 403)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: an agency's staff or reviewer (one agency) or an auditor (every agency)."""

    role: Role
    agency: str | None = None
    # The token's name (API_TOKENS), or a prefix of its hash: who, not what they may do.
    name: str = field(default="anonymous", compare=False)
    # Granted POST /persons/lookup ("lookup": true in the token's entry).
    lookup: bool = field(default=False, compare=False)
    # The first 16 hex digits of the token's hash: names the token in audit rows and rate
    # limits, never the token itself.
    token: str = field(default="open", compare=False)

    @property
    def auditor(self) -> bool:
        return self.role == "auditor"

    def may_review(self, agency: str | None) -> bool:
        """Whether this principal may release or deny ``agency``'s held grants: its reviewers
        only (auditors and plain agency tokens read, never decide)."""
        return self.role == "reviewer" and agency is not None and agency == self.agency

    def sees(self, agency: str | None) -> bool:
        """Whether this principal may read data owned by ``agency``."""
        return self.auditor or (agency is not None and agency == self.agency)


# Development mode without tokens: every request reads as an auditor (a loud warning at start).
OPEN = Principal("auditor", name="development", lookup=True)


def hash_token(token: str) -> str:
    """The form a token is stored in: tokens are random, so an unsalted SHA-256 suffices."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenTable:
    """Principals by token hash; ``open`` when development runs without any token."""

    principals: dict[str, Principal]
    open: bool = False

    def resolve(self, authorization: str | None) -> Principal | None:
        if self.open:
            return OPEN
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        # A dictionary look-up by hash: timing reveals at most a prefix of a hash, not a token.
        return self.principals.get(hash_token(token))


def parse_tokens(raw: str, agencies: Iterable[str]) -> dict[str, Principal]:
    """The token table from API_TOKENS: inline JSON or the path of a JSON file."""
    text = raw.strip()
    if not text:
        return {}
    if not text.startswith(("{", "[")):
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenConfigError(f"API_TOKENS file {path} cannot be read: {exc.strerror}") from None
    try:
        table = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise TokenConfigError("API_TOKENS is not valid JSON") from None
    if not isinstance(table, dict):
        raise TokenConfigError("API_TOKENS must be a JSON object of token hash -> principal")
    known = set(agencies)
    principals = {}
    for index, (key, entry) in enumerate(table.items(), 1):
        principals[key] = _principal(index, key, entry, known)
    return principals


def _principal(index: int, key: str, entry: Any, agencies: set[str]) -> Principal:
    # Never echo a key that is not a hash: it may be a plain token pasted by mistake.
    if not HASH_PATTERN.match(key):
        raise TokenConfigError(
            f"API_TOKENS entry {index}: the key is not 'sha256:<64 hex>': store hashes, never "
            "tokens (python -m shared.runtime.auth hash-token)"
        )
    shown = f"{index} ({key[:15]}...)"
    if not isinstance(entry, dict) or entry.get("role") not in ROLES:
        raise TokenConfigError(f"API_TOKENS entry {shown}: role must be one of {ROLES}")
    role: Role = entry["role"]
    agency = entry.get("agency")
    name = entry.get("name", f"token-{key[7:19]}")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise TokenConfigError(
            f"API_TOKENS entry {shown}: name must be 1-64 of A-Z a-z 0-9 . _ : - (no personal data)"
        )
    lookup = entry.get("lookup", False)
    if not isinstance(lookup, bool) or (lookup and role not in LOOKUP_ROLES):
        raise TokenConfigError(
            f"API_TOKENS entry {shown}: \"lookup\" is true or false, and only for roles "
            f"{sorted(LOOKUP_ROLES)}"
        )
    if role in ("agency", "reviewer"):
        if agency not in agencies:
            raise TokenConfigError(
                f"API_TOKENS entry {shown}: an {role} token needs an agency of {sorted(agencies)}"
            )
        return Principal(role, agency, name, lookup=lookup, token=key[7:23])
    if agency is not None:
        raise TokenConfigError(f"API_TOKENS entry {shown}: an auditor token names no agency")
    return Principal("auditor", name=name, lookup=lookup, token=key[7:23])


def token_table(raw: str, agencies: Iterable[str], *, development: bool) -> TokenTable:
    """The table the HTTP API checks; open only in development with no token configured."""
    principals = parse_tokens(raw, agencies)
    if principals:
        return TokenTable(principals)
    if not development:
        raise TokenConfigError(
            "API_TOKENS is empty: outside development every query API needs tokens"
        )
    return TokenTable({}, open=True)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class Authenticate:
    """ASGI middleware: every path not public needs a known bearer token (else 401).

    ``protected`` names public paths that need a token all the same (``/metrics`` on the API
    port outside development)."""

    def __init__(self, app: ASGIApp, table: TokenTable, protected: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.table = table
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            is_public(scope["path"]) and scope["path"] not in self.protected
        ):
            await self.app(scope, receive, send)
            return
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        principal = self.table.resolve(authorization)
        if principal is None:
            response = JSONResponse(
                {"error": "unauthorized", "detail": "a valid bearer token is required"},
                status_code=401, headers={"www-authenticate": 'Bearer realm="skills"'},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def principal(request: Request) -> Principal:
    """The principal the middleware authenticated; public routes have none and must not ask."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Forbidden("this route needs an authenticated principal")
    return found


def require_agency(request: Request, agency: str) -> Principal:
    """The principal, if it may read ``agency``'s data; else Forbidden."""
    who = principal(request)
    if not who.sees(agency):
        raise Forbidden(f"a token of agency {who.agency!r} cannot read agency {agency[:60]!r}")
    return who


def require_auditor(request: Request) -> Principal:
    who = principal(request)
    if not who.auditor:
        raise Forbidden("auditors only")
    return who


def require_lookup(request: Request) -> Principal:
    who = principal(request)
    if not who.lookup:
        raise Forbidden("this token is not granted person lookups")
    return who


class RateLimiter:
    """At most ``per_minute`` calls per key in any sliding minute (one process's count)."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.calls: dict[str, deque[float]] = {}

    def allow(self, key: str) -> float | None:
        """None when the call may go ahead (and counts it), else seconds until it could."""
        now: float = self.clock()
        window: deque[float] = self.calls.setdefault(key, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= self.per_minute:
            return max(0.0, window[0] + 60.0 - now)
        window.append(now)
        return None


async def forbidden(request: Request, exc: Exception) -> JSONResponse:
    detail = exc.detail if isinstance(exc, Forbidden) else "forbidden"
    return JSONResponse({"error": "forbidden", "detail": detail}, status_code=403)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.runtime.auth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hash_cmd = commands.add_parser("hash-token", help="print the stored form of a token")
    hash_cmd.add_argument("token", help='the token, or "-" to read it from stdin')
    new_cmd = commands.add_parser("new-token", help="a fresh random token and its API_TOKENS entry")
    group = new_cmd.add_mutually_exclusive_group(required=True)
    group.add_argument("--agency")
    group.add_argument("--auditor", action="store_true")
    new_cmd.add_argument("--reviewer", action="store_true",
                         help="with --agency: the agency's reviewer (releases or denies holds)")
    new_cmd.add_argument("--name", help="recorded with reviews and audited reads; no personal data")
    new_cmd.add_argument("--lookup", action="store_true",
                         help="grant POST /persons/lookup (national id -> person_id)")
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        token = sys.stdin.readline().strip() if args.token == "-" else args.token
        if not token:
            parser.error("empty token")
        print(hash_token(token))
        return 0
    token = secrets.token_urlsafe(32)
    if args.reviewer and not args.agency:
        parser.error("--reviewer needs --agency")
    entry: dict[str, Any] = ({"role": "auditor"} if args.auditor else
                             {"role": "reviewer" if args.reviewer else "agency", "agency": args.agency})
    if args.name:
        if not NAME_PATTERN.match(args.name):
            parser.error("--name: 1-64 of A-Z a-z 0-9 . _ : -")
        entry["name"] = args.name
    if args.lookup:
        if args.reviewer:
            parser.error("--lookup is for agency and auditor tokens")
        entry["lookup"] = True
    print(f"token (give to the client, store nowhere else): {token}")
    print(f"API_TOKENS entry: {orjson.dumps({hash_token(token): entry}).decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
