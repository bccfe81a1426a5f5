"""Read and replay a service's dead letters, opening their sealed values (docs/SECURITY.md §2).

    python -m tools.dlq show <enrollment|assessment|subsidy> [--code C] [--limit N]
    python -m tools.dlq replay <enrollment|assessment|subsidy> [--code C] [--offset P:O ...] [--yes]

Dead-letter values are encrypted at rest (header ``encryption-key-id`` names the key); this tool
opens them with the service's own keys (``DATA_ENCRYPTION_KEY`` and
``DATA_ENCRYPTION_PREVIOUS_KEYS``, the same environment as the service: ``KAFKA_*``,
``TOPIC_PREFIX``). ``show`` prints each dead letter's position, headers and clear value to the
terminal (it holds personal data: do not redirect it into files that outlive the incident).
``replay`` publishes the selected dead letters' clear values, byte for byte and with their
original keys, to the topic each came from (header ``original-topic``), once the cause is fixed
(an agency or catalogue added, a producer corrected): the service then reads them as new
records. A record whose ``(source, id)`` the service already took in is skipped by its inbox,
so a corrected record needs a new id. Reads the DLQ from its start to its end at launch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.fernet import InvalidToken

from shared.contract import topics
from shared.contract.envelope import headers as contract_headers
from shared.runtime import crypto
from shared.runtime.service import kafka_security, settings_class
from shared.runtime.settings import ServiceSettings

SERVICES = ("enrollment", "assessment", "subsidy")


@dataclass
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes  # in clear
    headers: dict[str, str]

    @property
    def code(self) -> str:
        return self.headers.get("error-code", "")


def open_value(keyring: crypto.Keyring, value: bytes, headers: dict[str, str]) -> bytes:
    """A dead letter's value in clear: opened when sealed (it names its key id)."""
    if crypto.KEY_ID_HEADER not in headers:
        return value  # written before encryption
    try:
        return keyring.open(value)
    except InvalidToken:
        raise SystemExit(
            f"no configured key opens a dead letter sealed with key {headers[crypto.KEY_ID_HEADER]} "
            f"(configured: {', '.join(keyring.ids)}); set DATA_ENCRYPTION_PREVIOUS_KEYS"
        ) from None


async def read_dlq(settings: ServiceSettings, service: str, keyring: crypto.Keyring) -> list[DeadLetter]:
    """Every dead letter on the service's DLQ, from its start to its end now, values in clear."""
    topic = settings.topic(topics.dlq(service))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
        enable_auto_commit=False, **kafka_security(settings),
    )
    await consumer.start()
    try:
        client = consumer._client  # a metadata request naming this topic only
        client.add_topic(topic)
        await client.force_metadata_update()
        partitions = [TopicPartition(topic, p)
                      for p in sorted(client.cluster.partitions_for_topic(topic) or ())]
        if not partitions:
            raise SystemExit(f"topic {topic} does not exist")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[DeadLetter] = []
        remaining = {tp for tp in partitions if ends[tp] > await consumer.position(tp)}
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    found = {k: v.decode("utf-8", "replace") for k, v in r.headers}
                    letters.append(DeadLetter(r.partition, r.offset, r.key,
                                              open_value(keyring, r.value or b"", found), found))
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(letters, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


def select(letters: list[DeadLetter], code: str | None, positions: Sequence[str]) -> list[DeadLetter]:
    wanted = {tuple(int(x) for x in p.split(":", 1)) for p in positions}
    return [d for d in letters if (code is None or d.code == code)
            and (not wanted or (d.partition, d.offset) in wanted)]


async def replay(settings: ServiceSettings, letters: list[DeadLetter]) -> int:
    """Publish each dead letter's clear value with its key to its original topic."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers,
                                enable_idempotence=True, acks="all", **kafka_security(settings))
    await producer.start()
    try:
        for d in letters:
            await producer.send_and_wait(d.headers["original-topic"], value=d.value, key=d.key,
                                         headers=contract_headers())
    finally:
        await producer.stop()
    return len(letters)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dlq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("show", "replay"):
        command = commands.add_parser(name)
        command.add_argument("service", choices=SERVICES)
        command.add_argument("--code", help="only dead letters with this error-code")
        command.add_argument("--offset", action="append", default=[], metavar="PARTITION:OFFSET",
                             help="only this DLQ position (repeatable)")
        if name == "show":
            command.add_argument("--limit", type=int, default=50)
        else:
            command.add_argument("--yes", action="store_true", help="do not ask to confirm")
    args = parser.parse_args(argv)
    settings = settings_class(args.service)()
    problems = settings.key_problems()
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 2
    keyring = crypto.Keyring.of(settings.data_keys)
    letters = select(asyncio.run(read_dlq(settings, args.service, keyring)), args.code, args.offset)
    if args.command == "show":
        for d in letters[: args.limit]:
            print(f"{d.partition}:{d.offset} {d.code} {d.headers.get('original-topic')}"
                  f"@{d.headers.get('original-partition')}:{d.headers.get('original-offset')}"
                  f" {d.headers.get('error-detail', '')}")
            print("  " + d.value.decode("utf-8", "replace"))
        print(f"{len(letters)} dead letter(s)")
        return 0
    if not letters:
        print("nothing to replay")
        return 0
    if not args.yes:
        if not os.isatty(0):
            print("not a terminal: confirm with --yes", file=sys.stderr)
            return 2
        answer = input(f"replay {len(letters)} dead letter(s) to their original topics? [y/N] ")
        if answer.strip().lower() != "y":
            return 1
    print(f"replayed {asyncio.run(replay(settings, letters))} dead letter(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
