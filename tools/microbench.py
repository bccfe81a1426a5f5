"""Micro-benchmarks of single hot-path steps on the real PostgreSQL and Kafka (issue #18).

The end-to-end benchmark (tools.bench) moves ±10-15 % between identical runs on a shared
2-core machine, more than most single changes are worth; these measure one step in isolation,
variants interleaved, and print the median and the best of several rounds.

    python -m tools.microbench state-upsert --dsn postgresql://postgres@127.0.0.1/subsidy_b1234abcd
    python -m tools.microbench relay
    python -m tools.microbench state-codec --dsn postgresql://postgres@127.0.0.1/subsidy_b1234abcd
    python -m tools.microbench wake

``state-upsert``: the subsidy's per-batch upsert of person states (the statement of
services.subsidy.store), pglz against LZ4 compression of the ``state`` column, on real states
read from a subsidy database (one a ``tools.bench --keep`` run left). ``relay``: the outbox
relay (shared.runtime.outbox.Relay.publish_once) publishing ~1.2 KB rows to a 4-partition topic.
``state-codec``: decoding and encoding real person states (services.subsidy.state_codec, the
engine's classes as they are in this checkout: run it from two checkouts to compare), with the
cyclic collector off as it is inside a batch (GC_PAUSE_IN_BATCH), and the memory a decoded
state takes (tracemalloc). ``wake``: the CPU a process is charged for waking up (a thread's
sleep, an asyncio sleep) and for one PostgreSQL round trip (``SELECT 1``), in the client and in
its server backend (``/proc/<pid>/schedstat``), with the machine otherwise as it is: what a batch's
statements and a service's polls cost beyond their work.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
import uuid
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.runtime import db
from shared.runtime.outbox import COLUMNS, Relay
from services.subsidy import state_codec
from services.subsidy.store import UPSERT_STATES

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
KAFKA = "127.0.0.1:9092"

def upsert_into(table: str) -> str:
    """The subsidy store's person-state upsert, into ``table`` (a copy of ``person_state``)."""
    return UPSERT_STATES.replace("INTO person_state ", f"INTO {table} ", 1)


def report(name: str, per_row_us: list[float]) -> None:
    print(f"  {name:24s} median {statistics.median(per_row_us):6.1f} µs/row, "
          f"best {min(per_row_us):6.1f} ({len(per_row_us)} rounds)")


async def state_upsert(dsn: str, rows: int, rounds: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch("SELECT person_id, state FROM person_state LIMIT $1", rows)
        if not found:
            raise SystemExit(f"no person states in {dsn}: run `python -m tools.bench --keep` first")
        ids, states = [r["person_id"] for r in found], [r["state"] for r in found]
        pending = [False] * len(ids)
        print(f"{len(ids)} states of {statistics.mean(map(len, states)):.0f} characters on average")
        tables = {"pglz": "microbench_pglz", "lz4": "microbench_lz4"}
        for method, table in tables.items():
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (LIKE person_state INCLUDING ALL)")
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN state SET COMPRESSION {method}")
            await conn.execute(upsert_into(table), ids, states, pending)
        timings: dict[str, list[float]] = {m: [] for m in tables}
        for _ in range(rounds):  # interleaved: the machine's drift hits both alike
            for method, table in tables.items():
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(upsert_into(table), ids, states, pending)
                timings[method].append((time.perf_counter() - started) * 1e6 / len(ids))
        print("person-state upsert (one statement per batch, rows already stored):")
        for method, values in timings.items():
            report(method, values)
        for table in tables.values():
            await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()


async def codec(dsn: str, rows: int, rounds: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        texts = [r["state"].encode() for r in await conn.fetch(
            "SELECT state FROM person_state ORDER BY person_id LIMIT $1", rows)]
    finally:
        await conn.close()
    if not texts:
        raise SystemExit(f"no person states in {dsn}: run `python -m tools.bench --keep` first")
    print(f"{len(texts)} states of {statistics.mean(map(len, texts)):.0f} bytes on average")
    decode: list[float] = []
    encode: list[float] = []
    for _ in range(rounds):
        gc.disable()
        try:
            started = time.perf_counter()
            states = [state_codec.loads(text) for text in texts]
            decode.append((time.perf_counter() - started) * 1e6 / len(texts))
            started = time.perf_counter()
            for state in states:
                state_codec.dumps(state)
            encode.append((time.perf_counter() - started) * 1e6 / len(texts))
        finally:
            del states
            gc.enable()
    print("person states (the collector off, as inside a batch):")
    report("decode", decode)
    report("encode", encode)
    tracemalloc.start()
    states = [state_codec.loads(text) for text in texts]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"  decoded, in memory       {size / len(states) / 1024:6.1f} KB a state")


async def relay(rows: int, rounds: int) -> None:
    dsn = f"{PG}/microbench_{uuid.uuid4().hex[:8]}"
    await db.ensure_database(dsn)
    await db.migrate(dsn, ROOT / "services" / "assessment")
    topic = f"microbench.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 4, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, enable_idempotence=True, acks="all",
                                linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    pool = await db.create_pool(dsn)
    try:
        value = orjson.dumps({"specversion": "1.0", "data": {"pad": "x" * 1100}})
        headers = orjson.dumps([["content-type", "application/cloudevents+json"]]).decode()
        relay_ = Relay(pool, producer, batch_size=rows)
        timings: list[float] = []
        for _ in range(rounds):
            async with pool.acquire() as conn:
                await conn.copy_records_to_table("outbox", columns=COLUMNS, records=[
                    (topic, f"p_{n % 997}".encode(), "microbench.v1", value, headers)
                    for n in range(rows)])
            started = time.perf_counter()
            published = await relay_.publish_once()
            timings.append((time.perf_counter() - started) * 1e6 / published)
        print(f"outbox relay, {rows} rows of {len(value)} bytes a round:")
        report("publish_once", timings)
    finally:
        await pool.close()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
        admin_conn = await asyncpg.connect(f"{PG}/postgres")
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin_conn.close()


def _backend_cpu_seconds(pid: int) -> float:
    """A local process's time on a CPU (``/proc/<pid>/schedstat``, nanoseconds, the scheduler's
    own sum, not sampled at clock ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def wake(rounds: int) -> None:
    async def asleep(period: float, n: int) -> float:
        began = time.process_time()
        for _ in range(n):
            await asyncio.sleep(period)
        return (time.process_time() - began) / n * 1e6

    def sleep(period: float, n: int) -> float:
        began = time.process_time()
        for _ in range(n):
            time.sleep(period)
        return (time.process_time() - began) / n * 1e6

    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        results: dict[str, list[float]] = {"time.sleep(5 ms)": [], "asyncio.sleep(5 ms)": [],
                                           "round trip, client": [], "round trip, server": []}
        for _ in range(rounds):
            results["time.sleep(5 ms)"].append(sleep(0.005, 200))
            results["asyncio.sleep(5 ms)"].append(await asleep(0.005, 200))
            client, server = time.process_time(), _backend_cpu_seconds(backend)
            for _ in range(2000):
                await conn.fetchval("SELECT 1")
            results["round trip, client"].append((time.process_time() - client) / 2000 * 1e6)
            results["round trip, server"].append((_backend_cpu_seconds(backend) - server) / 2000 * 1e6)
        for name, values in results.items():
            print(f"  {name:24s} median {statistics.median(values):6.1f} µs of CPU each, "
                  f"best {min(values):6.1f} ({len(values)} rounds)")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    upsert = sub.add_parser("state-upsert", help="person-state upsert, pglz against LZ4")
    upsert.add_argument("--dsn", required=True, help="a subsidy database with person states")
    upsert.add_argument("--rows", type=int, default=1000)
    upsert.add_argument("--rounds", type=int, default=8)
    codec_args = sub.add_parser("state-codec", help="person states decoded and encoded")
    codec_args.add_argument("--dsn", required=True, help="a subsidy database with person states")
    codec_args.add_argument("--rows", type=int, default=5000)
    codec_args.add_argument("--rounds", type=int, default=8)
    relay_args = sub.add_parser("relay", help="the outbox relay, rows a second")
    relay_args.add_argument("--rows", type=int, default=2000)
    relay_args.add_argument("--rounds", type=int, default=8)
    wake_args = sub.add_parser("wake", help="CPU per wake-up and per PostgreSQL round trip")
    wake_args.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "state-upsert":
        asyncio.run(state_upsert(args.dsn, args.rows, args.rounds))
    elif args.what == "state-codec":
        asyncio.run(codec(args.dsn, args.rows, args.rounds))
    elif args.what == "wake":
        asyncio.run(wake(args.rounds))
    else:
        asyncio.run(relay(args.rows, args.rounds))


if __name__ == "__main__":
    main()
