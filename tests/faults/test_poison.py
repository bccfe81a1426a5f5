"""Poison input: garbage interleaved with good records lands in the right DLQ and stalls nothing.

Into both upstream topics, between a seeded population's good records (and on the good records'
own partitions), go random bytes, truncated JSON, wrong types, missing fields, records over
256 KiB, unknown types and agencies, and duplicates of good records with changed content; into
the internal enrollment topic go garbage records that both of its consumers must dead-letter.
Every bad record must appear, untouched, in its consumer's DLQ (skills.<service>.dlq) with the
contract's error-code; every good record must be processed (the oracle's outcome exactly); every
consumer group must have committed every partition to its end.

FAULTS_POISON_PERSONS (default 1500) and FAULTS_SEED override.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from shared.contract import topics
from shared.contract.envelope import DecodeError, decode, encode_raw
from shared.runtime.settings import DEFAULT_AGENCIES
from services.subsidy.policy_files import load_policy_dir
from tests.faults.private import (
    SERVICES,
    PrivateCollector,
    PrivateProducer,
    PrivateStack,
    World,
    check_outcome,
    dead_letters,
    settled,
)
from tests.harness import ROOT, SECRET
from tools.expected import expected_outcome
from tools.population import Population, Record
from tools.simulate import simulate

pytestmark = pytest.mark.faults

PERSONS = int(os.environ.get("FAULTS_POISON_PERSONS", "1500"))
SEED = int(os.environ.get("FAULTS_SEED", "20260417")) + 1
EACH = 6  # records of every kind of poison per topic
OVERSIZED = 300 * 1024
TOPICS = (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_EVENTS,
          *(topics.dlq(s) for s in SERVICES))
WAIT = 240.0


@dataclass(frozen=True)
class Poison:
    key: str
    value: bytes
    code: str


def _template_poison(rng: random.Random, event: dict[str, Any], kind: str, n: int) -> Poison:
    """One bad record made from a good event (a fresh id unless it is a changed duplicate)."""
    fresh = dict(event, id=f"poison-{n}")
    data = event["data"]
    if kind == "truncated_json":
        value = orjson.dumps(fresh)
        return Poison(event["subject"], value[:rng.randint(1, len(value) - 2)], "malformed_json")
    if kind == "wrong_envelope_type":
        return Poison(event["subject"], orjson.dumps(dict(fresh, id=n)), "not_cloudevent")
    if kind == "wrong_data_type":
        field = next(k for k, v in data.items() if isinstance(v, str))
        changed = dict(fresh, data=dict(data, **{field: {"not": ["a", "string"]}}))
        return Poison(event["subject"], orjson.dumps(changed), "schema_violation")
    if kind == "data_not_an_object":
        return Poison(event["subject"], orjson.dumps(dict(fresh, data=[data])), "schema_violation")
    if kind == "missing_attribute":
        dropped = rng.choice(("subject", "source", "time"))
        missing = {k: v for k, v in fresh.items() if k != dropped}
        return Poison(event["subject"], orjson.dumps(missing), "not_cloudevent")
    if kind == "missing_data_fields":
        return Poison(event["subject"], orjson.dumps(dict(fresh, data={})), "schema_violation")
    if kind == "oversized":
        big = dict(fresh, data=dict(data, padding="x" * OVERSIZED))
        return Poison(event["subject"], orjson.dumps(big), "too_large")
    if kind == "unknown_type":
        kind_name = event["type"].rsplit(".", 2)[0] + ".SomethingElseHappened.v1"
        return Poison(event["subject"], orjson.dumps(dict(fresh, type=kind_name)), "unknown_type")
    if kind == "unknown_agency":
        return Poison(event["subject"], orjson.dumps(dict(fresh, agencyid="atlantis")),
                      "unknown_agency")
    if kind == "changed_duplicate":  # same source and id as the good record, other content
        changed = dict(event, data=dict(data, note="changed after publication"))
        return Poison(event["subject"], orjson.dumps(changed), "conflicting_duplicate")
    raise ValueError(kind)


KINDS = ("truncated_json", "wrong_envelope_type", "wrong_data_type", "data_not_an_object",
         "missing_attribute", "missing_data_fields", "oversized", "unknown_type",
         "unknown_agency", "changed_duplicate")


def interleave(rng: random.Random, pop: Population, topic: str, records: list[Record],
               partitions: int) -> tuple[list[tuple[str, bytes, int]], list[Poison | None]]:
    """The topic's records with poison spliced in: (key, value, partition) and what each is."""
    agencies = frozenset(DEFAULT_AGENCIES)
    seen: set[tuple[str, str]] = set()
    firsts = []  # good records, first of their (source, id): templates for poison
    for i, r in enumerate(records):
        try:
            key = decode(r.value, topic, agencies).key
        except DecodeError:
            continue
        if key not in seen:
            seen.add(key)
            firsts.append(i)
    after: dict[int, list[tuple[Poison, int]]] = {}
    n = 0
    for kind in ("random_bytes", *KINDS):
        for _ in range(EACH):
            n += 1
            at = rng.choice(firsts)
            if kind == "random_bytes":  # 0xff is never UTF-8, so never JSON
                poison = Poison(f"junk-{n}", b"\xff" + rng.randbytes(rng.randint(8, 400)),
                                "malformed_json")
            else:
                poison = _template_poison(rng, orjson.loads(records[at].value), kind,
                                          rng.randrange(10**9))
            if kind == "changed_duplicate":  # after its original, on its partition: first stands
                where, partition = at, pop.lane(records[at].key) % partitions
            else:
                where, partition = rng.randrange(len(records)), rng.randrange(partitions)
            after.setdefault(where, []).append((poison, partition))
    items: list[tuple[str, bytes, int]] = []
    what: list[Poison | None] = []
    for i, r in enumerate(records):
        items.append((r.key, r.value, pop.lane(r.key) % partitions))
        what.append(None)
        for poison, partition in after.get(i, []):
            items.append((poison.key, poison.value, partition))
            what.append(poison)
    return items, what


def internal_garbage(rng: random.Random, partitions: int) -> list[tuple[Poison, int]]:
    """Bad records on skills.enrollment.events, which assessment and subsidy both consume."""
    def event(type: str, n: int, **data: Any) -> bytes:
        return encode_raw(type, data, id=f"garbage-{n}", source="/services/enrollment",
                          subject=f"P-{n}", agencyid="suqian", time="2026-05-01T09:00:00+08:00")
    found = []
    for n in range(EACH):
        found += [
            Poison(f"junk-{n}", b"\xff" + rng.randbytes(64), "malformed_json"),
            Poison(f"junk-{n}", event("skills.enrollment.EnrollmentAccepted.v1", n)[:-5],
                   "malformed_json"),
            Poison(f"junk-{n}", event("skills.enrollment.SomethingElse.v1", n), "unknown_type"),
            Poison(f"junk-{n}", event("skills.enrollment.EnrollmentAccepted.v1", n,
                                      padding="y" * OVERSIZED), "too_large"),
            Poison(f"junk-{n}", b'["an array, not an event"]', "not_cloudevent"),
        ]
    return [(p, rng.randrange(partitions)) for p in found]


async def test_every_bad_record_lands_in_its_dlq_with_its_code_and_every_good_one_is_processed(
    private: PrivateStack,
) -> None:
    rng = random.Random(SEED)
    world = World(kafka=private.kafka, pg=private.pg)
    await world.create_topics()
    pop = simulate(PERSONS, SEED, disorder=True)
    oracle = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    training, training_what = interleave(rng, pop, topics.TRAINING_UPSTREAM, pop.training,
                                         world.partitions)
    assessment, assessment_what = interleave(rng, pop, topics.ASSESSMENT_UPSTREAM, pop.assessment,
                                             world.partitions)
    garbage = internal_garbage(rng, world.partitions)
    services = {name: world.service(name).start() for name in SERVICES}
    try:
        async with PrivateProducer(world) as producer, PrivateCollector(world, TOPICS) as collector:
            for service in services.values():
                await service.wait_ready()
            landed = await producer.send(
                topics.ENROLLMENT_EVENTS, [(p.key, p.value, part) for p, part in garbage])
            sent = list(zip(landed, [p for p, _ in garbage], strict=True))
            landed = await producer.send(topics.TRAINING_UPSTREAM, training)
            sent += [(m, p) for m, p in zip(landed, training_what, strict=True) if p]
            await settled(world, services, collector, WAIT)
            landed = await producer.send(topics.ASSESSMENT_UPSTREAM, assessment)
            sent += [(m, p) for m, p in zip(landed, assessment_what, strict=True) if p]
            await settled(world, services, collector, WAIT)

            consumers = {
                world.topic(topics.TRAINING_UPSTREAM): ("enrollment",),
                world.topic(topics.ASSESSMENT_UPSTREAM): ("assessment",),
                world.topic(topics.ENROLLMENT_EVENTS): ("assessment", "subsidy"),
            }
            letters = {s: dead_letters(collector, topics.dlq(s)) for s in SERVICES}
            values = {(r.headers["original-topic"], r.headers["original-partition"],
                       r.headers["original-offset"]): r.value
                      for r in collector.records if r.topic.endswith(".dlq")}
            extra: dict[str, Counter[str]] = {s: Counter() for s in SERVICES}
            for meta, poison in sent:
                position = (meta.topic, str(meta.partition), str(meta.offset))
                for reader in consumers[meta.topic]:
                    assert letters[reader].get(position) == poison.code, (
                        f"{poison.code} record at {position} in the {reader} DLQ as "
                        f"{letters[reader].get(position)}")
                    extra[reader][poison.code] += 1
                assert values[position] == poison.value
            assert sum(extra["enrollment"].values()) == EACH * (len(KINDS) + 1)
            check_outcome(collector, oracle, extra, frozenset(p.value for p, _ in garbage))
    finally:
        for service in services.values():
            service.stop()
        await world.drop_databases()
