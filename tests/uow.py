"""Helpers of the unit-of-work tests: records as the consumer hands them to a handler, the
outbox read back, a connection that counts its statements, a fresh migrated database."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import asyncpg
import orjson

from shared.contract.envelope import decode, encode_raw
from shared.runtime import db
from shared.runtime.consumer import Incoming
from shared.runtime.outbox import Outbox, RawRecord
from tests.harness import PG, ROOT

_offsets = itertools.count()


def incoming(topic: str, type: str, data: dict[str, Any], *, agency: str = "suqian",
             subject: str = "s", id: str | None = None, time: str = "2026-03-01T09:00:00+08:00",
             source: str = "/tests/uow") -> Incoming:
    """A record as decoded by the consumer (``topic`` without prefix)."""
    value = encode_raw(type, data, id=id or uuid.uuid4().hex, source=source, subject=subject,
                       agencyid=agency, time=time)
    record = RawRecord(topic, 0, next(_offsets), subject.encode(), value)
    return Incoming(decode(value, topic), record)


def published(out: Outbox) -> list[dict[str, Any]]:
    """The events in the outbox, as the CloudEvents they will be on Kafka."""
    return [orjson.loads(row[3]) for row in out.rows]


def dead(out: Outbox) -> list[tuple[str, str]]:
    """The dead letters in the outbox: (error code, error detail)."""
    found = []
    for _, _, row, code in out.dead:
        headers = dict(orjson.loads(row[4]))
        found.append((code, headers["error-detail"]))
    return found


class Counting:
    """An asyncpg connection that records every statement sent through it (COPY included)."""

    STATEMENTS = ("execute", "executemany", "fetch", "fetchrow", "fetchval",
                  "copy_records_to_table")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in self.STATEMENTS:
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.statements.append(f"{name} {args[0] if args else ''}")
            return await attr(*args, **kwargs)

        return counted


async def fresh_database(service: str) -> str:
    """A new database of ``service``, migrated; its DSN (drop it with `drop_database`)."""
    dsn = f"{PG}/{service}_uow{uuid.uuid4().hex[:8]}"
    await db.ensure_database(dsn)
    await db.migrate(dsn, ROOT / "services" / service)
    return dsn


async def drop_database(dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


