"""Waiting that knows who is behind, on the real Kafka and PostgreSQL.

With a 20 s waiting period, a seeded population is published as fast as the producer can go:
its assessment records first, then its training records, which the enrollment service needs
well over 20 s to work through. The assessment service parks every result at once and is
otherwise idle, so a waiting period counted on its own clock would dead-letter the results whose
EnrollmentAccepted is still queued in the enrollment service's backlog (issue #16, item 5). With
the pending watermark (shared/runtime/pending.py) no record whose reference was in the input is
dead-lettered, the assessment service publishes exactly what the offline oracle expects, and
the records whose reference never arrives (the simulator's, and two added here and sent last)
are still dead-lettered as unknown_reference, the two sent last only after the enrollment
service has caught up.

PENDING_BACKLOG_PERSONS (default 10000) sizes the population; the test fails, asking for more,
if the enrollment service was not behind for longer than the waiting period.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contract import topics
from shared.contract.envelope import encode_raw
from shared.runtime import crypto
from tests import builders as b
from tests.harness import KAFKA, SECRET, TEST_KEYRING, Producer, ServiceProcess, Stack, wait_for
from tools.bench import World, produce
from tools.expected import expected_assessment_events, expected_enrollment_events
from tools.population import Record
from tools.simulate import simulate

pytestmark = pytest.mark.integration

PERSONS = int(os.environ.get("PENDING_BACKLOG_PERSONS", "10000"))
SEED = 20261116
PARTITIONS = 4
WAIT = 20.0
SERVICES = ("enrollment", "assessment")
RESULT = "skills.assessment.AssessmentResultRecorded.v1"
REVOKED = "skills.assessment.CertificateRevoked.v1"
ATTENDANCE = "skills.training.AttendanceRecorded.v1"


@dataclass
class Letter:
    service: str
    timestamp: float  # broker time the relay published it, in seconds
    code: str
    event: dict[str, Any]  # empty for a record that is not JSON


@dataclass
class Seen:
    """What the test gathered from the output topics and the DLQs."""

    assessment_events: set[tuple[str, str]] = field(default_factory=set)
    letters: dict[tuple[str, str, str, str], Letter] = field(default_factory=dict)  # by position

    def unknown(self, service: str) -> list[Letter]:
        return [d for d in self.letters.values() if d.service == service and d.code == "unknown_reference"]


@pytest.fixture
async def world() -> AsyncIterator[tuple[Stack, dict[str, ServiceProcess]]]:
    stack = Stack()
    await stack.create_topics(PARTITIONS)
    env = {}
    for name in SERVICES:
        p = name.upper()
        env.update({f"{p}_PENDING_WAIT_SECONDS": str(WAIT), f"{p}_SWEEP_INTERVAL_SECONDS": "1"})
    services = {name: ServiceProcess(name, stack, env=dict(env)).start() for name in SERVICES}
    try:
        for service in services.values():
            await service.wait_ready()
        yield stack, services
    finally:
        for service in services.values():
            service.stop()
        await stack.drop()


async def collect(stack: Stack, seen: Seen) -> None:
    names = {stack.topic(topics.ASSESSMENT_EVENTS): "", stack.topic(topics.dlq("enrollment")): "enrollment",
             stack.topic(topics.dlq("assessment")): "assessment"}
    consumer = AIOKafkaConsumer(*names, bootstrap_servers=KAFKA, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        async for r in consumer:
            service = names[r.topic]
            if not service:
                event = orjson.loads(r.value)
                seen.assessment_events.add((event["type"], event["id"]))
                continue
            h = {k: v.decode() for k, v in r.headers}
            value = r.value
            if crypto.KEY_ID_HEADER in h:  # dead letters are sealed at rest (docs/SECURITY.md §2)
                value = TEST_KEYRING.open(value)
            try:
                event = orjson.loads(value)
            except orjson.JSONDecodeError:
                event = {}  # a malformed_json dead letter
            position = (service, h["original-topic"], h["original-partition"], h["original-offset"])
            seen.letters[position] = Letter(service, r.timestamp / 1000, h["error-code"], event)
    finally:
        await consumer.stop()


async def enrollment_lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, stack: Stack) -> int:
    tps = [TopicPartition(stack.topic(topics.TRAINING_UPSTREAM), p) for p in range(PARTITIONS)]
    committed = await admin.list_consumer_group_offsets(stack.prefix + "enrollment", partitions=tps)
    ends = await consumer.end_offsets(tps)
    return sum(max(0, ends[tp] - max(committed[tp].offset if tp in committed else 0, 0)) for tp in tps)


async def test_a_backlog_upstream_expires_nothing_that_arrives_and_what_never_arrives_still_expires(
    world: tuple[Stack, dict[str, ServiceProcess]],
) -> None:
    stack, services = world
    pop = simulate(PERSONS, SEED, disorder=True)
    enrollment = expected_enrollment_events(pop, SECRET)
    assessment = expected_assessment_events(pop, enrollment, SECRET)
    accepted = {o.data["enrollment_ref"] for o in enrollment.events if o.type.endswith("EnrollmentAccepted.v1")}
    issued = {o.data["certificate_id"] for o in assessment.events if o.type.endswith("CertificateIssued.v1")}
    expected_events = {(o.type, o.id) for o in assessment.events}

    # References that never arrive, besides the simulator's: an attendance and a result naming
    # an enrollment no one ever sends, published after everything else.
    ghost = b.ref("GHOST")
    ghost_result = f"EV-T/2026/{uuid.uuid4().hex[:10]}"
    ghost_results = [Record(ghost_result, encode_raw(
        RESULT, {"assessment_ref": ghost_result, "evaluator_id": "EV-T", "national_id": b.national_id(),
                 "enrollment_ref": ghost, "occupation_code": "6-31-01-03", "level": "junior",
                 "certificate_kind": "skill_level", "passed": True, "assessed_on": "2026-06-01"},
        id=uuid.uuid4().hex, source="/evaluators/EV-T", subject=ghost_result, agencyid="suqian",
        time="2026-06-01T09:00:00+08:00"))]
    ghost_training = [Record(ghost, encode_raw(
        ATTENDANCE, b.attendance(ghost, "2026-03-02"), id=uuid.uuid4().hex,
        source="/institutions/INST-T", subject=ghost, agencyid="suqian",
        time="2026-03-02T09:00:00+08:00"))]
    pop.lanes[ghost_result] = pop.lanes[ghost] = 0
    want_unknown = {
        "enrollment": enrollment.dead_letters["unknown_reference"] + 1,
        "assessment": assessment.dead_letters["unknown_reference"] + 1,
    }

    seen = Seen()
    collector = asyncio.create_task(collect(stack, seen))
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    offsets = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None)
    await admin.start()
    await offsets.start()
    assessment_db = await services["assessment"].db()
    try:
        started = time.time()
        async with Producer(stack) as producer:  # whole record batches, as tools.bench does
            bench = World(stack, services, PARTITIONS)
            await produce(producer.producer, bench, topics.ASSESSMENT_UPSTREAM, pop, pop.assessment)
            await produce(producer.producer, bench, topics.TRAINING_UPSTREAM, pop, pop.training)
            # Last: whatever they wait for would have to come after them.
            await produce(producer.producer, bench, topics.ASSESSMENT_UPSTREAM, pop, ghost_results)
            await produce(producer.producer, bench, topics.TRAINING_UPSTREAM, pop, ghost_training)
        published = time.time()

        # Watch the enrollment backlog and how long results whose enrollment will come wait.
        waiting_for = sorted("enrollment:" + ref for ref in accepted)
        longest_wait_while_behind = 0.0
        last_behind = started  # the start of the last look that still found it behind
        deadline = time.monotonic() + 900
        while True:
            assert time.monotonic() < deadline, "the enrollment service did not catch up in 15 minutes"
            looked = time.time()
            if await enrollment_lag(admin, offsets, stack) == 0:
                caught_up = time.time()
                break
            last_behind = looked
            waited = await assessment_db.fetchval(
                "SELECT coalesce(extract(epoch FROM now() - min(received_at)), 0) FROM pending "
                "WHERE ref = ANY($1::text[])", waiting_for)
            longest_wait_while_behind = max(longest_wait_while_behind, float(waited))
            await asyncio.sleep(0.2)

        def settled() -> bool:
            for name, n in want_unknown.items():  # fail at once on a wrongly expired record
                assert len(seen.unknown(name)) <= n, "more unknown_reference dead letters than expected"
            return (all(len(seen.unknown(s)) >= n for s, n in want_unknown.items())
                    and seen.assessment_events >= expected_events)

        try:
            await wait_for(settled, 300, "every expected event and unknown_reference dead letter")
        except AssertionError as exc:
            missing = expected_events - seen.assessment_events
            raise AssertionError(
                f"{exc}: unknown_reference {[len(seen.unknown(s)) for s in SERVICES]} of "
                f"{want_unknown}; {len(missing)} events missing, e.g. {sorted(missing)[:3]}; "
                f"{len(seen.assessment_events - expected_events)} unexpected; dead letters "
                f"{sorted({(d.service, d.code) for d in seen.letters.values()})}"
            ) from None
        await asyncio.sleep(3)  # a wrongly expired record would be dead-lettered by now too
    finally:
        await assessment_db.close()
        await offsets.stop()
        await admin.close()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)

    print(f"\n{PERSONS} persons ({len(pop.training)} training, {len(pop.assessment)} assessment records) "
          f"published in {published - started:.1f} s; enrollment caught up after "
          f"{caught_up - started:.1f} s; parked records waited up to "
          f"{longest_wait_while_behind:.1f} s while it was behind")
    # The test means something only if results whose enrollment came later waited longer than
    # the waiting period while the enrollment service was still behind: the old rule would have
    # expired them.
    assert longest_wait_while_behind > WAIT + 5, (
        f"parked records waited at most {longest_wait_while_behind:.1f} s while the enrollment "
        "service was behind: raise PENDING_BACKLOG_PERSONS so that the backlog outlasts the "
        "waiting period")

    # No unknown_reference for a record whose reference arrived.
    wrong: list[tuple[str, ...]] = []
    for letter in seen.unknown("assessment"):
        e = letter.event
        if e["type"] == RESULT and e["data"].get("enrollment_ref") in accepted:
            wrong.append(("result", e["data"]["assessment_ref"], e["data"]["enrollment_ref"]))
        if e["type"] == REVOKED and e["data"]["certificate_id"] in issued:
            wrong.append(("revocation", e["data"]["certificate_id"]))
    for letter in seen.unknown("enrollment"):
        if letter.event["data"].get("enrollment_ref") in accepted:
            wrong.append(("training", letter.event["type"], letter.event["data"]["enrollment_ref"]))
    assert not wrong, f"{len(wrong)} dead-lettered although their reference arrived, e.g. {wrong[:5]}"

    # Exactly the offline answer: every certificate, and exactly the dead letters it expects.
    assert seen.assessment_events == expected_events
    assert {s: len(seen.unknown(s)) for s in SERVICES} == want_unknown
    # The two sent last wait for all of the enrollment backlog: what never arrives is given up on
    # only once the enrollment service has caught up, never on the parking service's clock alone.
    [ghost_attendance] = [d for d in seen.unknown("enrollment") if d.event["data"].get("enrollment_ref") == ghost]
    [ghost_letter] = [d for d in seen.unknown("assessment") if d.event["data"].get("assessment_ref") == ghost_result]
    assert ghost_attendance.timestamp > last_behind and ghost_letter.timestamp > last_behind, (
        f"dead-lettered {last_behind - min(ghost_attendance.timestamp, ghost_letter.timestamp):.1f} s "
        "before the enrollment service was last seen behind")
