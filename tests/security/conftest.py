"""Fixtures of the security tests: the three services with API tokens, and a streamed population."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from shared.contract import topics
from shared.runtime.auth import hash_token
from services.subsidy.policy_files import load_policy_dir
from tests.e2e.test_seeded_population import PARTITIONS, _count, count, produce
from tests.harness import ROOT, SECRET, Collector, Producer, ServiceProcess, Stack, wait_for
from tools.expected import expected_outcome
from tools.population import Population
from tools.simulate import simulate

SERVICES = ("enrollment", "assessment", "subsidy")
AGENCIES = ("city-a", "suqian", "baoshan", "beijing")
# Plain tokens the tests present; the services only ever see their hashes.
TOKENS = {agency: f"test-token-{agency}-0123456789abcdef" for agency in AGENCIES}
TOKENS["auditor"] = "test-token-auditor-0123456789abcdef"
TOKENS["suqian-reader"] = "test-token-suqian-reader-0123456789"  # not granted lookups
ENTRIES = {who: {"role": "agency", "agency": who, "lookup": True} for who in AGENCIES}
ENTRIES["auditor"] = {"role": "auditor", "lookup": True}
ENTRIES["suqian-reader"] = {"role": "agency", "agency": "suqian"}
API_TOKENS = orjson.dumps({hash_token(TOKENS[who]): entry for who, entry in ENTRIES.items()}).decode()
PERSONS = 300
SEED = 20260417


@dataclass
class World:
    stack: Stack
    services: dict[str, ServiceProcess]

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.services[service].port}{path}"


def bearer(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[who]}"}


@pytest.fixture(scope="package")
async def world() -> AsyncIterator[World]:
    stack = Stack()
    await stack.create_topics(PARTITIONS)
    services = {
        # Lookups are rate-limited per token; the fuzzing below asks hundreds of times.
        name: ServiceProcess(name, stack, env={"API_TOKENS": API_TOKENS,
                                               "ENROLLMENT_LOOKUP_RATE_PER_MINUTE": "100000"}).start()
        for name in SERVICES
    }
    try:
        for service in services.values():
            await service.wait_ready()
        yield World(stack, services)
    finally:
        for service in services.values():
            service.stop()
        await stack.drop()


@pytest.fixture(scope="package")
async def population(world: World) -> Population:
    """A demo-sized seeded population (with disorder and malformed records) fully processed."""
    pop = simulate(PERSONS, SEED, disorder=True)
    oracle = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    n_enrollment, n_assessment = len(oracle.enrollment.events), len(oracle.assessment.events)
    enrollment_dead = sum(oracle.enrollment.dead_letters.values())
    assessment_dead = sum(oracle.assessment.dead_letters.values())
    subsidy = world.services["subsidy"]
    outputs = (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.dlq("enrollment"),
               topics.dlq("assessment"))
    async with Producer(world.stack) as producer, Collector(world.stack, outputs) as seen:
        await produce(producer, topics.TRAINING_UPSTREAM, pop, pop.training)
        await wait_for(lambda: count(seen, topics.ENROLLMENT_EVENTS) >= n_enrollment
                       and count(seen, topics.dlq("enrollment")) >= enrollment_dead,
                       120, "the enrollment service published the population's events")
        for name in ("assessment", "subsidy"):
            await wait_for(lambda s=world.services[name]: _count(s, "SELECT count(*) FROM inbox", n_enrollment),  # type: ignore[misc]  # the default binds this iteration's value
                           120, f"{name} consumed the enrollment events")
        await produce(producer, topics.ASSESSMENT_UPSTREAM, pop, pop.assessment)
        await wait_for(lambda: count(seen, topics.ASSESSMENT_EVENTS) >= n_assessment
                       and count(seen, topics.dlq("assessment")) >= assessment_dead,
                       120, "the assessment service published the population's events")
        await wait_for(lambda: _count(subsidy, "SELECT count(*) FROM inbox", n_enrollment + n_assessment),
                       120, "the subsidy service consumed every internal event")
        await wait_for(lambda: _count(subsidy, "SELECT count(*) = 0 FROM outbox", 1),
                       60, "the subsidy outbox drained")
    return pop
