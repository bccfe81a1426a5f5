"""Scale-out to 3 and then 5 processes per service gives exactly what one process per service gives.

Issue #16: a replica that held half of a person's facts lost state; two replicas could accept
one enrollment twice. Here the same input goes through two worlds on one private stack:

- **single**: one process per service;
- **scaled**: three processes per service, then two more each while the first half of the
  training records is in flight (every group rebalances mid-run).

The input: a seeded population (tools.population, with disorder and malformed records) plus
adversarial persons:

- *together*: persons whose enrollment and assessment events (the subsidy's two inputs) are
  written onto partition p of both topics at once, alternating, each acknowledged before the
  next (increasing broker times), a certificate before the completion it waits for;
- *one ref on two partitions*: a TraineeEnrolled sent twice under two ids, identical otherwise, to
  two partitions (an upstream client with another partitioner);
- *two refs, one person*: two TraineeEnrolled of one person in one course over the same dates,
  under two refs, on two partitions.

Which record of an adversarial pair is handled first is a race in both worlds (two partitions).
So each world must give exactly one acceptance and one ``duplicate_enrollment`` rejection per
pair, and the two worlds must be equal once the winner and loser of every pair are named
alike: every published event (by id, content included), every dead letter position and code,
every stored row of every service. The scaled world's subsidy group must also hold partition p
of both its topics on one member.

FAULTS_SCALE_REPLICAS_PERSONS (default 300), FAULTS_ADVERSARIAL (pairs of each kind and
*together* persons, default 12) and FAULTS_SEED override.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from shared.contract.identity import check_digit, person_id
from tests.faults.private import (
    INPUTS,
    SERVICES,
    PrivateCollector,
    PrivateProducer,
    PrivateStack,
    World,
    alive,
    dead_letters,
    fetch,
    lag,
    settled,
    snapshot,
)
from tests.harness import SECRET, ServiceProcess, wait_for
from tools.population import Population, simulate

pytestmark = pytest.mark.faults

PERSONS = int(os.environ.get("FAULTS_SCALE_REPLICAS_PERSONS", "300"))
PAIRS = int(os.environ.get("FAULTS_ADVERSARIAL", "12"))
SEED = int(os.environ.get("FAULTS_SEED", "20260417")) + 5
PARTITIONS = 12
WAIT = 300.0
ENROLLED = "skills.training.TraineeEnrolled.v1"
SOURCE = "/institutions/INST-ADV"
OUTPUTS = tuple(dict.fromkeys([topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS,
                               topics.SUBSIDY_EVENTS, *(topics.dlq(s) for s in SERVICES)]))


def nid(rng: random.Random) -> str:
    first17 = f"321302{rng.randint(1970, 2004)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" \
              f"{rng.randint(0, 999):03d}"
    return first17 + check_digit(first17)


def enrolled(ref: str, national_id: str) -> dict[str, Any]:
    """A suqian skill-upgrade enrollment paid by the person: no decision at acceptance."""
    return {
        "enrollment_ref": ref, "institution_id": "INST-ADV",
        "trainee": {"national_id": national_id, "name": "赵六", "categories": ["enterprise_employee"],
                    "rural": False, "hukou_agency": "suqian", "insured_months": 14,
                    "hired_on": "2025-06-01"},
        "employer": None,
        "course": {"course_id": "C-ELEC-3", "occupation_code": "6-31-01-03",
                   "occupation_name": "电工", "level": "intermediate",
                   "training_type": "skill_upgrade", "planned_hours": 80,
                   "start_date": "2026-05-04", "end_date": "2026-05-22", "project_based": False,
                   "program_years": None},
        "fee": {"amount_fen": 150000, "payer": "person"},
    }


@dataclass
class Pair:
    """Two upstream records that compete; after a run, which one won."""

    kind: str  # "ref" (one ref, two ids) or "person" (two refs, one person)
    ids: tuple[str, str]
    refs: tuple[str, str]
    partitions: tuple[int, int]
    values: tuple[bytes, bytes]
    won: dict[str, int] = field(default_factory=dict)  # world prefix -> 0 or 1


def adversarial_pairs(rng: random.Random) -> list[Pair]:
    pairs = []
    for n in range(PAIRS):
        p = (2 * n) % PARTITIONS
        q = (p + 1 + n % (PARTITIONS - 1)) % PARTITIONS  # another partition, varied owners
        same = f"INST-ADV/2026/ref-{n:03d}"
        ids = (f"adv-ref-{n:03d}-x", f"adv-ref-{n:03d}-y")
        person = nid(rng)
        values = tuple(encode_raw(ENROLLED, enrolled(same, person), id=i, source=SOURCE,
                                  subject=same, agencyid="suqian", time="2026-05-04T08:00:00+08:00")
                       for i in ids)
        pairs.append(Pair("ref", ids, (same, same), (p, q), values))  # type: ignore[arg-type]  # tuples of two, built so
        refs = (f"INST-ADV/2026/ovl-{n:03d}-a", f"INST-ADV/2026/ovl-{n:03d}-b")
        ids = (f"adv-ovl-{n:03d}-a", f"adv-ovl-{n:03d}-b")
        person = nid(rng)
        values = tuple(encode_raw(ENROLLED, enrolled(r, person), id=i, source=SOURCE, subject=r,
                                  agencyid="suqian", time="2026-05-04T08:00:00+08:00")
                       for r, i in zip(refs, ids, strict=True))
        pairs.append(Pair("person", ids, refs, (q, p), values))  # type: ignore[arg-type]  # tuples of two, built so
    return pairs


def together(rng: random.Random) -> list[list[tuple[str, int, bytes, str]]]:
    """Per *together* person, in order: (topic, partition, value, key) on the subsidy's inputs:
    accepted, passed, certificate issued (before the completion), completed."""
    persons = []
    for n in range(PAIRS):
        pid = person_id(nid(rng), SECRET)
        ref = f"INST-ADV/2026/tog-{n:03d}"
        base = enrolled(ref, "x")
        course = base["course"]
        accepted = {
            "enrollment_ref": ref, "person_id": pid, "institution_id": "INST-ADV",
            "categories": ["low_income"], "rural": True, "hukou_agency": "suqian",
            "insured_months": 14, "hired_on": "2025-06-01", "employer": None, "course": course,
            "fee": base["fee"], "accepted_on": "2026-05-04",
        }
        outcome = {"assessment_ref": f"EV-ADV/2026/tog-{n:03d}", "person_id": pid,
                   "enrollment_ref": ref, "occupation_code": course["occupation_code"],
                   "level": "intermediate", "certificate_kind": "skill_level"}
        completed = {"enrollment_ref": ref, "person_id": pid, "course": course,
                     "hours_attended": 72, "days_attended": 9, "attendance_rate": 0.9,
                     "completed_on": "2026-05-22"}
        p = n % PARTITIONS
        enr, asm = "skills.enrollment.", "skills.assessment."
        steps = [
            (topics.ENROLLMENT_EVENTS, enr + "EnrollmentAccepted.v1", accepted, "2026-05-04T08:00:00+08:00"),
            (topics.ASSESSMENT_EVENTS, asm + "AssessmentPassed.v1",
             {**outcome, "assessed_on": "2026-05-20"}, "2026-05-20T10:00:00+08:00"),
            (topics.ASSESSMENT_EVENTS, asm + "CertificateIssued.v1",
             {**outcome, "certificate_id": f"CERT-ADV-{n:04d}", "issued_on": "2026-05-20"},
             "2026-05-20T10:00:00+08:00"),
            (topics.ENROLLMENT_EVENTS, enr + "TrainingCompleted.v1", completed, "2026-05-22T18:00:00+08:00"),
        ]
        persons.append([
            (topic, p, encode_raw(kind, data, id=f"adv-tog-{n:03d}-{k}",
                                  source="/services/" + topic.split(".")[1], subject=pid,
                                  agencyid="suqian", time=at), pid)
            for k, (topic, kind, data, at) in enumerate(steps)
        ])
    return persons


@dataclass
class Run:
    """What one world left: events by id per output topic, dead letters, stored rows."""

    events: dict[str, dict[str, dict[str, Any]]]
    dead: dict[str, dict[tuple[str, str, str], str]]
    stored: dict[str, dict[str, list[tuple[Any, ...]]]]


async def members(world: World, group: str) -> list[dict[str, set[int]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=world.kafka)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    found = []
    for response in responses:
        for g in response.groups:
            if g[2] != "Stable":
                continue
            for member in g[5]:
                assignment = ConsumerProtocolMemberAssignment.decode(member[-1]) if member[-1] else None
                found.append({t: set(p) for t, p in (assignment.assignment if assignment else [])})
    return found


async def group_of(world: World, name: str, n: int) -> bool:
    return len(await members(world, f"{world.prefix}{name}")) == n


async def settle(world: World, one: dict[str, ServiceProcess], collector: Any) -> None:
    """`settled`, saying on a timeout what was left (lag, parked and outbox rows, waiting
    transactions)."""
    try:
        await settled(world, one, collector, WAIT)
    except AssertionError as exc:
        state = []
        for name, service in one.items():
            state.append((name, await lag(world, f"{world.prefix}{name}", INPUTS[name]),
                          await fetch(service, "SELECT (SELECT count(*) FROM pending) p, "
                                      "(SELECT count(*) FROM outbox) o"),
                          await fetch(service, "SELECT state, wait_event_type, left(query, 120) "
                                      "FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND state <> 'idle' AND pid <> pg_backend_pid()")))
        raise AssertionError(f"{exc}: {state}") from None


async def run_world(private: PrivateStack, pop: Population, pairs: list[Pair],
                    timed: list[list[tuple[str, int, bytes, str]]], first: int,
                    then: int) -> tuple[Run, str]:
    world = World(kafka=private.kafka, pg=private.pg, partitions=PARTITIONS)
    await world.create_topics()
    replicas: dict[str, list[ServiceProcess]] = {
        name: [world.service(name).start() for _ in range(first)] for name in SERVICES}
    everyone = lambda: [r for rs in replicas.values() for r in rs]  # noqa: E731
    try:
        async with PrivateProducer(world) as producer, PrivateCollector(world, OUTPUTS) as collector:
            for replica in everyone():
                await replica.wait_ready(WAIT)
            for name in SERVICES:
                await wait_for(lambda n=name: group_of(world, n, first), WAIT, f"{first} {name} members")  # type: ignore[misc]  # the default binds this iteration's value
            half = len(pop.training) // 2
            await producer.lanes(topics.TRAINING_UPSTREAM, pop, pop.training[:half])
            # the adversarial pairs, both records of each pair at once
            await producer.send(topics.TRAINING_UPSTREAM, [
                (pair.refs[k], pair.values[k], pair.partitions[k]) for pair in pairs for k in (0, 1)])
            if then > first:  # grow every group while all of this is in flight
                for name in SERVICES:
                    replicas[name] += [world.service(name).start() for _ in range(then - first)]
            # the *together* persons: one record at a time, each acknowledged, increasing times
            stamp = int(time.time() * 1000)
            for step in range(4):
                for person in timed:
                    topic, partition, value, key = person[step]
                    stamp += 2
                    await producer.producer.send_and_wait(
                        world.topic(topic), value=value, key=key.encode(), partition=partition,
                        timestamp_ms=stamp, headers=headers())
            for replica in everyone():
                await replica.wait_ready(WAIT)
            for name in SERVICES:
                await wait_for(lambda n=name: group_of(world, n, then), WAIT, f"{then} {name} members")  # type: ignore[misc]  # the default binds this iteration's value
            await producer.lanes(topics.TRAINING_UPSTREAM, pop, pop.training[half:])
            one = {n: rs[0] for n, rs in replicas.items()}
            await settle(world, one, collector)
            await producer.lanes(topics.ASSESSMENT_UPSTREAM, pop, pop.assessment)
            await settle(world, one, collector)
            alive(everyone())
            # one owner per person: partition p of both subsidy inputs on one member
            for name in ("subsidy", "assessment"):
                inputs = [world.topic(t) for t in INPUTS[name]]
                for member in await members(world, f"{world.prefix}{name}"):
                    assert member.get(inputs[0], set()) == member.get(inputs[1], set()), (name, member)
            events = {}
            for topic in (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_EVENTS):
                found: dict[str, dict[str, Any]] = {}
                for r in collector.records:  # topic names without the world's prefix
                    if r.topic == topic:
                        event = orjson.loads(r.value)
                        assert found.setdefault(event["id"], event) == event, event["id"]
                events[topic] = found
            dead = {s: dead_letters(collector, topics.dlq(s)) for s in SERVICES}
            stored = {s: await snapshot(one[s]) for s in SERVICES}
    finally:
        for replica in everyone():
            replica.stop()
        await world.drop_databases()
    # who won each pair in this world, from the rejection's id
    rejected = {e["data"]["enrollment_ref"] + "|" + e["id"] for e in events[topics.ENROLLMENT_EVENTS].values()
                if e["type"].endswith("EnrollmentRejected.v1")}
    for pair in pairs:
        losers = [k for k in (0, 1)
                  if f"{pair.refs[k]}|enrollment-rejected/{SOURCE}/{pair.ids[k]}" in rejected]
        assert len(losers) == 1, (
            f"{world.prefix}: pair {pair.ids}: {len(losers)} rejected: "
            f"{[e for e in events[topics.ENROLLMENT_EVENTS].values() if e['data'].get('enrollment_ref') in pair.refs]}"
            f" dead letters: {dead['enrollment']}"[:3000])
        pair.won[world.prefix] = 1 - losers[0]
        accepted = [e for e in events[topics.ENROLLMENT_EVENTS].values()
                    if e["type"].endswith("EnrollmentAccepted.v1")
                    and e["data"]["enrollment_ref"] in pair.refs]
        assert [e["data"]["enrollment_ref"] for e in accepted] == [pair.refs[pair.won[world.prefix]]], (
            f"{world.prefix}: pair {pair.ids}: accepted {len(accepted)}")
        [rejection] = [e for e in events[topics.ENROLLMENT_EVENTS].values()
                       if e["id"] == f"enrollment-rejected/{SOURCE}/{pair.ids[losers[0]]}"]
        assert rejection["data"]["reason"] == "duplicate_enrollment"
    return Run(events, dead, stored), world.prefix


def named_alike(text: str, pairs: list[Pair], prefix: str) -> str:
    """Winner and loser of every pair under one name in every world; world prefixes removed."""
    text = text.replace(prefix, "<world>.").replace(prefix.rstrip("."), "<world>")
    for n, pair in enumerate(pairs):  # placeholders that hold no id or ref of any pair
        w = pair.won[prefix]
        for k, role in ((w, "WIN"), (1 - w, "LOSE")):
            text = text.replace(pair.ids[k], f"<pair{n}:{role}:id>")
            if pair.refs[0] != pair.refs[1]:
                text = text.replace(pair.refs[k], f"<pair{n}:{role}:ref>")
    return text


def canonical(run: Run, pairs: list[Pair], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for topic, events in run.events.items():
        out[topic] = sorted(named_alike(orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode(),
                                        pairs, prefix) for e in events.values())
    for service, letters in run.dead.items():
        out[f"dlq {service}"] = sorted(named_alike(repr((k, v)), pairs, prefix)
                                       for k, v in letters.items())
    for service, tables in run.stored.items():
        for table, rows in tables.items():
            named = []
            for r in rows:
                text = named_alike(repr(r), pairs, prefix)
                if table == "inbox" and "<pair" in text:
                    # the digest hashes the record's own bytes, which hold the pair member's
                    # real id or ref: the (source, id) names it, renamed
                    text = named_alike(repr(r[:2]), pairs, prefix)
                named.append(text)
            out[f"{service}.{table}"] = sorted(named)
    return out


async def test_three_then_five_processes_per_service_store_and_publish_what_one_process_does(
    private: PrivateStack,
) -> None:
    rng = random.Random(SEED)
    pop = simulate(PERSONS, SEED, disorder=True)
    pairs = adversarial_pairs(rng)
    timed = together(rng)
    single, one = await run_world(private, pop, pairs, timed, 1, 1)
    scaled, many = await run_world(private, pop, pairs, timed, 3, 5)
    want, got = canonical(single, pairs, one), canonical(scaled, pairs, many)
    assert len(single.events[topics.SUBSIDY_EVENTS]) > PERSONS // 2  # a real run, not an empty one
    tog = [e for e in single.events[topics.SUBSIDY_EVENTS].values()
           if e["data"].get("basis", {}).get("enrollment_ref", "").startswith("INST-ADV/2026/tog-")]
    assert len(tog) >= PAIRS, "the together persons were decided"
    assert set(want) == set(got)
    problems = []
    for key in sorted(want):
        if want[key] != got[key]:
            w, g = set(want[key]), set(got[key])
            problems.append(f"{key}: {len(g - w)} unexpected e.g. {sorted(g - w)[:2]}; "
                            f"{len(w - g)} missing e.g. {sorted(w - g)[:2]}")
    assert not problems, "\n".join(problems)
