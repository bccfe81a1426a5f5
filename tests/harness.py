"""Test harness for the real stack: services as OS processes, a Kafka producer and collectors.

Every test session gets its own topic prefix and its own databases, so it never sees another
run's records, and services run exactly as in production (``python -m services.<name> run``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.fernet import InvalidToken

from shared.contract import topics
from shared.contract.envelope import encode_raw, headers
from shared.runtime import crypto
from shared.runtime.service import new_topics
from shared.runtime.settings import DEV_DATA_KEY, ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PG = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
SECRET = "test-person-id-secret"
PORTS = {"enrollment": "ENROLLMENT", "assessment": "ASSESSMENT", "subsidy": "SUBSIDY"}
# The keys the services run with under test (DATA_ENCRYPTION_KEY[_PREVIOUS_KEYS] of this
# environment, else the development key): collectors open sealed dead letters with them.
TEST_KEYRING = crypto.Keyring.of(
    [os.environ.get("DATA_ENCRYPTION_KEY") or DEV_DATA_KEY,
     *os.environ.get("DATA_ENCRYPTION_PREVIOUS_KEYS", "").split(",")]
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


@dataclass
class Stack:
    """One isolated world on the shared Kafka and PostgreSQL: a topic prefix and databases."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")

    def topic(self, name: str) -> str:
        return self.prefix + name

    def db_url(self, service: str) -> str:
        return f"{PG}/{service}_{self.prefix.rstrip('.')}"

    async def create_topics(self, partitions: int = 4) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            # As the services create them: retention, replication and min.insync.replicas
            # from the same settings (TOPIC_* from the environment, else the defaults).
            await admin.create_topics(
                new_topics(ServiceSettings(topic_prefix=self.prefix), topics.ALL_TOPICS, partitions)
            )
        finally:
            await admin.close()

    async def drop(self) -> None:
        """Remove the world: its databases and its topics."""
        await self.drop_databases()
        await self.drop_topics()

    async def drop_topics(self) -> None:
        """Delete this world's topics: every client's metadata request that names no topics
        (the services' broker probe, the admin clients) answers for all of them."""
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    async def drop_databases(self) -> None:
        """Drop every database of this world, including extra ones tests derived from it."""
        tag = self.prefix.rstrip(".")
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0", f"_{tag}")
            for row in names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class ServiceProcess:
    """A service started as its own OS process, as `make up` does."""

    name: str
    stack: Stack
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def environment(self) -> dict[str, str]:
        p = PORTS[self.name]
        env = dict(os.environ)
        env.update({
            "ENVIRONMENT": "development",  # the services' default is production
            "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
            "TOPIC_PREFIX": self.stack.prefix,
            "TOPIC_PARTITIONS": "4",
            "PERSON_ID_SECRET": SECRET,
            f"{p}_DATABASE_URL": self.stack.db_url(self.name),
            f"{p}_HTTP_PORT": str(self.port),
            f"{p}_PENDING_WAIT_SECONDS": "3",
            f"{p}_SWEEP_INTERVAL_SECONDS": "0.5",
            "LOG_LEVEL": "INFO",
        })
        env.update(self.env)
        return env

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", f"services.{self.name}", "migrate"],
            cwd=ROOT, env=self.environment(), check=True, capture_output=True,
        )

    def start(self, **extra_env: str) -> ServiceProcess:
        self.migrate()
        env = self.environment()
        env.update(extra_env)
        logs = ROOT / ".state" / "test-logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.stack.prefix}{self.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}", "run"],
            cwd=ROOT, env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115  # the child's log
        )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    async def wait_ready(self, timeout: float = 60) -> None:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_tail()}")
            return self.ready()
        await wait_for(check, timeout, f"{self.name} ready")

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return orjson.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=orjson.dumps(body),
            headers={"content-type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            return orjson.loads(r.read())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    async def db(self) -> asyncpg.Connection:
        """The service's database (its own DATABASE_URL when the test gave it one)."""
        url = self.env.get(f"{PORTS[self.name]}_DATABASE_URL") or self.stack.db_url(self.name)
        return await asyncpg.connect(url)


class Producer:
    """Produces contract events (or raw bytes) to the stack's topics."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=5)

    async def __aenter__(self) -> Self:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def event(self, topic: str, type: str, data: dict[str, Any], *, subject: str,
                    agency: str = "suqian", id: str | None = None, source: str = "/institutions/INST-T",
                    time: str = "2026-03-01T09:00:00+08:00") -> str:
        event_id = id or uuid.uuid4().hex
        value = encode_raw(type, data, id=event_id, source=source, subject=subject,
                           agencyid=agency, time=time)
        await self.raw(topic, value, key=subject)
        return event_id

    async def raw(self, topic: str, value: bytes, key: str | None = None) -> None:
        await self.producer.send_and_wait(
            self.stack.topic(topic), value=value, key=key.encode() if key else None,
            headers=headers(),
        )


@dataclass
class Received:
    topic: str
    key: str | None
    value: bytes
    headers: dict[str, str]
    timestamp: int = 0  # the record's Kafka timestamp (ms): the relay's publication order
    partition: int = 0
    sealed: bytes | None = None  # a dead letter's value as it is on the topic (encrypted)

    @property
    def event(self) -> dict[str, Any]:
        return orjson.loads(self.value)


async def consumer_caught_up(consumer: AIOKafkaConsumer) -> bool:
    """``consumer`` has read every record written so far to the partitions it is assigned."""
    assignment = list(consumer.assignment())
    if not assignment:
        return False
    ends = await consumer.end_offsets(assignment)
    for tp in assignment:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


class Collector:
    """Reads topics from the beginning in the background; tests wait on what it gathered."""

    def __init__(self, stack: Stack, names: Iterable[str]) -> None:
        self.consumer = AIOKafkaConsumer(
            *(stack.topic(n) for n in names), bootstrap_servers=KAFKA,
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        )
        self.prefix = stack.prefix
        self.records: list[Received] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()

    async def _run(self) -> None:
        async for r in self.consumer:
            found = {k: v.decode() for k, v in r.headers}
            value, sealed = r.value, None
            if crypto.KEY_ID_HEADER in found:  # dead letters are sealed: tests read them in clear
                sealed = r.value
                try:
                    value = TEST_KEYRING.open(r.value)
                except InvalidToken:  # a test running the services with keys of its own
                    pass
            self.records.append(Received(
                r.topic[len(self.prefix):], r.key.decode("utf-8", "replace") if r.key else None, value,
                found, r.timestamp, r.partition, sealed,
            ))

    async def caught_up(self) -> bool:
        """The collector has read every record written so far to its topics."""
        return await consumer_caught_up(self.consumer)

    def events(self, topic: str, type_suffix: str = "",
               where: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict[str, Any]]:
        found = []
        for r in self.records:
            if r.topic != topic:
                continue
            try:
                e = r.event
            except orjson.JSONDecodeError:
                continue  # another test's garbage on a shared topic (e.g. an internal-topic poison)
            if not isinstance(e, dict):
                continue
            if str(e.get("type", "")).endswith(type_suffix) and where(e):
                found.append(e)
        return found

    def dead_letters(self, topic: str) -> list[Received]:
        return [r for r in self.records if r.topic == topic]

    def dead_letter_codes(self, topic: str) -> dict[str, list[str]]:
        """error-codes by the CloudEvents id of each dead letter that has one."""
        found: dict[str, list[str]] = {}
        for r in self.dead_letters(topic):
            try:
                event_id = orjson.loads(r.value)["id"]
            except (ValueError, KeyError, TypeError):
                continue
            found.setdefault(str(event_id), []).append(r.headers["error-code"])
        return found

    async def wait_events(self, topic: str, type_suffix: str, count: int = 1,
                          where: Callable[[dict[str, Any]], bool] = lambda e: True,
                          timeout: float = 30) -> list[dict[str, Any]]:
        await wait_for(lambda: len(self.events(topic, type_suffix, where)) >= count, timeout,
                       f"{count} x {type_suffix} on {topic}")
        return self.events(topic, type_suffix, where)
