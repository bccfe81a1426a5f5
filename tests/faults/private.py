"""A private Kafka and PostgreSQL for fault tests, and the checks that compare runs exactly.

The fault tests stop and restart the broker and the database, which would break everyone else's
tests on the shared stack, so they start their own with deploy/local (STACK_STATE in a temporary
directory, free ports) and wipe it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata
from cryptography.fernet import Fernet

from shared.contract import topics
from shared.contract.envelope import DecodeError, decode, headers
from shared.runtime.service import new_topics
from shared.runtime.settings import ServiceSettings
from services.enrollment.config import DEV_DATA_KEY
from tests.e2e.test_seeded_population import as_set, diff, per_person_order, without_detail
from tests.harness import ROOT, Collector, Producer, ServiceProcess, Stack, free_port, wait_for
from tools.expected import Outcome
from tools.population import Population, Record

SERVICES = ("enrollment", "assessment", "subsidy")
INPUTS = {
    "enrollment": (topics.TRAINING_UPSTREAM,),
    "assessment": (topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    "subsidy": (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
}
OUTPUT = {
    "enrollment": topics.ENROLLMENT_EVENTS,
    "assessment": topics.ASSESSMENT_EVENTS,
    "subsidy": topics.SUBSIDY_EVENTS,
}
# Columns that record when, not what: left out when comparing stored state.
CLOCK_COLUMNS = {"received_at", "first_seen", "updated_at", "loaded_at", "at", "created_at",
                 "applied_at", "seq", "held_at", "ended_at", "expires_at"}
ENCRYPTED_COLUMNS = {"national_id_enc", "name_enc"}  # Fernet: new ciphertext every time


@dataclass
class PrivateStack:
    """Kafka and PostgreSQL started by deploy/local/{kafka,postgres}.sh in a directory of ours."""

    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="skills-faults-")))
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def pg(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("STACK_STATE", "PGPORT")}
        env.update({
            "STACK_STATE": str(self.state), "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port), "PGPORT": str(self.pg_port),
            "KAFKA_HEAP_OPTS": "-Xms256m -Xmx512m",
        })
        return env

    def script(self, name: str, command: str) -> None:
        done = subprocess.run(
            [str(ROOT / "deploy/local" / f"{name}.sh"), command], env=self.environment(),
            capture_output=True, text=True, timeout=240,
        )
        if done.returncode != 0:
            raise AssertionError(f"{name}.sh {command} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> None:
        # The postgres OS user must traverse the state directory (mkdtemp makes it 0700).
        self.state.chmod(0o755)
        # The broker jars are the shared stack's (fetched once, kept in .state/kafka/libs).
        shared_env = {k: v for k, v in os.environ.items() if k != "STACK_STATE"}
        subprocess.run([str(ROOT / "deploy/local/kafka.sh"), "fetch"], env=shared_env,
                       check=True, capture_output=True, timeout=600)
        (self.state / "kafka").mkdir(parents=True, exist_ok=True)
        (self.state / "kafka" / "libs").symlink_to(ROOT / ".state" / "kafka" / "libs")
        self.script("postgres", "start")
        self.script("kafka", "start")

    def wipe(self) -> None:
        for name in ("kafka", "postgres"):
            try:
                self.script(name, "reset")
            except AssertionError as exc:
                print(exc, file=sys.stderr)
        shutil.rmtree(self.state, ignore_errors=True)


@dataclass
class World(Stack):
    """An isolated topic prefix and databases on the private stack."""

    kafka: str = ""
    pg: str = ""
    partitions: int = 12

    def db_url(self, service: str) -> str:
        return f"{self.pg}/{service}_{self.prefix.rstrip('.')}"

    async def create_topics(self, partitions: int | None = None) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
        await admin.start()
        try:
            await admin.create_topics(new_topics(
                ServiceSettings(topic_prefix=self.prefix), topics.ALL_TOPICS,
                partitions or self.partitions,
            ))
        finally:
            await admin.close()

    async def drop_databases(self) -> None:
        conn = await asyncpg.connect(f"{self.pg}/postgres")
        try:
            for service in SERVICES:
                name = self.db_url(service).rsplit("/", 1)[1]
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def service(self, name: str, **env: str) -> ServiceProcess:
        """A service (or one more replica: same database and group, its own HTTP port)."""
        return ServiceProcess(name, self, env={
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka, "TOPIC_PARTITIONS": str(self.partitions),
            # the waiting period counts only while caught up; long enough that a restart
            # never expires a record whose reference is still on its way
            f"{name.upper()}_PENDING_WAIT_SECONDS": "20", **env,
        })

    def rebuild(self, service: ServiceProcess) -> subprocess.CompletedProcess[str]:
        """`python -m tools.rebuild <service> --yes` with the service's own environment."""
        return subprocess.run(
            [sys.executable, "-m", "tools.rebuild", service.name, "--yes"], cwd=ROOT,
            env=service.environment(), capture_output=True, text=True, timeout=120,
        )


class PrivateProducer(Producer):
    def __init__(self, world: World) -> None:
        self.stack = world
        self.producer = AIOKafkaProducer(bootstrap_servers=world.kafka, enable_idempotence=True,
                                         linger_ms=5, max_request_size=2 * 1024 * 1024)

    async def lanes(self, topic: str, pop: Population, records: Sequence[Record]) -> None:
        """Send in bulk, each person's records to their lane's partition, then await every ack."""
        assert isinstance(self.stack, World)
        await self.send(topic, [(r.key, r.value, pop.lane(r.key) % self.stack.partitions)
                                for r in records])

    async def send(self, topic: str, items: Sequence[tuple[str, bytes, int]]) -> list[RecordMetadata]:
        """Send (key, value, partition) records in order; return where each one landed."""
        name = self.stack.topic(topic)
        futures = [
            await self.producer.send(name, value=value, key=key.encode(), partition=partition,
                                     headers=headers())
            for key, value, partition in items
        ]
        return list(await asyncio.gather(*futures))


class PrivateCollector(Collector):
    def __init__(self, world: World, names: Iterable[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *(world.topic(n) for n in names), bootstrap_servers=world.kafka,
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.prefix = world.prefix
        self.records = []
        self.task = None


# ---- what a run left behind ---------------------------------------------------------------------

def by_id(collector: Collector, topic: str, since: int = 0,
          injected: frozenset[bytes] = frozenset()) -> dict[str, bytes]:
    """Every event id on ``topic`` with its record value; copies of one id must be identical.
    ``injected``: values a test wrote to the topic itself (not the service's output)."""
    found: dict[str, bytes] = {}
    for r in collector.records[since:]:
        if r.topic != topic or r.value in injected:
            continue
        event_id = orjson.loads(r.value)["id"]
        earlier = found.setdefault(event_id, r.value)
        assert earlier == r.value, f"two different records with id {event_id} on {topic}"
    return found


def distinct_events(collector: Collector, topic: str,
                    injected: frozenset[bytes] = frozenset()) -> list[dict[str, Any]]:
    """The events on ``topic`` in first-publication order, each id once."""
    seen: set[str] = set()
    events = []
    for r in collector.records:
        if r.topic == topic and r.value not in injected:
            event = r.event
            if event["id"] not in seen:
                seen.add(event["id"])
                events.append(event)
    return events


def dead_letters(collector: Collector, topic: str, since: int = 0) -> dict[tuple[str, str, str], str]:
    """Dead letters by the position they came from, with their error-code (each position once)."""
    found: dict[tuple[str, str, str], str] = {}
    for r in collector.records[since:]:
        if r.topic == topic:
            h = r.headers
            position = (h["original-topic"], h["original-partition"], h["original-offset"])
            assert found.setdefault(position, h["error-code"]) == h["error-code"]
    return found


def codes(letters: dict[tuple[str, str, str], str]) -> Counter[str]:
    return Counter(letters.values())


def inbox_size(records: Iterable[Record], topic: str, agencies: frozenset[str]) -> int:
    """How many (source, id) pairs of these records any consumer must take in: once each."""
    keys = set()
    for r in records:
        try:
            keys.add(decode(r.value, topic, agencies).key)
        except DecodeError:
            continue
    return len(keys)


async def fetch(service: ServiceProcess, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await service.db()
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def value(service: ServiceProcess, sql: str) -> Any:
    return (await fetch(service, sql))[0][0]


async def at_least(service: ServiceProcess, sql: str, n: int) -> bool:
    try:
        return int(await value(service, sql)) >= n
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False  # the database is restarting: ask again


async def snapshot(service: ServiceProcess) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted, without clock columns; decisions ranked per person."""
    fernet = Fernet(DEV_DATA_KEY.encode())
    conn = await service.db()
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        state: dict[str, list[tuple[Any, ...]]] = {}
        for table in sorted(tables):
            columns = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = $1 ORDER BY ordinal_position", table)
                if r["column_name"] not in CLOCK_COLUMNS]
            select = ", ".join(f'"{c}"' for c in columns)
            if table == "decision":  # per-person decision order is part of the state
                select += ", rank() OVER (PARTITION BY person_id ORDER BY seq)"
            rows = []
            for row in await conn.fetch(f'SELECT {select} FROM "{table}"'):
                rows.append(tuple(
                    fernet.decrypt(bytes(v)) if c in ENCRYPTED_COLUMNS else
                    (bytes(v) if isinstance(v, memoryview) else v)
                    for c, v in zip([*columns, "rank"], row.values(), strict=False)
                ))
            state[table] = sorted(rows, key=repr)
        return state
    finally:
        await conn.close()


def state_diff(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> str:
    lines = []
    for table in sorted(set(got) | set(want)):
        g, w = Counter(map(repr, got.get(table, []))), Counter(map(repr, want.get(table, [])))
        if g != w:
            lines.append(f"{table}: {sum((g - w).values())} unexpected e.g. {list(g - w)[:2]}; "
                         f"{sum((w - g).values())} missing e.g. {list(w - g)[:2]}")
    return "\n".join(lines)


async def lag(world: World, group: str, names: Sequence[str]) -> int:
    """Records on ``names`` not yet committed by ``group`` (every partition, every topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=world.kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=world.kafka, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        tps = [TopicPartition(world.topic(n), p) for n in names for p in range(world.partitions)]
        ends = await consumer.end_offsets(tps)
        return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed else 0)) for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


async def settled(world: World, services: dict[str, ServiceProcess], collector: Collector,
                  timeout: float) -> None:
    """Every group committed every input, no outbox or parked rows are left, the collector read
    everything: twice in a row, so nothing was in flight between two looks."""
    async def quiet() -> bool:
        alive(services.values())
        for name, service in services.items():
            if not await at_least(service, "SELECT (NOT EXISTS (SELECT FROM outbox) AND NOT "
                                  "EXISTS (SELECT FROM pending))::int", 1):
                return False
            if not await _no_lag(world, name):
                return False
        return await _caught_up(collector)

    async def twice() -> bool:
        return await quiet() and await quiet()

    await wait_for(twice, timeout, "every service settled")


def alive(services: Iterable[ServiceProcess]) -> None:
    """Fail at once, with its log, when a service process ended by itself."""
    for service in services:
        if service.proc is not None and service.proc.poll() is not None:
            raise AssertionError(f"{service.name} (port {service.port}) exited with code "
                                 f"{service.proc.returncode}:\n{service.log_tail(15)}")


async def _no_lag(world: World, name: str) -> bool:
    return await lag(world, f"{world.prefix}{name}", INPUTS[name]) == 0


async def _caught_up(collector: Collector) -> bool:
    assignment = list(collector.consumer.assignment())
    if not assignment:
        return False
    ends = await collector.consumer.end_offsets(assignment)
    return all([await collector.consumer.position(tp) >= ends[tp] for tp in assignment])


def readyz(service: ServiceProcess) -> int:
    """The HTTP status of /readyz (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def check_outcome(collector: Collector, oracle: Outcome,
                  extra_dead: dict[str, Counter[str]] | None = None,
                  injected: frozenset[bytes] = frozenset()) -> dict[str, int]:
    """The published events equal the oracle's (each id once, copies identical), in per-person
    order, and every DLQ holds the oracle's dead letters (plus ``extra_dead``) once each.
    Returns how many redundant copies each topic carried (a relay crash republishes)."""
    extra_dead = extra_dead or {}
    copies = {}
    for topic in OUTPUT.values():
        copies[topic] = sum(1 for r in collector.records
                            if r.topic == topic and r.value not in injected) - len(
            by_id(collector, topic, injected=injected))
    enrollment = distinct_events(collector, topics.ENROLLMENT_EVENTS, injected)
    assessment = distinct_events(collector, topics.ASSESSMENT_EVENTS)
    subsidy = distinct_events(collector, topics.SUBSIDY_EVENTS)
    got, want = without_detail(as_set(enrollment)), without_detail(as_set(oracle.enrollment.events))
    assert got == want, diff("enrollment", got, want)
    got, want = as_set(assessment), as_set(oracle.assessment.events)
    assert got == want, diff("assessment", got, want)
    got, want = as_set(subsidy), as_set(oracle.subsidy)
    assert got == want, diff("subsidy", got, want)
    assert per_person_order(subsidy) == per_person_order(oracle.subsidy)
    expected = {"enrollment": oracle.enrollment.dead_letters,
                "assessment": oracle.assessment.dead_letters, "subsidy": Counter()}
    for service in SERVICES:
        got_codes = codes(dead_letters(collector, topics.dlq(service)))
        want_codes = +(Counter(expected[service]) + extra_dead.get(service, Counter()))
        assert got_codes == want_codes, f"{service} DLQ: {got_codes} != {want_codes}"
    return copies
