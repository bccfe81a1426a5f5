"""PostgreSQL access for services: the pool, schema migrations, and the schema-version check.

Each service database has one migration history: the runtime's files (``0000_*``) followed by
the service's own, applied in file-name order and recorded in ``schema_migrations``. A service
refuses to start on a database whose schema is behind its code.
"""

from __future__ import annotations

from pathlib import Path
from ssl import SSLContext, create_default_context
from typing import Any

import asyncpg

RUNTIME_MIGRATIONS = Path(__file__).with_name("migrations")

# What a lost or restarting database raises: the batch, relay or sweep is retried with a
# bounded backoff, never left to kill its task. InternalClientError is asyncpg's own state
# error when a connection dies mid-operation (seen on COMMIT during a fast shutdown).
DATABASE_ERRORS = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)

# SQLSTATE classes in which PostgreSQL refuses the data itself: data exceptions (22: NUL in
# text, a number out of range, including an argument asyncpg cannot encode), integrity
# constraint violations (23) and program limits (54: an index row too large). The same records
# fail the same way every time, so the consumer isolates the record instead of retrying.
# Everything else (connection loss, 40001 serialization failure, 40P01 deadlock, 57P01 admin
# shutdown, 53300 too many connections, ...) is transient: rewind and retry.
REFUSED_CLASSES = frozenset({"22", "23", "54"})


def refused(exc: BaseException) -> bool:
    """Whether the database refused the data (a record's fault) rather than failed."""
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return isinstance(sqlstate, str) and sqlstate[:2] in REFUSED_CLASSES


class SchemaBehind(RuntimeError):
    """The database lacks migrations the code needs; run the service's ``migrate`` command."""


def migration_files(service_dir: Path) -> list[Path]:
    files = sorted(RUNTIME_MIGRATIONS.glob("*.sql")) + sorted(
        (service_dir / "migrations").glob("*.sql")
    )
    return sorted(files, key=lambda p: p.name)


def ssl_option(sslmode: str | None, rootcert: str | None = None) -> SSLContext | str | None:
    """asyncpg's ``ssl`` argument for a libpq ``sslmode`` (None: leave it to the DSN).

    The verifying modes with a CA bundle get a context that checks the chain (and, for
    verify-full, the host name); the others pass through as asyncpg understands them.
    """
    if sslmode is None:
        return None
    if sslmode in ("verify-ca", "verify-full") and rootcert:
        context = create_default_context(cafile=rootcert)
        context.check_hostname = sslmode == "verify-full"
        return context
    return sslmode


def connect_kwargs(ssl_arg: SSLContext | str | None) -> dict[str, Any]:
    return {} if ssl_arg is None else {"ssl": ssl_arg}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing beyond asyncpg's own rollback of an open transaction.

    The default reset runs one more statement per release (unlocking advisory locks, closing
    cursors, resetting settings); the services set no session state and take only
    transaction-scoped advisory locks, so that round trip bought nothing on the hot path."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5,
                      ssl: SSLContext | str | None = None) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=60,
                                     reset=_keep_session, **connect_kwargs(ssl))
    assert pool is not None
    return pool


async def lock_keys(conn: asyncpg.Connection, keys: Any) -> None:
    """Transaction-scoped advisory locks on ``keys`` (text, e.g. ``person:<id>``), taken in one
    statement in the order of their 64-bit hashes, so two transactions that lock overlapping
    sets never wait on each other in a cycle. Unlike ``FOR UPDATE`` they also cover keys that
    have no row yet (a person's first record). A hash collision only makes two unrelated keys
    wait on each other. No round trip when there are none."""
    wanted = sorted(set(keys))
    if wanted:
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(k)) FROM "
            "(SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest($1::text[]) x ORDER BY 1) s",
            wanted,
        )


async def fetch_for(conn: asyncpg.Connection, keys: list[Any], sql: str) -> list[asyncpg.Record]:
    """``sql`` (taking the keys as $1) for a batch's keys of one kind; no round trip when the
    batch has none of that kind."""
    return await conn.fetch(sql, keys) if keys else []


async def applied_versions(conn: asyncpg.Connection) -> set[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(dsn: str, service_dir: Path, *, ssl: SSLContext | str | None = None) -> list[str]:
    """Apply every migration not yet applied, each in its own transaction; return their names."""
    conn = await asyncpg.connect(dsn, **connect_kwargs(ssl))
    try:
        # One migrator at a time per database, whichever replica starts first.
        await conn.execute("SELECT pg_advisory_lock(7261001)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await applied_versions(conn)
        applied = []
        for path in migration_files(service_dir):
            if path.stem in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
            applied.append(path.stem)
        return applied
    finally:
        await conn.close()


async def check_schema(pool: asyncpg.Pool, service_dir: Path) -> None:
    async with pool.acquire() as conn:
        done = await applied_versions(conn)  # type: ignore[arg-type]  # a pool's connection proxy forwards every Connection method (asyncpg-stubs types it apart)
    missing = [p.stem for p in migration_files(service_dir) if p.stem not in done]
    if missing:
        raise SchemaBehind(
            f"database schema is behind the code; missing migrations {missing}: "
            "run `python -m services.<name> migrate` (make up does this)"
        )


async def ensure_database(dsn: str, *, ssl: SSLContext | str | None = None) -> None:
    """Create the database named in ``dsn`` if it does not exist (local stack and tests)."""
    base, _, name = dsn.rpartition("/")
    name, _, params = name.partition("?")
    conn = await asyncpg.connect(base + "/postgres" + (f"?{params}" if params else ""),
                                 **connect_kwargs(ssl))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
