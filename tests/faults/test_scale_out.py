"""Scale-out and rebalance: two replicas per service over 12 partitions, one swapped mid-run.

Every service runs as two OS processes sharing its database and consumer group (each its own
HTTP port) over topics of 12 partitions. Midway through the training records one replica of each
service is stopped and a fresh one started, so the group rebalances while records are in flight.
The outcome must still be the oracle's exactly, and both replicas that end the run must have
taken part (each consumed records).

FAULTS_SCALE_PERSONS (default 1500) and FAULTS_SEED override.
"""

from __future__ import annotations

import os
import urllib.request

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
    settled,
)
from tests.harness import ROOT, SECRET, ServiceProcess, wait_for
from tools.expected import expected_outcome
from tools.simulate import simulate

pytestmark = pytest.mark.faults

PERSONS = int(os.environ.get("FAULTS_SCALE_PERSONS", "1500"))
SEED = int(os.environ.get("FAULTS_SEED", "20260417")) + 2
TOPICS = (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_EVENTS,
          *(topics.dlq(s) for s in SERVICES))
WAIT = 240.0


def consumed(replica: ServiceProcess) -> float:
    """Records this replica consumed, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("skills_records_consumed_total{"))


async def members(world: World, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=world.kafka)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return sum(len(g[5]) for response in responses for g in response.groups if g[2] == "Stable")


async def test_two_replicas_per_service_on_twelve_partitions_with_one_swapped_mid_run_give_the_oracle(
    private: PrivateStack,
) -> None:
    world = World(kafka=private.kafka, pg=private.pg, partitions=12)
    await world.create_topics()
    pop = simulate(PERSONS, SEED, disorder=True)
    oracle = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    replicas = {name: [world.service(name).start(), world.service(name).start()]
                for name in SERVICES}
    everyone = [r for rs in replicas.values() for r in rs]
    try:
        async with PrivateProducer(world) as producer, PrivateCollector(world, TOPICS) as collector:
            for replica in everyone:
                await replica.wait_ready()
            for name in SERVICES:
                await wait_for(lambda n=name: members(world, f"{world.prefix}{n}"), WAIT,  # type: ignore[misc]  # the default binds this iteration's value
                               f"both {name} replicas in the group")
                assert await members(world, f"{world.prefix}{name}") == 2
            half = len(pop.training) // 2
            await producer.lanes(topics.TRAINING_UPSTREAM, pop, pop.training[:half])
            for name in SERVICES:  # swap one replica while the first half is in flight
                first = replicas[name][0]
                await wait_for(lambda s=first: at_least(s, "SELECT count(*) FROM inbox", 200),  # type: ignore[misc]  # the default binds this iteration's value
                               WAIT, f"{name} busy")
                alive(everyone)
                first.stop()
                assert first.proc is not None and first.proc.returncode == 0, first.log_tail()
                fresh = world.service(name).start()
                replicas[name] = [replicas[name][1], fresh]
                everyone = [r for rs in replicas.values() for r in rs]
            await producer.lanes(topics.TRAINING_UPSTREAM, pop, pop.training[half:])
            for replica in everyone:
                await replica.wait_ready()
            running = {name: rs for name, rs in replicas.items()}
            await settled(world, {n: rs[0] for n, rs in running.items()}, collector, WAIT)
            await producer.lanes(topics.ASSESSMENT_UPSTREAM, pop, pop.assessment)
            await settled(world, {n: rs[1] for n, rs in running.items()}, collector, WAIT)
            alive(everyone)

            check_outcome(collector, oracle)
            for name, (older, newer) in running.items():
                assert await members(world, f"{world.prefix}{name}") == 2
                assert consumed(older) > 0 and consumed(newer) > 0, (
                    f"{name}: one replica consumed nothing: {consumed(older)}, {consumed(newer)}")
    finally:
        for replica in everyone:
            replica.stop()
        await world.drop_databases()
