"""Alembic for the service databases: the environment every service's ``alembic/env.py`` runs,
and the runtime's part of the baseline revision.

Each service database has one Alembic environment (``services/<name>/alembic/``, revisions in
``versions/``) whose target metadata is the runtime's tables (``shared/runtime/tables.py``) and
the service's (``services/<name>/store.py``). ``python -m services.<name> migrate`` upgrades to
head through :func:`shared.runtime.db.migrate`, which hands its connection to the environment;
the ``alembic`` command line (``alembic -c services/<name>/alembic.ini ...``) connects by itself
with the service's settings (``<SERVICE>_MIGRATION_DATABASE_URL``, else ``DATABASE_URL``, and
``DATABASE_SSLMODE`` / ``DATABASE_SSLROOTCERT``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

# Tables of a service database that no model describes: the versions table of the SQL-file
# runner used before Alembic, kept on databases it built (stamped at the baseline, docs/OPERATIONS.md).
UNMODELLED_TABLES = frozenset({"schema_migrations"})

# The runtime's part of every service's baseline revision: the SQL files the former runner
# applied (shared/runtime/migrations/*.sql), verbatim, in their order. See the baseline
# revisions for why the baseline executes SQL rather than Alembic operations.
RUNTIME_BASELINE: tuple[tuple[str, str], ...] = (
    ('0000_runtime', '''\
-- The runtime tables every service database carries: the processed-event inbox and the outbox.

CREATE TABLE inbox (
    source      text        NOT NULL,
    id          text        NOT NULL,
    digest      bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);

CREATE TABLE outbox (
    seq        bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    event_type text        NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Records waiting for something they refer to (order tolerance); dead-lettered after the
-- service's waiting period as unknown_reference.
CREATE TABLE pending (
    seq        bigserial   PRIMARY KEY,
    ref        text        NOT NULL,
    event_type text        NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    "offset"   bigint      NOT NULL,
    key        text,
    value      bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_ref ON pending (ref);
CREATE INDEX pending_received ON pending (received_at);

-- Positions already dead-lettered: a bad record redelivered after a crash is not sent twice.
CREATE TABLE dead_letters (
    topic     text   NOT NULL,
    partition int    NOT NULL,
    "offset"  bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
'''),
    ('0000_runtime_outbox_key', '''\
-- Outbox keys as bytes: a dead letter keeps the key of the record it carries exactly as it came,
-- which text cannot hold when the key has a 0x00 byte or is not UTF-8.
ALTER TABLE outbox ALTER COLUMN key TYPE bytea USING convert_to(key, 'UTF8');
'''),
    ('0001_dead_letter_event', '''\
-- Records already dead-lettered, by (source, id) and the sha256 of their bytes: the same bad
-- record sent twice (at another offset) is one dead letter, not two (EVENTS.md §1 idempotency).
CREATE TABLE dead_letter_event (
    source text  NOT NULL,
    id     text  NOT NULL,
    digest bytea NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id, digest)
);
'''),
    ('0002_security_fingerprint', '''\
-- Which PERSON_ID_SECRET this database was built with: an HMAC of a fixed label keyed with the
-- secret (never the secret). A service refuses to start with another secret
-- (shared.runtime.service.check_fingerprint; docs/SECURITY.md §4).
CREATE TABLE secret_fingerprint (
    name        text PRIMARY KEY,
    fingerprint text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()  -- when it was first recorded
);
'''),
)


def statements(script: str) -> list[str]:
    """The statements of a SQL file (each ends with ``;`` at the end of a line; the baseline
    files have no function bodies), without those that are only comments. One at a time,
    because asyncpg prepares every statement and a prepared statement holds one."""
    found = []
    for chunk in re.split(r";[ \t]*(?:--[^\n]*)?\n", script + "\n"):
        code = "\n".join(line for line in chunk.splitlines() if not line.strip().startswith("--"))
        if code.strip():
            found.append(chunk.strip())
    return found


def execute_files(files: Sequence[tuple[str, str]]) -> None:
    """Execute SQL files verbatim, in order, in the revision's transaction."""
    bind = op.get_bind()
    for _name, script in files:
        for statement in statements(script):
            bind.exec_driver_sql(statement)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name in UNMODELLED_TABLES)


def compare_server_default(context: Any, inspected: sa.Column[Any], modelled: sa.Column[Any],
                           inspected_default: str | None, modelled_default: Any,
                           rendered_modelled_default: str | None) -> bool | None:
    """A ``bigserial`` column that is not a key: reflection reports no default (the sequence is
    the column's own), the model names it; the same column. Otherwise Alembic's comparison."""
    sequence = modelled.default
    if (isinstance(sequence, sa.Sequence) and inspected_default is None
            and rendered_modelled_default == f"nextval('{sequence.name}')"
            and inspected.autoincrement is True):
        return False
    return None


def configure(connection: sa.Connection, metadata: Sequence[sa.MetaData], **extra: Any) -> None:
    """How every environment compares models with a database: types and server defaults too."""
    context.configure(
        connection=connection, target_metadata=list(metadata), compare_type=True,
        compare_server_default=compare_server_default, include_name=include_name,
        transaction_per_migration=True,
        **extra,
    )


def run(metadata: Sequence[sa.MetaData], settings: Callable[[], Any]) -> None:
    """The body of a service's ``env.py``. With a connection in the config's attributes (set by
    ``db.migrate`` or a test), migrate on it; otherwise connect with the service's settings."""
    config = context.config
    applied: list[str] = config.attributes.setdefault("applied", [])

    def record(*, step: Any, **_: Any) -> None:
        applied.append(step.up_revision_id if step.is_upgrade else step.down_revision_ids)

    def on(connection: sa.Connection) -> None:
        configure(connection, metadata, on_version_apply=record)
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: run them on a database")
    connection = config.attributes.get("connection")
    if connection is not None:
        on(connection)
        return

    async def connect_and_run() -> None:
        from shared.runtime import db  # noqa: PLC0415 (db imports this module)

        s = settings()
        engine = db.engine(s.migration_dsn, ssl=db.ssl_option(s.database_sslmode,
                                                              s.database_sslrootcert))
        try:
            async with engine.connect() as conn:
                await conn.run_sync(on)
                await conn.commit()
        finally:
            await engine.dispose()

    asyncio.run(connect_and_run())
