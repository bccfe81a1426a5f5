"""A dependency goes away: with PostgreSQL or Kafka stopped, services say so, wait, and lose nothing.

While the three services are busy with a seeded population on the private stack, the database
(or the broker) is stopped for 30 seconds. Every service must stay up, answer 503 on /readyz
within the window and for the rest of it, and stop making progress (no offsets committed while
the database is gone; no records taken in while the broker is gone); once the dependency is
back every service must become ready again and the outcome must be the oracle's exactly.

FAULTS_OUTAGE_PERSONS (default 800), FAULTS_OUTAGE_SECONDS (default 30) and FAULTS_SEED override.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract import topics
from services.subsidy.policy_files import load_policy_dir
from tests.faults.private import (
    SERVICES,
    PrivateCollector,
    PrivateProducer,
    PrivateStack,
    World,
    alive,
    at_least,
    check_outcome,
    fetch,
    readyz,
    settled,
)
from tests.harness import ROOT, SECRET, ServiceProcess, wait_for
from tools.expected import expected_outcome
from tools.simulate import simulate

pytestmark = pytest.mark.faults

PERSONS = int(os.environ.get("FAULTS_OUTAGE_PERSONS", "800"))
OUTAGE = float(os.environ.get("FAULTS_OUTAGE_SECONDS", "30"))
SEED = int(os.environ.get("FAULTS_SEED", "20260417")) + 3
TOPICS = (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_EVENTS,
          *(topics.dlq(s) for s in SERVICES))
WAIT = 240.0


async def hold(condition: Callable[[], Awaitable[bool]], until: float, what: str) -> None:
    """Fail unless ``condition`` holds at every look until the monotonic time ``until``."""
    while time.monotonic() < until:
        assert await condition(), f"{what} stopped holding"
        await asyncio.sleep(0.5)


def not_ready(services: dict[str, ServiceProcess]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        alive(services.values())
        codes = {name: await asyncio.to_thread(readyz, s) for name, s in services.items()}
        return all(code == 503 for code in codes.values())
    return check


async def committed(world: World) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=world.kafka)
    await admin.start()
    try:
        return {name: await admin.list_consumer_group_offsets(f"{world.prefix}{name}")
                for name in SERVICES}
    finally:
        await admin.close()


async def taken_in(services: dict[str, ServiceProcess]) -> dict[str, int]:
    return {name: (await fetch(s, "SELECT count(*) FROM inbox"))[0][0]
            for name, s in services.items()}


async def outage(private: PrivateStack, dependency: str,
                 progress: Callable[[World, dict[str, ServiceProcess]], Awaitable[Any]]) -> None:
    """Stop ``dependency`` mid-run for OUTAGE seconds; check readiness, progress and outcome."""
    world = World(kafka=private.kafka, pg=private.pg)
    await world.create_topics()
    pop = simulate(PERSONS, SEED, disorder=True)
    oracle = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    services = {name: world.service(name).start() for name in SERVICES}
    try:
        async with PrivateProducer(world) as producer, PrivateCollector(world, TOPICS) as collector:
            for service in services.values():
                await service.wait_ready()
            await producer.lanes(topics.TRAINING_UPSTREAM, pop, pop.training)
            await wait_for(lambda: at_least(services["enrollment"], "SELECT count(*) FROM inbox",
                                            len(pop.training) // 10), WAIT, "enrollment busy")
            await asyncio.to_thread(private.script, dependency, "stop")
            until = time.monotonic() + OUTAGE
            try:
                await wait_for(not_ready(services), OUTAGE, f"every service not ready without {dependency}")
                before = await progress(world, services)
                await hold(not_ready(services), until, f"not ready without {dependency}")
                assert await progress(world, services) == before, f"progress without {dependency}"
            finally:
                await asyncio.to_thread(private.script, dependency, "start")
            for service in services.values():
                await service.wait_ready(WAIT)
            await settled(world, services, collector, WAIT)
            await producer.lanes(topics.ASSESSMENT_UPSTREAM, pop, pop.assessment)
            await settled(world, services, collector, WAIT)
            check_outcome(collector, oracle)
    finally:
        for service in services.values():
            service.stop()
        await world.drop_databases()


async def test_without_postgresql_for_30_seconds_services_are_not_ready_commit_nothing_and_then_lose_nothing(
    private: PrivateStack,
) -> None:
    await outage(private, "postgres", lambda world, services: committed(world))


async def test_without_kafka_for_30_seconds_services_are_not_ready_take_in_nothing_and_then_lose_nothing(
    private: PrivateStack,
) -> None:
    await outage(private, "kafka", lambda world, services: taken_in(services))
