"""Hostile requests against every operation each running service publishes in /openapi.json:
no answer is a 5xx. A fixed pass sends every hostile value to every operation (so no route is
missed); hypothesis then combines values, tokens and bodies at random."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import SERVICES, TOKENS, World

pytestmark = [pytest.mark.security, pytest.mark.integration]

PATH_VALUES = ["x", "..", "%2e%2e%2f", "a" * 2000, "' OR 1=1 --", "\u202e\u0301", "9" * 40,
               "p_" + "0" * 64, "suqian", "nowhere", "INST-T/2026/1", "%ff%fe", "{}", "null"]
QUERY_VALUES = ["-1", "0", "99999999999999999999999", "1e309", "2026-02-30", "9999-12-31", "NaN",
                "", "x" * 3000, "2026", "-0001-01-01"]
BODIES = [
    b"[" * 50_000 + b"]" * 50_000,                # nesting far beyond any parser's stack
    b'{"national_id": ' + b"9" * 5000 + b"}",     # a 5,000-digit number
    b'{"national_id": 1e999}', b'{"national_id": null}', b'{"national_id": ["x"]}',
    b'{"national_id": "11010519491231002X"}', b'"just a string"', b"\xff\xfe\x00", b"",
    b'{"national_id": "' + b"\\u0000" * 100 + b'"}', b"{" * 10 + b'"a"',
    b" " * 20_000,                                # over the body limit
]
WHO = [None, "bogus", "suqian", "suqian-reader", "auditor"]


def operations(world: World) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(service, method, path template, operation) of every service's OpenAPI document."""
    found = []
    for service in SERVICES:
        document = httpx.get(world.url(service, "/openapi.json"),
                             headers=headers("auditor"), timeout=10).json()
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                found.append((service, method.upper(), path, operation))
    return found


def headers(who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    return {"authorization": f"Bearer {TOKENS.get(who, who)}"}


def request(world: World, service: str, method: str, template: str, operation: dict[str, Any],
            value: str, query_value: str, body: bytes | None, who: str | None) -> httpx.Response:
    path = template
    query = {}
    for param in operation.get("parameters", []):
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", urllib.parse.quote(value, safe=""))
        else:
            query[param["name"]] = query_value
    url = world.url(service, path) + (f"?{urllib.parse.urlencode(query)}" if query else "")
    content = body if "requestBody" in operation else None
    return httpx.request(method, url, content=content, timeout=20,
                         headers={**headers(who), "content-type": "application/json"})


def check(r: httpx.Response, what: Any) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:300])


def test_every_service_publishes_every_route_in_its_openapi_document(world: World) -> None:
    paths = {(s, p) for s, _, p, _ in operations(world)}
    assert {("enrollment", "/persons/lookup"), ("enrollment", "/enrollments/{ref}"),
            ("assessment", "/certificates/{certificate_id}"), ("subsidy", "/agencies/{agency}/ledger.csv"),
            ("subsidy", "/policies/loads")} <= paths
    for service in SERVICES:
        assert {(service, p) for p in ("/healthz", "/readyz", "/metrics", "/openapi.json")} <= paths


def test_every_hostile_value_against_every_operation_gives_no_5xx(world: World) -> None:
    ops = operations(world)
    sent = 0
    for service, method, template, operation in ops:
        for who in (None, "suqian", "auditor"):
            for i, value in enumerate(PATH_VALUES):
                query_value = QUERY_VALUES[i % len(QUERY_VALUES)]
                body = BODIES[i % len(BODIES)]
                check(request(world, service, method, template, operation, value, query_value, body, who),
                      (service, method, template, value[:40], query_value[:40], body[:40], who))
                sent += 1
            if "requestBody" in operation:
                for body in BODIES:
                    check(request(world, service, method, template, operation, "x", "", body, who),
                          (service, template, body[:40], who))
                    sent += 1
    assert sent >= len(ops) * len(PATH_VALUES) * 3


HYPOTHESIS = settings(max_examples=200, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(data=st.data())
def test_random_hostile_requests_against_the_openapi_operations_give_no_5xx(world: World, data: st.DataObject) -> None:
    service, method, template, operation = data.draw(st.sampled_from(_cached(world)))
    text = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)  # type: ignore[arg-type]  # a category
    value = data.draw(text | st.sampled_from(PATH_VALUES))
    query_value = data.draw(text | st.integers().map(str) | st.sampled_from(QUERY_VALUES))
    body = data.draw(st.binary(max_size=200) | st.sampled_from(BODIES) | st.recursive(
        st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["national_id", "x"]), c, max_size=3),
        max_leaves=10).map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)))
    who = data.draw(st.sampled_from(WHO))
    check(request(world, service, method, template, operation, value, query_value, body, who),
          (service, method, template, value[:40], query_value[:40], body[:40], who))


_OPS: dict[int, list[tuple[str, str, str, dict[str, Any]]]] = {}


def _cached(world: World) -> list[tuple[str, str, str, dict[str, Any]]]:
    return _OPS.setdefault(id(world), operations(world))
