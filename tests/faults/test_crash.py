"""Effectively once under crashes: SIGKILL every service twice, restart Kafka and PostgreSQL, lose nothing.

A seeded population (at least 20,000 upstream records) streams in slices through the three
services on the private stack, in the end-to-end test's two phases. After some slices a seeded
plan strikes: it SIGKILLs a service once the service has taken in a seeded share of the slice and
starts it again, or restarts the broker or the database. The published events (by id, content
included) must equal the offline oracle with every copy of an id byte-identical, the inboxes must
hold each input exactly once, and no grant may be decided twice. Then each service in turn is
rebuilt from its input with tools.rebuild: its stored state must come back exactly as the crash
run left it (so the crash run stored what an undisturbed pass stores), it must republish the same
ids, and downstream must see no new effect.

FAULTS_CRASH_PERSONS (default 1000, about 25,000 upstream records) and FAULTS_SEED override.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from shared.contract import topics
from shared.runtime.settings import DEFAULT_AGENCIES
from services.subsidy.policy_files import load_policy_dir
from tests.faults.private import (
    OUTPUT,
    SERVICES,
    PrivateCollector,
    PrivateProducer,
    PrivateStack,
    World,
    alive,
    at_least,
    by_id,
    check_outcome,
    dead_letters,
    fetch,
    inbox_size,
    settled,
    snapshot,
    state_diff,
    value,
)
from tests.harness import ROOT, SECRET, ServiceProcess, wait_for
from tools.expected import Outcome, expected_outcome
from tools.population import Population, Record
from tools.simulate import simulate

pytestmark = pytest.mark.faults

PERSONS = int(os.environ.get("FAULTS_CRASH_PERSONS", "1000"))
SEED = int(os.environ.get("FAULTS_SEED", "20260417"))
TOPICS = tuple(OUTPUT.values()) + tuple(topics.dlq(s) for s in SERVICES)
AGENCIES = frozenset(DEFAULT_AGENCIES)
INBOX = "SELECT count(*) FROM inbox"
WAIT = 240.0  # seconds for any one phase to settle on a busy 2-core box


@dataclass
class CrashRun:
    world: World
    services: dict[str, ServiceProcess]
    collector: PrivateCollector
    pop: Population
    oracle: Outcome
    strikes: list[str] = field(default_factory=list)


async def strike(run: CrashRun, private: PrivateStack, action: str, rng: random.Random,
                 before: int, growth: int) -> None:
    """Kill a service once it took in a seeded share of what the slice gives it, or restart a
    dependency; then bring it back."""
    kind, target = action.split(":")
    if kind == "restart":
        await asyncio.to_thread(private.script, target, "stop")
        await asyncio.to_thread(private.script, target, "start")
        run.strikes.append(f"restarted {target}")
        return
    service = run.services[target]
    at = before + max(1, int(rng.uniform(0.1, 0.6) * growth))
    async def reached() -> bool:
        alive(run.services.values())
        return await at_least(service, INBOX, at)

    await wait_for(reached, WAIT, f"{target} took in {at} events")
    service.kill()
    run.strikes.append(f"SIGKILLed {target} at inbox >= {at} (now {await value(service, INBOX)})")
    service.start()
    await service.wait_ready(WAIT)


async def stream(run: CrashRun, producer: PrivateProducer, private: PrivateStack, topic: str,
                 records: list[Record], slices: int, actions: list[str], rng: random.Random,
                 growth: dict[str, int]) -> None:
    """Produce ``records`` in slices; after the seeded slices, strike."""
    rng.shuffle(actions)
    when = dict(zip(sorted(rng.sample(range(slices), len(actions))), actions, strict=True))
    size = -(-len(records) // slices)
    for i in range(slices):
        action = when.get(i)
        target = action.split(":")[1] if action else ""
        before = int(await value(run.services[target], INBOX)) if target in SERVICES else 0
        await producer.lanes(topic, run.pop, records[i * size:(i + 1) * size])
        if action:
            await strike(run, private, action, rng, before, growth.get(target, 0) // slices)


@pytest.fixture(scope="module")
async def crash_run(private: PrivateStack) -> AsyncIterator[CrashRun]:
    world = World(kafka=private.kafka, pg=private.pg)
    await world.create_topics()
    pop = simulate(PERSONS, SEED, disorder=True)
    oracle = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    services = {name: world.service(name).start() for name in SERVICES}
    try:
        async with PrivateProducer(world) as producer, PrivateCollector(world, TOPICS) as collector:
            for service in services.values():
                await service.wait_ready()
            run = CrashRun(world, services, collector, pop, oracle)
            rng = random.Random(SEED)
            n_enrollment, n_assessment = len(oracle.enrollment.events), len(oracle.assessment.events)
            await stream(run, producer, private, topics.TRAINING_UPSTREAM, pop.training, 8,
                         ["kill:enrollment", "kill:enrollment", "kill:assessment",
                          "kill:subsidy", "restart:kafka", "restart:postgres"], rng,
                         {"enrollment": len(pop.training), "assessment": n_enrollment,
                          "subsidy": n_enrollment})
            await settled(world, services, collector, WAIT)
            await stream(run, producer, private, topics.ASSESSMENT_UPSTREAM, pop.assessment, 4,
                         ["kill:assessment", "kill:subsidy"], rng,
                         {"assessment": len(pop.assessment), "subsidy": n_assessment})
            await settled(world, services, collector, WAIT)
            yield run
    finally:
        for service in services.values():
            service.stop()
        await world.drop_databases()


async def test_killing_every_service_twice_and_restarting_kafka_and_postgres_loses_and_duplicates_nothing(
    crash_run: CrashRun,
) -> None:
    run = crash_run
    assert len(run.pop.training) + len(run.pop.assessment) >= 20_000
    struck = Counter(s.split()[1] for s in run.strikes)
    assert all(struck[s] >= 2 for s in SERVICES) and struck["kafka"] == struck["postgres"] == 1, run.strikes

    copies = check_outcome(run.collector, run.oracle)

    n_enrollment, n_assessment = len(run.oracle.enrollment.events), len(run.oracle.assessment.events)
    inbox = {name: int(await value(s, INBOX)) for name, s in run.services.items()}
    assert inbox == {
        "enrollment": inbox_size(run.pop.training, topics.TRAINING_UPSTREAM, AGENCIES),
        "assessment": n_enrollment
        + inbox_size(run.pop.assessment, topics.ASSESSMENT_UPSTREAM, AGENCIES),
        "subsidy": n_enrollment + n_assessment,
    }
    subsidy = run.services["subsidy"]
    twice = await fetch(subsidy, "SELECT grant_id, count(*) FROM decision WHERE grant_id IS NOT NULL"
                                 " AND event_type = 'granted' GROUP BY grant_id HAVING count(*) > 1")
    assert twice == [], f"grants decided more than once: {twice[:5]}"
    decided = {r["event_id"] for r in await fetch(subsidy, "SELECT event_id FROM decision")}
    assert decided == {o.id for o in run.oracle.subsidy}
    print(f"\ncrash run: {'; '.join(run.strikes)}; redundant copies on the topics: {copies}")


async def test_a_rebuilt_service_stores_and_republishes_exactly_what_it_had_and_downstream_sees_nothing_new(
    crash_run: CrashRun,
) -> None:
    run = crash_run
    for name in SERVICES:
        service = run.services[name]
        await settled(run.world, run.services, run.collector, WAIT)
        before = {n: await snapshot(s) for n, s in run.services.items()}
        mark = len(run.collector.records)
        published = set(by_id(run.collector, OUTPUT[name]))
        dead = dead_letters(run.collector, topics.dlq(name))

        refused = run.world.rebuild(service)
        assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr
        service.stop()
        done = run.world.rebuild(service)
        assert done.returncode == 0, done.stdout + done.stderr
        assert await value(service, INBOX) == 0
        service.start()
        await service.wait_ready(WAIT)
        await wait_for(lambda: at_least(service, INBOX, len(before[name]["inbox"])), WAIT,  # noqa: B023  # awaited here
                       f"the rebuilt {name} re-read its input")
        await settled(run.world, run.services, run.collector, WAIT)

        after = await snapshot(service)
        assert after == before[name], f"rebuilt {name}:\n{state_diff(after, before[name])}"
        assert set(by_id(run.collector, OUTPUT[name], since=mark)) == published
        assert dead_letters(run.collector, topics.dlq(name), since=mark) == dead
        for other, s in run.services.items():
            if other != name:
                now = await snapshot(s)
                assert now == before[other], f"{other} after rebuilding {name}:\n{state_diff(now, before[other])}"
        new_downstream = [r.topic for r in run.collector.records[mark:]
                          if r.topic not in (OUTPUT[name], topics.dlq(name))]
        assert new_downstream == [], Counter(new_downstream)
