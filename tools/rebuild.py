"""Rebuild a stopped service's database from its input topics: drop, migrate, rewind, restart.

    python -m tools.rebuild <enrollment|assessment|subsidy> [--yes]

Reads the same settings as the service (environment, e.g. ENROLLMENT_DATABASE_URL,
KAFKA_BOOTSTRAP_SERVERS, TOPIC_PREFIX, ENROLLMENT_HTTP_PORT). Refuses while the service answers on
its /healthz port, while its consumer group has live members, or when any input partition's
history no longer starts at offset 0 (retention or DeleteRecords removed records: a rebuild
would forget the decisions they led to and could pay again). Then it rewinds the service's
consumer group to the beginning of its input topics (first, so a failure later leaves a service
that re-reads everything into its intact database, which the inbox absorbs), drops and recreates
the database and migrates it. Started again, the service re-reads its input from the start and
rebuilds the same state; the events it republishes carry the same deterministic ids, so
downstream services skip them as duplicates (its dead letters are sent again, though).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.runtime import db
from shared.runtime.service import ServiceDefinition
from shared.runtime.settings import ServiceSettings

SERVICES = ("enrollment", "assessment", "subsidy")


class Refused(Exception):
    """The rebuild must not run now; the message says why and what to do."""


def load(service: str) -> tuple[ServiceDefinition, ServiceSettings]:
    """The service's definition and its settings, read from the environment as it would."""
    definition: ServiceDefinition = importlib.import_module(f"services.{service}.app").DEFINITION
    config = importlib.import_module(f"services.{service}.config")
    settings_cls = next(
        value for value in vars(config).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
    )
    return definition, settings_cls()


def answers_healthz(settings: ServiceSettings) -> bool:
    url = f"http://{settings.http_host}:{settings.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # 503 from a stalled consumer (CONSUMER_STALL_SECONDS) is still a live service
    except OSError:
        return False


async def group_members(settings: ServiceSettings) -> int:
    """How many consumers are in the service's group right now (another replica, elsewhere)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([settings.group_id])
    finally:
        await admin.close()
    # DescribeGroups v0+: groups = [(error_code, group_id, state, protocol_type, protocol, members...)]
    return sum(len(group[5]) for response in responses for group in response.groups)


async def input_partitions(settings: ServiceSettings, topic_names: Sequence[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        # list first: describing a missing topic may auto-create it on brokers that allow that
        missing = sorted(set(topic_names) - set(await admin.list_topics()))
        described = [] if missing else await admin.describe_topics(list(topic_names))
    finally:
        await admin.close()
    if missing:
        raise Refused(f"input topics {missing} do not exist on {settings.kafka_bootstrap_servers}: "
                      "is KAFKA_BOOTSTRAP_SERVERS / TOPIC_PREFIX the service's?")
    return [TopicPartition(t["topic"], p["partition"])
            for t in described for p in sorted(t["partitions"], key=lambda p: p["partition"])]


async def rewind_group(settings: ServiceSettings, topic_names: Sequence[str]) -> dict[str, int]:
    """Commit the log start offset of every input partition for the service's group; return
    how many records the service will re-read, per topic. Refuses, changing nothing, when a
    partition's log start offset is above 0: its first records are gone."""
    partitions = await input_partitions(settings, topic_names)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        starts = await consumer.beginning_offsets(partitions)
        truncated = {tp: offset for tp, offset in starts.items() if offset > 0}
        if truncated:
            shown = ", ".join(f"{tp.topic}[{tp.partition}] starts at {offset}"
                              for tp, offset in sorted(truncated.items())[:5])
            raise Refused(
                f"the history of {len(truncated)} input partition(s) no longer starts at offset 0 "
                f"({shown}{', ...' if len(truncated) > 5 else ''}): retention or DeleteRecords "
                "removed records, and a database rebuilt without them would forget the decisions "
                "they led to (and could pay again). Nothing was changed. Keep the database, or "
                "restore the full history first; create topics with retention.ms=-1 "
                "(TOPIC_RETENTION_MS, docs/OPERATIONS.md)"
            )
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(starts)
        for tp, offset in starts.items():
            if await consumer.committed(tp) != offset:
                raise RuntimeError(f"the group's offset of {tp} did not move to {offset}")
    finally:
        await consumer.stop()
    per_topic: dict[str, int] = {}
    for tp in partitions:
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + ends[tp] - starts[tp]
    return per_topic


async def recreate_database(settings: ServiceSettings, definition: ServiceDefinition) -> list[str]:
    # Dropping and migrating is schema work: the migration credentials where configured.
    base, _, name = settings.migration_dsn.rpartition("/")
    name, _, params = name.partition("?")
    conn = await asyncpg.connect(base + "/postgres" + (f"?{params}" if params else ""))
    try:
        users = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
        )
        if users:
            raise Refused(
                f"database {name} has {users} open connection(s); close them (is a replica or a "
                "psql session still attached?) and run again"
            )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()
    await db.ensure_database(settings.migration_dsn)
    return await db.migrate(settings.migration_dsn, definition.directory)


async def rebuild(service: str, say: Callable[[str], None] = print) -> None:
    definition, settings = load(service)
    if answers_healthz(settings):
        raise Refused(
            f"{service} is running: it answers on http://{settings.http_host}:"
            f"{settings.http_port}/healthz. Stop it first (deploy/local/services.sh stop, or stop "
            "its process), then run the rebuild again"
        )
    members = await group_members(settings)
    if members:
        raise Refused(
            f"consumer group {settings.group_id} still has {members} live member(s): a replica of "
            f"{service} is running somewhere; stop every replica, then run the rebuild again"
        )
    inputs = [settings.topic(t) for t in definition.topics]
    rewound = await rewind_group(settings, inputs)
    say(f"{service}: consumer group {settings.group_id} rewound to the beginning of "
        + ", ".join(f"{t} ({n} records to re-read)" for t, n in rewound.items()))
    applied = await recreate_database(settings, definition)
    name = settings.database_url.rsplit("/", 1)[1].split("?")[0]
    say(f"{service}: database {name} dropped, recreated and migrated ({', '.join(applied)})")
    say(f"{service}: now start the service (deploy/local/services.sh start, or "
        f"python -m services.{service} run). It re-reads its input from the start and rebuilds "
        "the same state; what it republishes carries the same ids, which downstream skips as "
        "duplicates; its dead letters are sent to the DLQ again.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.rebuild",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    args = parser.parse_args(argv)
    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing: not a terminal; pass --yes to rebuild without confirmation",
                  file=sys.stderr)
            return 2
        answer = input(f"This DROPS the {args.service} database and rewinds its consumer group. "
                       f"Type the service name to go on: ")
        if answer.strip() != args.service:
            print("not confirmed; nothing changed", file=sys.stderr)
            return 2
    try:
        asyncio.run(rebuild(args.service))
    except Refused as exc:
        print(f"refusing: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
