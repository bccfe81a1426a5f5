"""Hostile requests and records against the running services: never a 5xx, oversize dead-lettered."""

from __future__ import annotations

import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contract import topics
from shared.contract.envelope import MAX_RECORD_BYTES, encode_raw
from tests import builders as b
from tests.harness import Collector, Producer, Received, wait_for

from .conftest import TOKENS, World

pytestmark = [pytest.mark.security, pytest.mark.integration]

ROUTES = {
    "enrollment": ["/enrollments/{x}", "/persons/{x}/record"],
    "assessment": ["/certificates/{x}", "/persons/{x}/certificates"],
    "subsidy": ["/persons/{x}/subsidies", "/agencies/{x}/summary", "/agencies/{x}/ledger",
                "/agencies/{x}/ledger.csv", "/policies/loads"],
}
QUERY_NAMES = st.sampled_from(["year", "from", "to", "page", "page_size", "x"])
ANY_TEXT = st.text(max_size=80) | st.sampled_from(
    ["suqian", "2026", "-1", "0", "99999999999999999999", "2026-02-30", "9999-12-31", "../..", "%",
     "'; DROP TABLE decision; --", "\u0000", "p_" + "0" * 32, "1e9", "NaN"])
WHO = st.sampled_from([None, "bogus", *TOKENS])
HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def headers(who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    return {"authorization": f"Bearer {TOKENS.get(who, who)}"}


@HYPOTHESIS
@given(service=st.sampled_from(sorted(ROUTES)), data=st.data())
def test_no_path_or_query_string_makes_a_service_answer_5xx(world: World, service: str, data: st.DataObject) -> None:
    template = data.draw(st.sampled_from(ROUTES[service]))
    segment = urllib.parse.quote(data.draw(ANY_TEXT), safe=data.draw(st.sampled_from(["", "/"])))
    query = urllib.parse.urlencode(data.draw(st.lists(st.tuples(QUERY_NAMES, ANY_TEXT), max_size=4)))
    url = world.url(service, template.format(x=segment) + (f"?{query}" if query else ""))
    r = httpx.get(url, headers=headers(data.draw(WHO)), timeout=10)
    assert r.status_code < 500, (url, r.status_code, r.text[:300])


@HYPOTHESIS
@given(who=WHO, body=st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["national_id", "x"]), c, max_size=3),
    max_leaves=10).map(lambda v: httpx.Request("POST", "http://x", json=v).content))
def test_no_lookup_body_makes_the_enrollment_service_answer_5xx(world: World, who: str | None, body: bytes) -> None:
    r = httpx.post(world.url("enrollment", "/persons/lookup"), content=body,
                   headers={**headers(who), "content-type": "application/json"}, timeout=10)
    assert r.status_code < 500, (body[:100], r.status_code, r.text[:300])


async def test_a_record_over_256_kib_is_dead_lettered_as_too_large(world: World) -> None:
    ref = b.ref()
    padded = b.enrolled(ref, b.national_id(), padding="x" * (MAX_RECORD_BYTES + 1))
    value = encode_raw("skills.training.TraineeEnrolled.v1", padded, id=f"big-{ref}", source="/i",
                       subject=ref, agencyid="suqian", time="2026-03-01T09:00:00+08:00")
    assert len(value) > MAX_RECORD_BYTES
    async with Producer(world.stack) as producer, Collector(world.stack, [topics.dlq("enrollment")]) as dlq:
        await producer.raw(topics.TRAINING_UPSTREAM, value, key=ref)
        found = await _dead_letter(dlq, value)
    assert found.headers["error-code"] == "too_large"
    assert found.headers["original-topic"].endswith(topics.TRAINING_UPSTREAM)


async def _dead_letter(dlq: Collector, value: bytes) -> Received:
    await wait_for(lambda: any(r.value == value for r in dlq.records), 60, "the oversize record's dead letter")
    return next(r for r in dlq.records if r.value == value)
