"""PostgreSQL access for services: the pool, schema migrations, and the schema-version check.

Each service database has one Alembic environment (``services/<name>/alembic/``) whose models
are the runtime's tables (``shared/runtime/tables.py``) and the service's
(``services/<name>/store.py``). ``migrate`` upgrades it to head; a service refuses to start on a
database whose revision is not its code's head. The hot path uses asyncpg (``create_pool``); the
query APIs read through SQLModel's ``AsyncSession`` (``session_factory``).
"""

from __future__ import annotations

from pathlib import Path
from ssl import SSLContext, create_default_context
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

if TYPE_CHECKING:
    from shared.runtime.settings import ServiceSettings

MIGRATION_LOCK = 7261001  # pg_advisory_lock key: one migrator at a time per database
# The query APIs' own connections, beside the hot path's asyncpg pool (max_size 6).
SESSION_POOL_SIZE = 2
SESSION_MAX_OVERFLOW = 2

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


def engine(dsn: str, *, ssl: SSLContext | str | None = None, **options: Any) -> AsyncEngine:
    """A SQLAlchemy engine on asyncpg that connects exactly as ``create_pool`` does: the DSN
    (``sslmode`` and other libpq parameters included) and ``ssl`` go to ``asyncpg.connect``
    unchanged. jsonb columns decode with orjson, as the services read them elsewhere."""
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, command_timeout=60, **connect_kwargs(ssl))

    options.setdefault("poolclass", NullPool)
    return create_async_engine("postgresql+asyncpg://", async_creator=connect,
                               json_deserializer=orjson.loads, **options)


def session_factory(settings: ServiceSettings) -> async_sessionmaker[AsyncSession]:
    """SQLModel ``AsyncSession``s on the service database for the query APIs (reads), on a
    pool of their own (SESSION_POOL_SIZE + SESSION_MAX_OVERFLOW connections, opened on first
    use); ``dispose_sessions`` closes it at shutdown."""
    bound = engine(
        settings.database_url, ssl=ssl_option(settings.database_sslmode, settings.database_sslrootcert),
        poolclass=None, pool_size=SESSION_POOL_SIZE, max_overflow=SESSION_MAX_OVERFLOW,
        pool_pre_ping=True,
    )
    return async_sessionmaker(bound, class_=AsyncSession, expire_on_commit=False)


async def dispose_sessions(factory: async_sessionmaker[AsyncSession]) -> None:
    await factory.kw["bind"].dispose()


def alembic_config(service_dir: Path) -> Config:
    """The service's Alembic environment (``<service_dir>/alembic``), without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(service_dir / "alembic"))
    return config


def head(service_dir: Path) -> str:
    heads = ScriptDirectory.from_config(alembic_config(service_dir)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"{service_dir / 'alembic'} has {len(heads)} heads {heads}; merge them")
    return heads[0]


def _legacy(service_dir: Path) -> tuple[str, tuple[str, ...]]:
    """The baseline revision and the versions the former SQL-file runner recorded on a database
    that has everything the baseline creates (the service's baseline module says which)."""
    script = ScriptDirectory.from_config(alembic_config(service_dir))
    [base] = script.get_bases()
    module = script.get_revision(base).module
    return base, tuple(module.LEGACY_VERSIONS)


async def revision(conn: Any) -> str | None:
    """The database's Alembic revision (None: never migrated by Alembic)."""
    if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
        return None
    found: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    return found


async def migrate(dsn: str, service_dir: Path, *, ssl: SSLContext | str | None = None) -> list[str]:
    """Upgrade the database to the head revision of the service's Alembic environment, each
    revision in its own transaction; return the revisions applied.

    A database the former SQL-file runner built (``schema_migrations`` holds every file the
    baseline replaces) is stamped at the baseline, never re-created, and then upgraded; one
    holding only some of them is refused (upgrade it with the release before Alembic first)."""
    bound = engine(dsn, ssl=ssl)
    config = alembic_config(service_dir)
    try:
        async with bound.connect() as conn:
            # One migrator at a time per database, whichever replica starts first.
            await conn.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            await conn.commit()
            stamped = await _stamp_legacy(conn, service_dir, config)

            def upgrade(sync_conn: Any) -> None:
                config.attributes["connection"] = sync_conn
                command.upgrade(config, "head")

            await conn.run_sync(upgrade)
            await conn.commit()
    finally:
        await bound.dispose()
    return stamped + [str(r) for r in config.attributes.get("applied", [])]


async def _stamp_legacy(conn: Any, service_dir: Path, config: Config) -> list[str]:
    tables = {r[0] for r in await conn.execute(text(
        "SELECT c.relname FROM pg_class c WHERE c.relname IN ('alembic_version', 'schema_migrations')"
        " AND c.relkind = 'r' AND pg_table_is_visible(c.oid)"))}
    if "alembic_version" in tables or "schema_migrations" not in tables:
        return []
    base, legacy = _legacy(service_dir)
    done = {r[0] for r in await conn.execute(text("SELECT version FROM schema_migrations"))}
    missing = [v for v in legacy if v not in done]
    if missing:
        raise SchemaBehind(
            f"the database was built by the SQL-file migrations before Alembic and lacks {missing}:"
            " migrate it with the release before Alembic first (docs/OPERATIONS.md, Upgrading)"
        )

    def stamp(sync_conn: Any) -> None:
        config.attributes["connection"] = sync_conn
        command.stamp(config, base)

    await conn.run_sync(stamp)
    await conn.commit()
    return [f"{base} (stamped: built by the SQL-file migrations)"]


async def check_schema(pool: asyncpg.Pool, service_dir: Path) -> None:
    """Refuse to serve unless the database's Alembic revision is the code's head."""
    async with pool.acquire() as conn:
        current = await revision(conn)
    wanted = head(service_dir)
    if current == wanted:
        return
    if current is None:
        raise SchemaBehind(
            "database schema is behind the code; it has no Alembic revision (head is "
            f"{wanted}): run `python -m services.<name> migrate` (make up does this)"
        )
    script = ScriptDirectory.from_config(alembic_config(service_dir))
    if current not in {s.revision for s in script.walk_revisions()}:
        raise SchemaBehind(
            f"database is at revision {current}, which this code does not know (migrated by a "
            f"newer release?); its head is {wanted}"
        )
    raise SchemaBehind(
        f"database schema is behind the code; at revision {current}, head is {wanted}: "
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
