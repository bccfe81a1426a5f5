"""The runtime's tables, part of every service database, as SQLModel models: the single source of
their schema (Alembic migrations are generated from and checked against these models).

The hot path (consumer, outbox, relay, pending) writes and reads them with asyncpg bulk
statements; the models say what the tables are, for migrations and for the query APIs.

Each service database has its own metadata: the runtime's here (``METADATA``) and the
service's (``services/<name>/store.py``), together the ``target_metadata`` of the service's
Alembic environment. Columns are declared in the tables' column order (``SELECT *`` order).
Every model is named ``<Table>Row`` (a model instance is a row), apart from the classes the
services' code already names after the same concepts (``outbox.Outbox``, ``domain.Enrollment``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

TIMESTAMPTZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def column(sa_type: Any, *, nullable: bool = False, primary_key: bool = False,
           server_default: Any = None, unique: bool = False, **kwargs: Any) -> Any:
    """A column exactly as the database has it: its PostgreSQL type, nullability and server
    default (the database fills it; the model's Python default is None)."""
    extra: dict[str, Any] = dict(kwargs)
    if server_default is not None:
        extra["server_default"] = server_default
    return Field(
        default=None, sa_type=sa_type, nullable=nullable, primary_key=primary_key,
        unique=unique, sa_column_kwargs=extra,
    )


def serial(*, primary_key: bool = False, sequence: str | None = None) -> Any:
    """A ``bigserial`` column: a bigint filled from its own sequence. A key column is what
    SQLAlchemy makes a serial by itself; any other names its sequence (``<table>_<column>_seq``),
    which is its server default."""
    if primary_key:
        return column(sa.BigInteger, primary_key=True, autoincrement=True)
    assert sequence is not None
    owned = sa.Sequence(sequence)
    return Field(default=None, sa_type=sa.BigInteger, nullable=False,
                 sa_column_args=[owned], sa_column_kwargs={"server_default": owned.next_value()})


class RuntimeTable(SQLModel, registry=registry()):
    """The base of this database's tables: a metadata of its own (one per service database, so
    two services may each have a table of the same name)."""

METADATA: sa.MetaData = RuntimeTable.metadata


class InboxRow(RuntimeTable, table=True):
    """Processed input events, by CloudEvents (source, id); digest: sha256 of the record."""

    __tablename__ = "inbox"
    source: str = column(sa.Text, primary_key=True)
    id: str = column(sa.Text, primary_key=True)
    digest: bytes = column(sa.LargeBinary)
    received_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class OutboxRow(RuntimeTable, table=True):
    """Records to publish, in ``seq`` order (key as bytes: a dead letter keeps its key as it came)."""

    __tablename__ = "outbox"
    seq: int | None = serial(primary_key=True)
    topic: str = column(sa.Text)
    key: bytes = column(sa.LargeBinary)
    event_type: str = column(sa.Text)
    value: bytes = column(sa.LargeBinary)
    headers: Any = column(postgresql.JSONB, server_default=sa.text("'[]'::jsonb"))
    created_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class PendingRow(RuntimeTable, table=True):
    """Records waiting for something they refer to (order tolerance)."""

    __tablename__ = "pending"
    __table_args__ = (
        sa.Index("pending_ref", "ref"),
        sa.Index("pending_received", "received_at"),
    )
    seq: int | None = serial(primary_key=True)
    ref: str = column(sa.Text)
    event_type: str = column(sa.Text)
    topic: str = column(sa.Text)
    partition: int = column(sa.Integer)
    offset: int = column(sa.BigInteger)
    key: str | None = column(sa.Text, nullable=True)
    value: bytes = column(sa.LargeBinary)
    received_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class DeadLettersRow(RuntimeTable, table=True):
    """Positions already dead-lettered: a bad record redelivered after a crash is not sent twice."""

    __tablename__ = "dead_letters"
    topic: str = column(sa.Text, primary_key=True)
    partition: int = column(sa.Integer, primary_key=True)
    offset: int = column(sa.BigInteger, primary_key=True)
    at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class DeadLetterEventRow(RuntimeTable, table=True):
    """Records already dead-lettered, by (source, id) and the sha256 of their bytes."""

    __tablename__ = "dead_letter_event"
    source: str = column(sa.Text, primary_key=True)
    id: str = column(sa.Text, primary_key=True)
    digest: bytes = column(sa.LargeBinary, primary_key=True)
    at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class SecretFingerprintRow(RuntimeTable, table=True):
    """Which PERSON_ID_SECRET the database was built with (an HMAC, never the secret)."""

    __tablename__ = "secret_fingerprint"
    name: str = column(sa.Text, primary_key=True)
    fingerprint: str = column(sa.Text)
    at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
