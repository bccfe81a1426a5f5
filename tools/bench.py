"""End-to-end benchmark: a seeded population through Kafka, PostgreSQL and the three real services.

    python -m tools.bench --persons 100000 --prefill-persons 1000000 --json bench.json
    python -m tools.bench --persons 5000            # a quick run

Phases, on an isolated topic prefix with fresh databases (as tests/e2e does):

1. prefill (optional, ``--prefill-persons N``): a small template population (``--template-persons``)
   is streamed through a throw-away stack; its stored rows are then copied into the measured
   databases server-side, ``N / template`` times, with every indexed text key rewritten
   (``pf<k>:`` prefix), so the tables and indexes hold N persons of realistic shape without
   streaming them. Budgets (the only cross-person state) are left untouched.
2. throughput: every training record of the throughput persons is produced as fast as possible,
   then (once the subsidy service has consumed every enrollment event, the order the oracle
   assumes) every assessment record. Throughput = upstream records / (first record produced ->
   last subsidy decision published), both Kafka record timestamps.
3. latency: the remaining ``--paced-persons`` are produced at ``--paced-rate`` events/s (every
   ``PACED_TICK_SECONDS`` the records due by then) with a traceparent naming each record; every
   subsidy decision carries the traceparent of the record that caused it, so latency = decision
   timestamp - the time that record was sent.

Completeness: every subsidy decision of the offline oracle (tools.expected) is published exactly
once and nothing else is, with the oracle's per-person order.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from shared.contract import topics
from shared.contract.envelope import headers
from services.subsidy.policy_files import load_policy_dir
from tests.harness import KAFKA, ROOT, SECRET, ServiceProcess, Stack, consumer_caught_up, wait_for
from tools.expected import Out, expected_outcome, national_ids_by_lane, persons_in_several_lanes
from tools.population import Population, Record
from tools.simulate import simulate

SERVICES = ("enrollment", "assessment", "subsidy")
INPUTS = {
    "enrollment": (topics.TRAINING_UPSTREAM,),
    "assessment": (topics.ASSESSMENT_UPSTREAM, topics.ENROLLMENT_EVENTS),
    "subsidy": (topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, topics.SUBSIDY_REVIEWS),
}
SKIP_TABLES = frozenset({"alembic_version", "schema_migrations", "outbox", "pending",
                         "dead_letters", "fund_year", "policy_load"})
TRACE_FLAGS = "-01"


# ---- pure parts (unit-tested) ---------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def traceparent(seq: int) -> str:
    """A W3C traceparent whose trace id names the upstream record ``seq``."""
    return f"00-{seq:032x}-{1:016x}{TRACE_FLAGS}"


def trace_seq(value: str | None) -> int | None:
    """The record number a traceparent made by :func:`traceparent` names, else None."""
    if not value or not value.startswith("00-") or len(value) < 35:
        return None
    try:
        return int(value[3:35], 16)
    except ValueError:
        return None


def with_traceparent(value: bytes, seq: int) -> bytes:
    """The record value with a traceparent naming ``seq`` (values that are not objects unchanged)."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if not isinstance(obj, dict):
        return value
    obj["traceparent"] = traceparent(seq)
    return orjson.dumps(obj)


def decision_key(type: str, id: str, data: dict[str, Any]) -> tuple[str, str, bytes]:
    return (type, id, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


@dataclass
class Completeness:
    expected: int
    published: int
    missing: int
    unexpected: int
    duplicated: int
    order_ok: bool
    # For the first persons whose order differs: (person, expected ids, published ids).
    order_samples: list[tuple[str, list[str], list[str]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.missing == 0 and self.unexpected == 0 and self.duplicated == 0
                and self.order_ok and self.published == self.expected)


def completeness(expected: Iterable[Out], published: Iterable[dict[str, Any]],
                 unordered: frozenset[str] = frozenset()) -> Completeness:
    """Every expected decision published exactly once, nothing else, in the oracle's per-person
    order (except for the ``unordered`` persons, whose order the oracle cannot know: see
    tools.expected.persons_in_several_lanes)."""
    want: Counter[tuple[str, str, bytes]] = Counter()
    want_order: dict[str, list[str]] = {}
    for o in expected:
        want[decision_key(o.type, o.id, o.data)] += 1
        want_order.setdefault(o.key, []).append(o.id)
    got: Counter[tuple[str, str, bytes]] = Counter()
    got_order: dict[str, list[str]] = {}
    for e in published:
        got[decision_key(e["type"], e["id"], e["data"])] += 1
        got_order.setdefault(e["subject"], []).append(e["id"])
    missing = sum((want - got).values())
    extra = got - want
    duplicated = sum(n for k, n in extra.items() if k in want)
    unexpected = sum(n for k, n in extra.items() if k not in want)
    differs = [(p, want_order.get(p, []), got_order.get(p, []))
               for p in sorted(set(want_order) | set(got_order))
               if p not in unordered and want_order.get(p) != got_order.get(p)]
    return Completeness(sum(want.values()), sum(got.values()), missing, unexpected, duplicated,
                        not differs, differs[:3])


def split_lanes(pop: Population, paced: int) -> set[int]:
    """The person indices for the paced phase: the last ``paced`` whose national ids no other
    person shares (so splitting the stream in two keeps every person's records in one phase)."""
    nids = national_ids_by_lane(pop)
    owners: Counter[str] = Counter(n for s in nids.values() for n in s)
    chosen: set[int] = set()
    for index in range(pop.persons - 1, -1, -1):
        if len(chosen) >= paced:
            break
        if all(owners[n] == 1 for n in nids.get(index, ())):
            chosen.add(index)
    return chosen


# ---- machine and process figures ------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    jars = sorted((ROOT / ".state/kafka/libs").glob("kafka_2.13-*.jar"))
    kafka = jars[0].name.removeprefix("kafka_2.13-").removesuffix(".jar") if jars else "unknown"
    return {
        "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "cpu": cpu,
        "kernel": platform.release(), "python": platform.python_version(), "kafka": kafka,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def proc_figures(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds) of a process, from /proc."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak, (int(fields[11]) + int(fields[12])) / ticks


def cpu_snapshot(service_pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far: by the machine (all cores, busy time), PostgreSQL (every server
    process, and the backends that have exited, which the postmaster has reaped), Kafka, each
    service and this process (the load generator and the collectors)."""
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    out = {"machine": (sum(values) - values[3] - values[4]) / ticks, "postgresql": 0.0,
           "kafka": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        own, children = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        if comm == "postgres" or comm.startswith("postgres:"):
            parent = Path(f"/proc/{fields[1]}/stat")
            is_postmaster = not (parent.exists() and "(postgres" in parent.read_text())
            out["postgresql"] += (own + (children if is_postmaster else 0)) / ticks
        elif comm == "java" and b"kafka" in cmdline:
            out["kafka"] += own / ticks
    for name, pids in service_pids.items():
        out[name] = 0.0
        for pid in pids:
            try:
                out[name] += proc_figures(pid)[1]
            except OSError:
                pass
    usage = os.times()
    out["load generator"] = usage.user + usage.system
    return out


def batch_counters(text: str) -> dict[str, float]:
    """From a service's /metrics text: batches consumed, records in them and seconds spent, and
    the seconds of cyclic garbage collection (all generations)."""
    wanted = {"skills_batch_size_count": "batches", "skills_batch_size_sum": "records",
              "skills_batch_processing_seconds_sum": "seconds"}
    out = dict.fromkeys([*wanted.values(), "gc_seconds"], 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] += float(value)
        elif name.startswith("skills_gc_seconds_total{"):
            out["gc_seconds"] += float(value)
    return out


def read_batch_counters(world: World) -> dict[str, dict[str, float]]:
    """Each service's batch counters, summed over its replicas, and each replica's own (under
    "<service>#<n>", n from 1 in start order) when a service runs several."""
    found = {name: batch_counters("") for name in world.services}
    seen: Counter[str] = Counter()
    several = Counter(s.name for s in world.processes())
    for service in world.processes():
        seen[service.name] += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5) as r:
                counters = batch_counters(r.read().decode())
        except OSError:
            continue
        for k, v in counters.items():
            found[service.name][k] += v
        if several[service.name] > 1:
            found[f"{service.name}#{seen[service.name]}"] = counters
    return found


def batch_summary(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                  seconds_elapsed: float = 0.0) -> dict[str, dict[str, float]]:
    """Per service (and per replica) over an interval: batches, mean records per batch, mean ms
    per batch and the seconds spent in batches (from fetch to database commit).

    For a service with several replicas, ``parallelism`` is the replicas' busy seconds summed
    over the interval's wall-clock seconds: above 1.0, two replicas were inside a batch at the
    same moment for at least (parallelism - 1) x the interval (they cannot all have taken turns).
    """
    out = {}
    for name, b in after.items():
        a = before.get(name, {})
        n = b["batches"] - a.get("batches", 0.0)
        records = b["records"] - a.get("records", 0.0)
        seconds = b["seconds"] - a.get("seconds", 0.0)
        out[name] = {"batches": int(n), "mean_records": round(records / n, 1) if n else 0.0,
                     "mean_ms": round(1000 * seconds / n, 1) if n else 0.0,
                     "busy_seconds": round(seconds, 2),
                     "gc_seconds": round(b.get("gc_seconds", 0.0) - a.get("gc_seconds", 0.0), 2)}
    for name in [n for n in out if "#" not in n]:
        replicas = [v for k, v in out.items() if k.startswith(name + "#")]
        if replicas and seconds_elapsed > 0:
            out[name]["parallelism"] = round(
                sum(r["busy_seconds"] for r in replicas) / seconds_elapsed, 2)
    return out


def cpu_split(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Each part's share of the machine's cores over an interval, in cores (2.0 = both busy)."""
    if seconds <= 0:
        return {}
    return {k: round((after[k] - before.get(k, 0.0)) / seconds, 2) for k in after}


# ---- the stack ------------------------------------------------------------------------------


@dataclass
class World:
    stack: Stack
    services: dict[str, ServiceProcess]
    partitions: int
    replicas: list[ServiceProcess] = field(default_factory=list)  # beyond the first of each

    def processes(self) -> list[ServiceProcess]:
        return [*self.services.values(), *self.replicas]

    async def committed(self, admin: AIOKafkaAdminClient, service: str) -> int:
        offsets = await admin.list_consumer_group_offsets(self.stack.prefix + service)
        wanted = {self.stack.topic(t) for t in INPUTS[service]}
        return sum(m.offset for tp, m in offsets.items() if tp.topic in wanted and m.offset > 0)

    async def end_offsets(self, consumer: AIOKafkaConsumer, names: Iterable[str]) -> dict[str, int]:
        parts = [TopicPartition(self.stack.topic(n), p) for n in names for p in range(self.partitions)]
        ends = await consumer.end_offsets(parts)
        found: Counter[str] = Counter()
        for tp, end in ends.items():
            found[tp.topic.removeprefix(self.stack.prefix)] += end
        return dict(found)


class ProfiledService(ServiceProcess):
    """A service sampled by py-spy (CPU only, ~100 samples/s, without pausing it), writing
    ``<dir>/<name>.txt`` (collapsed stacks) when it stops; see :func:`summarise_profile`."""

    profile_dir: Path | None = None
    spy: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> ServiceProcess:
        super().start(**extra_env)
        if self.profile_dir is not None and self.proc is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            self.spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking",
                 "--rate", "100", "--format", "raw", "--pid", str(self.proc.pid),
                 "--output", str(self.profile_dir / f"{self.name}.txt")],
                stdout=subprocess.DEVNULL, stderr=open(self.profile_dir / f"{self.name}.spy.log", "ab"),  # noqa: SIM115  # py-spy's log
            )
        return self

    def stop(self) -> None:
        super().stop()
        if self.spy is not None:
            self.spy.wait(60)  # it writes its file once the process is gone
            self.spy = None


def summarise_profile(lines: Iterable[str], top: int = 12) -> list[tuple[str, float, float]]:
    """py-spy's collapsed stacks (``frame;frame;... count``) as the ``top`` functions by
    inclusive share of samples: (function, inclusive %, self %)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # "function (file:line)" -> "function (file)": one entry per function, not per line
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return []
    skip = ("<module>", "_run_module_as_main", "_run_code", "run_until_complete", "run_forever",
            "_run_once", "Handle._run", "Runner.run", "run (asyncio", "cli (")
    ranked = [(f, n) for f, n in inclusive.most_common() if not any(k in f for k in skip)]
    return [(f, round(100 * n / total, 1), round(100 * own[f] / total, 1)) for f, n in ranked[:top]]


def write_profiles(directory: Path) -> list[str]:
    """Summaries of the services' profiles, written beside them as ``<name>.top.txt``."""
    lines = []
    for name in SERVICES:
        path = directory / f"{name}.txt"
        if not path.exists():
            continue
        rows = summarise_profile(path.read_text().splitlines(), top=200)
        by_own = sorted(rows, key=lambda r: -r[2])[:12]
        text = [f"{name}: share of samples, inclusive / own, the 12 largest own shares"] + [
            f"  {inc:5.1f}% {own:5.1f}%  {frame}" for frame, inc, own in by_own
        ]
        (directory / f"{name}.top.txt").write_text("\n".join(text) + "\n")
        lines += text
    return lines


def service_env(args: argparse.Namespace) -> dict[str, str]:
    env = {f"{p}_PENDING_WAIT_SECONDS": "3600" for p in ("ENROLLMENT", "ASSESSMENT", "SUBSIDY")}
    env["LOG_LEVEL"] = "WARNING"
    for item in args.service_env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


async def start_world(args: argparse.Namespace, prefill: int, prefill_template: bool = False) -> World:
    stack = Stack(prefix=f"b{os.urandom(4).hex()}.")
    await stack.create_topics(args.partitions)
    env = service_env(args)
    services: dict[str, ServiceProcess] = {}
    for name in SERVICES:
        profiled = ProfiledService(name, stack, env=dict(env, TOPIC_PARTITIONS=str(args.partitions)))
        profiled.profile_dir = args.profile if not prefill_template else None
        services[name] = profiled
    for service in services.values():
        service.migrate()
    if prefill:
        await prefill_databases(args, stack, prefill)
    replicas = [] if prefill_template else [
        ServiceProcess(name, stack, env=dict(env, TOPIC_PARTITIONS=str(args.partitions)))
        for name, n in args.replicas.items() for _ in range(n - 1)
    ]
    for service in [*services.values(), *replicas]:
        service.start()
    for service in [*services.values(), *replicas]:
        await service.wait_ready(120)
    return World(stack, services, args.partitions, replicas)


def stop_world(world: World) -> None:
    for service in world.processes():
        service.stop()


async def append_record(producer: AIOKafkaProducer, batches: dict[int, Any], name: str,
                        partition: int, key: bytes, value: bytes,
                        hdrs: list[tuple[str, bytes]]) -> Any | None:
    """Append a record to ``partition``'s open batch in ``batches``; when that batch is full it
    is closed and sent (its future returned) and a new one takes the record."""
    batch = batches.get(partition)
    if batch is None:
        batch = batches[partition] = producer.create_batch()
    if batch.append(key=key, value=value, timestamp=None, headers=hdrs) is not None:
        return None
    batch.close()
    sent = await producer.send_batch(batch, name, partition=partition)
    batch = batches[partition] = producer.create_batch()
    batch.append(key=key, value=value, timestamp=None, headers=hdrs)  # the first always fits
    return sent


async def send_open(producer: AIOKafkaProducer, batches: dict[int, Any], name: str) -> list[Any]:
    """Close and send every open batch (at once, not after the producer's linger); their futures."""
    futures = []
    for partition, batch in batches.items():
        batch.close()
        futures.append(await producer.send_batch(batch, name, partition=partition))
    return futures


async def produce(producer: AIOKafkaProducer, world: World, topic: str, pop: Population,
                  records: list[Record]) -> float:
    """Produce in bulk, each person's records to their lane's partition; the first send time.

    Records are appended to per-partition record batches that are sent whole (as an upstream
    system uploading a month of attendance would), which costs the shared cores far less than
    one send call and one future per record."""
    name = world.stack.topic(topic)
    hdrs = headers()
    futures = []
    first = time.time()
    open_batches: dict[int, Any] = {}
    for record in records:
        sent = await append_record(producer, open_batches, name, pop.lane(record.key) % world.partitions,
                                   record.key.encode(), record.value, hdrs)
        if sent is not None:
            futures.append(sent)
        if len(futures) >= 64:
            await asyncio.gather(*futures)
            futures = []
    futures += await send_open(producer, open_batches, name)
    await asyncio.gather(*futures)
    return first


# The paced phase sends every this often the records due by then, one record batch per partition:
# a Kafka 4 producer's default ``linger.ms`` groups a steady stream the same way. With one
# ``send`` per record this process used 0.29-0.42 of the two cores at 2,000 a second, taken
# from the services under measurement; with the batches 0.16-0.24 (README, issue #18's fourth
# round). A record is never sent before its time and at most about one tick after it, and its
# latency is measured from when it was sent.
PACED_TICK_SECONDS = 0.005


async def produce_paced(producer: AIOKafkaProducer, world: World, topic: str, pop: Population,
                        records: list[Record], rate: float, start_seq: int,
                        sent_at: dict[int, float]) -> list[float]:
    """Produce at ``rate`` records/s, each with a traceparent naming its number in ``sent_at``;
    return how late each record was sent against its schedule (seconds: a stalled sender, such
    as one paused by its own garbage collector, shows here rather than as the services')."""
    name = world.stack.topic(topic)
    hdrs = headers()
    # Prepared before the clock starts: the values with their traceparents, the partitions.
    prepared = [(record.key.encode(), with_traceparent(record.value, start_seq + n),
                 pop.lane(record.key) % world.partitions) for n, record in enumerate(records)]
    futures = []
    late: list[float] = []
    began = time.monotonic()
    tick = began - PACED_TICK_SECONDS
    n = 0
    while n < len(prepared):
        tick = max(tick + PACED_TICK_SECONDS, began + n / rate)
        delay = tick - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now, wall = time.monotonic(), time.time()
        batches: dict[int, Any] = {}
        while n < len(prepared) and began + n / rate <= now:
            key, value, partition = prepared[n]
            sent = await append_record(producer, batches, name, partition, key, value, hdrs)
            if sent is not None:
                futures.append(sent)
            sent_at[start_seq + n] = wall
            late.append(now - (began + n / rate))
            n += 1
        futures += await send_open(producer, batches, name)
    await asyncio.gather(*futures)
    return late


class Decisions:
    """Collects a topic (by default the subsidy decisions) in the background."""

    def __init__(self, world: World, *topic_names: str, latest: bool = False) -> None:
        self.world = world
        self.consumer = AIOKafkaConsumer(
            *(world.stack.topic(t) for t in topic_names or (topics.SUBSIDY_EVENTS,)),
            bootstrap_servers=KAFKA,
            auto_offset_reset="latest" if latest else "earliest", enable_auto_commit=False,
            group_id=None, fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.values: list[tuple[int, bytes]] = []  # (timestamp ms, value)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=10000)
            for records in batch.values():
                self.values.extend((r.timestamp, r.value) for r in records)

    async def caught_up(self) -> bool:
        return await consumer_caught_up(self.consumer)


@dataclass
class Sample:
    at: float
    committed: dict[str, int]


class OverlapProbe:
    """Polls /healthz of every replica of a service that runs several, every ``interval``
    seconds, and counts the instants at which two or more of them were inside a batch at once:
    the direct sight of replicas working at the same time (no global lock serialising them)."""

    def __init__(self, world: World, interval: float = 0.02) -> None:
        self.interval = interval
        by_name: dict[str, list[ServiceProcess]] = {}
        for service in world.processes():
            by_name.setdefault(service.name, []).append(service)
        self.groups = {name: procs for name, procs in by_name.items() if len(procs) > 1}
        self.polls: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()  # polls with at least one replica in a batch
        self.together: Counter[str] = Counter()  # polls with two or more
        self.started = self.stopped = 0.0

    @staticmethod
    def _in_batch(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(orjson.loads(r.read()).get("in_batch"))
        except (OSError, ValueError):
            return False

    async def run(self) -> None:
        self.started = time.time()
        try:
            while self.groups:
                for name, procs in self.groups.items():
                    states = await asyncio.gather(*(asyncio.to_thread(self._in_batch, p.port)
                                                    for p in procs))
                    self.polls[name] += 1
                    self.busy[name] += any(states)
                    self.together[name] += sum(states) >= 2
                await asyncio.sleep(self.interval)
        finally:
            self.stopped = time.time()

    def summary(self) -> dict[str, dict[str, float]]:
        seconds = max(self.stopped - self.started, 1e-9)
        return {name: {"polls": self.polls[name], "busy_polls": self.busy[name],
                       "together_polls": self.together[name],
                       "together_share_of_busy": round(self.together[name] / self.busy[name], 3)
                       if self.busy[name] else 0.0,
                       "together_seconds_estimate": round(
                           seconds * self.together[name] / self.polls[name], 1)
                       if self.polls[name] else 0.0}
                for name in self.groups}


@dataclass
class Monitor:
    """Samples each service's committed offsets and its process figures."""

    world: World
    admin: AIOKafkaAdminClient
    samples: list[Sample] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    async def sample(self) -> Sample:
        committed = {s: await self.world.committed(self.admin, s) for s in SERVICES}
        s = Sample(time.time(), committed)
        self.samples.append(s)
        peak: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for service in self.world.processes():
            if service.proc is not None and service.proc.poll() is None:
                try:
                    rss, seconds = proc_figures(service.proc.pid)
                except OSError:
                    continue
                peak[service.name] = max(peak.get(service.name, 0.0), rss)  # per process
                cpu[service.name] = cpu.get(service.name, 0.0) + seconds  # all replicas
        for name, rss in peak.items():
            self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), rss)
        for name, seconds in cpu.items():
            self.cpu_seconds[name] = max(self.cpu_seconds.get(name, 0.0), seconds)
        return s

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(0.5)

    def rate(self, service: str, since: float, until: float) -> float:
        """Records per second the service consumed over the sampling intervals in which it made
        progress (so idle time between the phases does not count)."""
        window = [s for s in self.samples if since <= s.at <= until]
        records = seconds = 0.0
        for a, b in zip(window, window[1:], strict=False):
            if b.committed[service] > a.committed[service]:
                records += b.committed[service] - a.committed[service]
                seconds += b.at - a.at
        return records / seconds if seconds > 0 else 0.0


async def wait_consumed(monitor: Monitor, targets: dict[str, int], budget: float, what: str) -> None:
    async def done() -> bool:
        s = await monitor.sample()
        return all(s.committed[k] >= v for k, v in targets.items())
    await wait_for(done, budget, what)


# ---- prefill --------------------------------------------------------------------------------


async def prefill_databases(args: argparse.Namespace, target: Stack, persons: int) -> None:
    """Stream a template population through a throw-away stack, then clone its rows into the
    target databases ``persons / template`` times with every indexed text key rewritten."""
    began = time.monotonic()
    template = min(args.template_persons, persons)
    copies = max(1, round(persons / template))
    print(f"prefill: streaming a {template}-person template, then {copies} copies "
          f"(= {template * copies} persons)", flush=True)
    tpl_args = argparse.Namespace(**vars(args))
    world = await start_world(tpl_args, 0, prefill_template=True)
    try:
        pop = simulate(template, args.seed + 7919, disorder=False)
        await stream_two_phases(world, pop, pop.training, pop.assessment, None, 600)
    finally:
        stop_world(world)
    for name in SERVICES:
        source = await asyncpg.connect(world.stack.db_url(name))
        dest = await asyncpg.connect(target.db_url(name))
        try:
            await clone_tables(source, dest, copies)
        finally:
            await source.close()
            await dest.close()
    await world.stack.drop()
    print(f"prefill: done in {time.monotonic() - began:.0f} s", flush=True)


async def clone_tables(source: asyncpg.Connection, dest: asyncpg.Connection, copies: int) -> None:
    tables = [r["relname"] for r in await source.fetch(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY relname")]
    for table in tables:
        if table in SKIP_TABLES:
            continue
        columns = await source.fetch(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, "
            "pg_get_expr(d.adbin, d.adrelid) AS default, "
            "EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid "
            "        AND a.attnum = ANY(i.indkey)) AS indexed "
            "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            table,
        )
        keep = [c for c in columns if not (c["default"] or "").startswith("nextval(")]
        names = [c["attname"] for c in keep]
        staging = f"bench_tpl_{table}"
        cols = ", ".join(f'"{n}"' for n in names)
        await dest.execute(f'CREATE TEMP TABLE "{staging}" AS SELECT {cols} FROM "{table}" WITH NO DATA')
        buffer = _Buffer()
        await source.copy_from_table(table, columns=names, output=buffer.write, format="binary")
        await dest.copy_to_table(staging, source=buffer.read(), columns=names, format="binary")
        exprs = [
            f"""'pf' || g || ':' || "{c['attname']}\"""" if c["indexed"] and c["type"] == "text"
            else f'"{c["attname"]}"' for c in keep
        ]
        await dest.execute(
            f'INSERT INTO "{table}" ({cols}) SELECT {", ".join(exprs)} '
            f'FROM "{staging}", generate_series(1, {copies}) g'
        )
        await dest.execute(f'DROP TABLE "{staging}"')
    # As a store that has been running would be: vacuumed (visibility map, hint bits) and
    # analysed, so autovacuum of the fresh copies does not compete with the measurement.
    await dest.execute("VACUUM ANALYZE")


class _Buffer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))

    def read(self) -> Any:
        chunks = self.chunks

        async def gen() -> Any:
            for c in chunks:
                yield c
        return gen()


# ---- the run --------------------------------------------------------------------------------


async def stream_two_phases(world: World, pop: Population, training: list[Record],
                            assessment: list[Record], monitor: Monitor | None, budget: float,
                            phases: dict[str, float] | None = None) -> float:
    """Produce training, wait until it is consumed everywhere, produce assessment, wait; the
    time the first record was sent. ``phases`` receives each phase's seconds."""
    own_admin = None
    if monitor is None:
        own_admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await own_admin.start()
        monitor = Monitor(world, own_admin)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        first = await produce(producer, world, topics.TRAINING_UPSTREAM, pop, training)
        await settle(world, monitor, budget)
        second = time.time()
        await produce(producer, world, topics.ASSESSMENT_UPSTREAM, pop, assessment)
        await settle(world, monitor, budget)
        if phases is not None:
            phases["training"] = round(second - first, 2)
            phases["assessment"] = round(time.time() - second, 2)
        return first
    finally:
        await producer.stop()
        if own_admin is not None:
            await own_admin.close()


async def settle(world: World, monitor: Monitor, budget: float) -> None:
    """Wait until every service has consumed everything upstream of it and emptied its outbox."""
    probe = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=None)
    await probe.start()
    try:
        for name in SERVICES:
            ends = await world.end_offsets(probe, INPUTS[name])
            await wait_consumed(monitor, {name: sum(ends.values())}, budget, f"{name} consumed its input")
            conn = await world.services[name].db()
            try:
                await wait_for(lambda c=conn: _empty(c), budget, f"{name} outbox drained")  # type: ignore[misc]  # c: a Connection
            finally:
                await conn.close()
    finally:
        await probe.stop()


async def _empty(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM outbox)"))


def settle_garbage() -> None:
    """Collect once, then exempt everything alive from the collector: the load generator holds
    the whole population (millions of objects at 100,000 persons), and a full collection over
    it took 500-720 ms of this process at 10,000 persons. Falling in a paced phase, it stopped
    the sending for that long, after which the sender caught up with its schedule in one burst
    of 1,100-1,800 records: load the services never had to take at 2,000 a second, and the
    latency measured of it (the services do the same at startup, ``shared/runtime/gc_tuning``)."""
    gc.collect()
    gc.freeze()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    began = time.monotonic()
    print(f"simulating {args.persons} persons (seed {args.seed})...", flush=True)
    pop = simulate(args.persons, args.seed, disorder=args.disorder)
    paced_lanes = split_lanes(pop, min(args.paced_persons, args.persons // 5))
    outcome = expected_outcome(pop, load_policy_dir(ROOT / "services/subsidy/policies"), SECRET)
    fast_t = [r for r in pop.training if pop.lane(r.key) not in paced_lanes]
    fast_a = [r for r in pop.assessment if pop.lane(r.key) not in paced_lanes]
    slow_t = [r for r in pop.training if pop.lane(r.key) in paced_lanes]
    slow_a = [r for r in pop.assessment if pop.lane(r.key) in paced_lanes]
    print(f"  {len(fast_t) + len(fast_a)} records for throughput, {len(slow_t) + len(slow_a)} paced; "
          f"{len(outcome.subsidy)} expected decisions ({time.monotonic() - began:.0f} s)", flush=True)
    settle_garbage()

    world = await start_world(args, args.prefill_persons)
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    monitor = Monitor(world, admin)
    await monitor.sample()
    decisions = Decisions(world)
    await decisions.start()
    sampler = asyncio.create_task(monitor.run())
    budget = 600 + args.persons / 20
    try:
        # Throughput.
        print("throughput phase...", flush=True)
        start = time.time()
        phases: dict[str, float] = {}
        pids: dict[str, list[int]] = {}
        for svc in world.processes():
            if svc.proc is not None:
                pids.setdefault(svc.name, []).append(svc.proc.pid)
        cpu_before, cpu_at = cpu_snapshot(pids), time.time()
        batches_before = read_batch_counters(world)
        overlap = OverlapProbe(world)
        probing = asyncio.create_task(overlap.run())
        try:
            first = await stream_two_phases(world, pop, fast_t, fast_a, monitor, budget, phases)
        finally:
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)
        cpu_used = cpu_split(cpu_before, cpu_snapshot(pids), time.time() - cpu_at)
        batches = batch_summary(batches_before, read_batch_counters(world), time.time() - cpu_at)
        for name, seen in overlap.summary().items():
            batches[name]["replicas_in_batch_at_once"] = seen  # type: ignore[assignment]  # a map beside the figures in the JSON
        await wait_for(decisions.caught_up, 120, "the decision collector caught up")
        await asyncio.sleep(1.0)
        await wait_for(decisions.caught_up, 120, "the decision collector caught up")
        end_ms = max((ts for ts, _ in decisions.values), default=int(time.time() * 1000))
        seconds = end_ms / 1000 - first
        phase_end = time.time()
        fast_events = len(fast_t) + len(fast_a)
        per_service = {s: monitor.rate(s, start, phase_end) for s in SERVICES}
        consumed = {s: monitor.samples[-1].committed[s] - monitor.samples[0].committed[s] for s in SERVICES}
        n_fast_decisions = len(decisions.values)

        # Latency.
        settle_garbage()
        print(f"latency phase at {args.paced_rate:g} events/s...", flush=True)
        sent_at: dict[int, float] = {}
        hops = Decisions(world, topics.ENROLLMENT_EVENTS, topics.ASSESSMENT_EVENTS, latest=True)
        await hops.start()
        await wait_for(lambda: bool(hops.consumer.assignment()), 30, "hop collector assigned")
        for tp in hops.consumer.assignment():
            await hops.consumer.position(tp)
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, linger_ms=1)
        await producer.start()
        # Cores used while each paced half is sent and handled (until settled: the assessment
        # half is a burst of about a second, so its figures include the settling after it).
        paced_cores: dict[str, dict[str, float]] = {}
        late: list[float] = []  # how late each paced record was sent
        gc.disable()  # what the phase allocates is small and acyclic; a collection is a stall
        try:
            cpu_before, cpu_at = cpu_snapshot(pids), time.time()
            late += await produce_paced(producer, world, topics.TRAINING_UPSTREAM, pop, slow_t,
                                        args.paced_rate, 1, sent_at)
            await settle(world, monitor, budget)
            paced_cores["training"] = cpu_split(cpu_before, cpu_snapshot(pids), time.time() - cpu_at)
            cpu_before, cpu_at = cpu_snapshot(pids), time.time()
            late += await produce_paced(producer, world, topics.ASSESSMENT_UPSTREAM, pop, slow_a,
                                        args.paced_rate, 1 + len(slow_t), sent_at)
            await settle(world, monitor, budget)
            paced_cores["assessment"] = cpu_split(cpu_before, cpu_snapshot(pids), time.time() - cpu_at)
        finally:
            gc.enable()
            await producer.stop()
        await asyncio.sleep(1.0)
        await wait_for(decisions.caught_up, 120, "the decision collector caught up")
        await wait_for(hops.caught_up, 120, "the hop collector caught up")
        await hops.stop()
        await monitor.sample()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await decisions.stop()
        await admin.close()
        stop_world(world)
        if not args.keep:
            await world.stack.drop()

    latencies = []
    published = []
    # Where the time goes: per cause (a training or an assessment record) the first hop
    # (upstream record -> the ingress service's event) and the whole way to the decision.
    by_cause: dict[str, list[float]] = {"training": [], "assessment": []}
    timeline: dict[int, list[float]] = {}  # second of the paced phase the cause was sent in
    paced_from = min(sent_at.values(), default=0.0)
    for n, (ts, value) in enumerate(decisions.values):
        event = orjson.loads(value)
        published.append(event)
        seq = trace_seq(event.get("traceparent"))
        if n >= n_fast_decisions and seq is not None and seq in sent_at:
            latencies.append(ts / 1000 - sent_at[seq])
            by_cause["training" if seq <= len(slow_t) else "assessment"].append(latencies[-1])
            second = int(sent_at[seq] - paced_from)
            timeline.setdefault(second, []).append(latencies[-1])
    check = completeness(outcome.subsidy, published, frozenset(persons_in_several_lanes(pop, SECRET)))
    first_hop = []
    hop_by_cause: dict[str, list[float]] = {"training": [], "assessment": []}
    for ts, value in hops.values:
        seq = trace_seq(orjson.loads(value).get("traceparent"))
        if seq is not None and seq in sent_at:
            first_hop.append(ts / 1000 - sent_at[seq])
            hop_by_cause["training" if seq <= len(slow_t) else "assessment"].append(first_hop[-1])
    breakdown = {
        cause: {
            "decisions": len(by_cause[cause]),
            "p50_ms": round(percentile(by_cause[cause], 50) * 1000, 1),
            "p99_ms": round(percentile(by_cause[cause], 99) * 1000, 1),
            "first_hop_p50_ms": round(percentile(hop_by_cause[cause], 50) * 1000, 1),
            "first_hop_p99_ms": round(percentile(hop_by_cause[cause], 99) * 1000, 1),
        }
        for cause in by_cause
    }
    return {
        "machine": info,
        "command": " ".join(sys.argv),
        "persons": args.persons, "seed": args.seed, "prefill_persons": args.prefill_persons,
        "partitions": args.partitions, "service_env": service_env(args),
        "replicas": dict.fromkeys(SERVICES, 1) | args.replicas,
        "throughput": {
            "upstream_events": fast_events, "seconds": round(seconds, 2),
            "events_per_second": round(fast_events / seconds, 0) if seconds > 0 else 0,
            "decisions": n_fast_decisions,
            # Each phase until settled (every service caught up, outboxes empty; settle polls).
            "phases": {name: {"records": n, "seconds": phases.get(name)}
                       for name, n in (("training", len(fast_t)), ("assessment", len(fast_a)))},
            "per_service_records_per_second": {k: round(v) for k, v in per_service.items()},
            # Cores used by each part while the phases ran (the machine has os.cpu_count()).
            "cores_used": cpu_used,
            "batches": batches,
            "per_service_records_consumed": consumed,
        },
        "latency": {
            "rate": args.paced_rate, "upstream_events": len(slow_t) + len(slow_a),
            "decisions": len(latencies),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "max_ms": round(max(latencies, default=math.nan) * 1000, 1),
            "cores_used": paced_cores,
            # How late the bench sent the paced records against their schedule: a stalled
            # sender sends a burst afterwards, load the paced rate does not describe.
            "sent_late_p99_ms": round(percentile(late, 99) * 1000, 1),
            "sent_late_max_ms": round(max(late, default=math.nan) * 1000, 1),
            "enrollment_hop_p50_ms": round(percentile(first_hop, 50) * 1000, 1),
            "enrollment_hop_p99_ms": round(percentile(first_hop, 99) * 1000, 1),
            "by_cause": breakdown,
            "timeline": [
                {"second": k, "decisions": len(v), "p50_ms": round(percentile(v, 50) * 1000, 1),
                 "max_ms": round(max(v) * 1000, 1)}
                for k, v in sorted(timeline.items())
            ],
        },
        "services": {s: {"peak_rss_mb": round(monitor.peak_rss_mb.get(s, 0), 1),
                         "cpu_seconds": round(monitor.cpu_seconds.get(s, 0), 1)} for s in SERVICES},
        "completeness": asdict(check) | {"ok": check.ok},
        "wall_seconds": round(time.monotonic() - began, 1),
    }


def paced_cores_lines(cores: dict[str, dict[str, float]]) -> list[str]:
    """The table's lines of the cores each part used in each half of the paced phase."""
    lines = []
    for half, used in cores.items():
        parts = ", ".join(f"{part} {used[part]}" for part in (
            "postgresql", "kafka", *SERVICES, "load generator") if part in used)
        lines.append(f"{'  cores busy, paced ' + half + ' records':44} "
                     f"{used.get('machine', 0):>7} ({parts})")
    return lines


def table(result: dict[str, Any]) -> str:
    m, t, lat, c = result["machine"], result["throughput"], result["latency"], result["completeness"]
    lines = [
        f"machine: {m['cores']} cores, {m['memory_gb']} GB, {m['cpu']}, Linux {m['kernel']}, "
        f"Python {m['python']}, Kafka {m['kafka']} (load avg at start {m['load_average_at_start']})",
        f"population: {result['persons']} persons, seed {result['seed']}, "
        f"{result['prefill_persons']} prefilled, {result['partitions']} partitions, processes "
        + ", ".join(f"{k} {v}" for k, v in result.get("replicas", {}).items()),
        "",
        f"{'metric':44} {'value':>14}",
        f"{'end-to-end throughput (upstream events/s)':44} {t['events_per_second']:>14,.0f}",
        f"{'  upstream events / seconds':44} {t['upstream_events']:>7} / {t['seconds']:<6}",
    ]
    for name, phase in t.get("phases", {}).items():
        lines.append(f"{'  ' + name + ' phase: records / seconds':44} "
                     f"{phase['records']:>7} / {phase['seconds']}")
    if t.get("cores_used"):
        used = t["cores_used"]
        lines.append(f"{'  cores busy (machine), of ' + str(os.cpu_count()):44} {used.get('machine', 0):>14}")
        for part in ("postgresql", "kafka", *SERVICES, "load generator"):
            if part in used:
                lines.append(f"{'    ' + part:44} {used[part]:>14}")
    for s, v in t["per_service_records_per_second"].items():
        lines.append(f"{'  ' + s + ' records consumed/s':44} {v:>14,}")
        b = t.get("batches", {}).get(s)
        if b:
            lines.append(f"{'    batches, mean records / mean ms, busy s':44} "
                         f"{b['batches']}, {b['mean_records']} / {b['mean_ms']}, {b['busy_seconds']}")
            lines.append(f"{'    cyclic garbage collection (s)':44} {b.get('gc_seconds', 0.0):>14}")
        for name, r in sorted(t.get("batches", {}).items()):
            if name.startswith(s + "#"):
                lines.append(f"{'      replica ' + name + ': batches, busy s':44} "
                             f"{r['batches']}, {r['busy_seconds']}")
        if b and "parallelism" in b:
            lines.append(f"{'      replicas busy s / wall s':44} {b['parallelism']:>14}")
        if b and "replicas_in_batch_at_once" in b:
            o = b["replicas_in_batch_at_once"]
            lines.append(f"{'      polls with 2+ replicas in a batch at once':44} "
                         f"{o['together_polls']} of {o['busy_polls']} busy "
                         f"({100 * o['together_share_of_busy']:.0f} %), ~{o['together_seconds_estimate']} s")
    lines += [
        f"{'latency at ' + format(lat['rate'], 'g') + ' events/s p50 (ms)':44} {lat['p50_ms']:>14}",
        f"{'  p95 (ms)':44} {lat['p95_ms']:>14}",
        f"{'  p99 (ms)':44} {lat['p99_ms']:>14}",
        f"{'  max (ms), decisions measured':44} {lat['max_ms']:>7}, {lat['decisions']}",
        f"{'  records sent late, p99 / max (ms)':44} "
        f"{lat.get('sent_late_p99_ms', math.nan):>7} / {lat.get('sent_late_max_ms', math.nan)}",
        f"{'  first hop (upstream -> ingress event) p50/p99':44} "
        f"{lat['enrollment_hop_p50_ms']:>7} / {lat['enrollment_hop_p99_ms']}",
    ]
    for cause, b in lat.get("by_cause", {}).items():
        lines.append(f"{'  caused by ' + cause + ' records p50/p99 (n)':44} "
                     f"{b['p50_ms']:>7} / {b['p99_ms']} ({b['decisions']})")
        lines.append(f"{'    first hop p50/p99':44} {b['first_hop_p50_ms']:>7} / {b['first_hop_p99_ms']}")
    lines += paced_cores_lines(lat.get("cores_used", {}))
    for s, v in result["services"].items():
        lines.append(f"{'  ' + s + ' peak RSS (MB) / CPU (s)':44} {v['peak_rss_mb']:>7} / {v['cpu_seconds']}")
    verdict = "OK: every expected decision published exactly once" if c["ok"] else "INCOMPLETE"
    lines += [
        f"completeness: {verdict} ({c['published']} published, {c['expected']} expected, "
        f"{c['missing']} missing, {c['unexpected']} unexpected, {c['duplicated']} duplicated, "
        f"per-person order {'ok' if c['order_ok'] else 'DIFFERS'})",
        f"wall time {result['wall_seconds']} s",
    ]
    for person, want, got in c.get("order_samples", []):
        lines.append(f"  order differs for {person}: expected {want}, published {got}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=20260301)
    parser.add_argument("--paced-rate", type=float, default=2000.0, help="events/s in the latency phase")
    parser.add_argument("--paced-persons", type=int, default=2000, help="persons streamed paced")
    parser.add_argument("--prefill-persons", type=int, default=0,
                        help="persons stored before the run (1000000 in the full run)")
    parser.add_argument("--template-persons", type=int, default=2000,
                        help="size of the streamed template the prefill clones")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--disorder", action="store_true")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the services, e.g. SUBSIDY_BATCH_MAX_RECORDS=10000")
    parser.add_argument("--profile", type=Path,
                        help="sample the services with py-spy, writing stacks and summaries here")
    parser.add_argument("--replicas", action="append", default=[], metavar="SERVICE=N",
                        help="run N processes of a service (one consumer group: they split the "
                             "partitions), e.g. --replicas enrollment=2")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    args.replicas = {k: int(v) for k, _, v in (r.partition("=") for r in args.replicas)}
    unknown = set(args.replicas) - set(SERVICES)
    if unknown or any(n < 1 for n in args.replicas.values()):
        parser.error(f"--replicas takes SERVICE=N with SERVICE one of {', '.join(SERVICES)}, N >= 1")
    result = asyncio.run(run(args))
    print(table(result))
    if args.profile is not None:
        print("\nwhere the time goes (py-spy, whole run; a process that wakes PostgreSQL or Kafka "
              "is often preempted inside the socket write, so that frame measures contention for "
              "the two cores more than its own work):\n" + "\n".join(write_profiles(args.profile)))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0 if result["completeness"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
