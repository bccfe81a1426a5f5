"""The models are the schema: every service database migrated to head by Alembic is exactly what
the SQLModel tables say (columns, types, nullability, keys, indexes, server defaults), a
difference is found, a database the former SQL-file runner built is stamped at the baseline
(never re-created), and a service refuses a database whose revision is not its head."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.runtime import db, schema, tables
from tests.harness import PG, ROOT

pytestmark = pytest.mark.integration

SERVICES = ("enrollment", "assessment", "subsidy")
# Each environment's revisions, in order (the last is its head).
REVISIONS = {"enrollment": ["0001"], "assessment": ["0001"], "subsidy": ["0001", "0002"]}
LEGACY_SQL = ROOT / "tests" / "fixtures" / "legacy_sql"  # main's SQL files before Alembic


def metadata_of(service: str) -> list[sa.MetaData]:
    return [tables.METADATA, importlib.import_module(f"services.{service}.store").METADATA]


async def differences(url: str, metadata: list[sa.MetaData]) -> list[Any]:
    """What Alembic's autogenerate finds between ``metadata`` and the database (types and
    server defaults compared as the services' environments compare them)."""
    engine = db.engine(url)
    try:
        async with engine.connect() as conn:
            def compare(sync: sa.Connection) -> list[Any]:
                context = MigrationContext.configure(sync, opts={
                    "compare_type": True, "compare_server_default": schema.compare_server_default,
                    "include_name": schema.include_name})
                return compare_metadata(context, metadata)  # type: ignore[arg-type]  # alembic accepts a list of MetaData (one per database here: the runtime's and the service's); its stub says one
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


@pytest.fixture
async def database() -> AsyncIterator[Callable[[], Any]]:
    made: list[str] = []

    async def make() -> str:
        url = f"{PG}/schema_{uuid.uuid4().hex[:10]}"
        await db.ensure_database(url)
        made.append(url)
        return url

    yield make
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        for url in made:
            await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_a_fresh_database_migrated_to_head_is_exactly_the_models(service, database) -> None:
    url = await database()
    applied = await db.migrate(url, ROOT / "services" / service)
    assert applied == REVISIONS[service]
    assert await differences(url, metadata_of(service)) == []
    assert await db.migrate(url, ROOT / "services" / service) == []  # nothing left to apply
    pool = await db.create_pool(url)
    try:
        await db.check_schema(pool, ROOT / "services" / service)  # at head: no error
    finally:
        await pool.close()


def _copy(metadata: list[sa.MetaData]) -> list[sa.MetaData]:
    copies = []
    for m in metadata:
        copy = sa.MetaData()
        for table in m.tables.values():
            table.to_metadata(copy)
        copies.append(copy)
    return copies


async def test_person_states_are_compressed_with_lz4(database) -> None:
    """Revision 0002 (issue #18): the state every batch rewrites is compressed with LZ4; a state
    written after the upgrade is stored so."""
    url = await database()
    await db.migrate(url, ROOT / "services" / "subsidy")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'person_state'::regclass AND attname = 'state'") == b"l"
        await conn.execute("INSERT INTO person_state (person_id, state) VALUES ('p', $1)",
                           '{"log": "' + "compressible " * 1000 + '"}')
        assert await conn.fetchval(
            "SELECT pg_column_compression(state) FROM person_state WHERE person_id = 'p'") == "lz4"
    finally:
        await conn.close()


async def test_a_model_that_differs_from_the_migrated_database_is_found(database) -> None:
    url = await database()
    await db.migrate(url, ROOT / "services" / "subsidy")
    added = _copy(metadata_of("subsidy"))
    added[1].tables["hold"].append_column(sa.Column("reviewer_note", sa.Text, nullable=True))
    assert [(d[0], d[2], d[3].name) for d in await differences(url, added)] == [
        ("add_column", "hold", "reviewer_note")]

    retyped = _copy(metadata_of("subsidy"))
    retyped[1].tables["decision"].c.amount_fen.type = sa.Integer()  # bigint in the database
    [[change]] = await differences(url, retyped)
    assert change[0] == "modify_type" and change[2:4] == ("decision", "amount_fen")

    defaulted = _copy(metadata_of("subsidy"))
    defaulted[0].tables["outbox"].c.headers.server_default = sa.DefaultClause(sa.text("'{}'::jsonb"))
    [[change]] = await differences(url, defaulted)
    assert change[0] == "modify_default" and change[2:4] == ("outbox", "headers")

    unindexed = _copy(metadata_of("subsidy"))
    table = unindexed[1].tables["decision"]
    table.indexes.discard(next(i for i in table.indexes if i.name == "decision_grant"))
    assert [(d[0], d[1].name) for d in await differences(url, unindexed)] == [
        ("remove_index", "decision_grant")]


async def _build_with_the_former_runner(url: str, service: str, *, skip: str | None = None) -> None:
    """What main's ``db.migrate`` did: every SQL file, runtime and service interleaved by file
    name, each recorded in ``schema_migrations``."""
    files = sorted([*(LEGACY_SQL / "runtime").glob("*.sql"), *(LEGACY_SQL / service).glob("*.sql")],
                   key=lambda p: p.name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                           " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for path in files:
            if path.stem == skip:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
    finally:
        await conn.close()


def _migrate_command(service: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENVIRONMENT": "development", f"{service.upper()}_DATABASE_URL": url}
    env.pop(f"{service.upper()}_MIGRATION_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", f"services.{service}", "migrate"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("service", SERVICES)
async def test_a_database_built_by_the_former_sql_files_is_stamped_not_recreated(service, database) -> None:
    url = await database()
    await _build_with_the_former_runner(url, service)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO inbox (source, id, digest) VALUES ('/t', 'kept', '\\x00')")
        done = _migrate_command(service, url)
        assert done.returncode == 0, done.stderr
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == REVISIONS[service][-1]
        # Not re-created: the row written before the upgrade is still there.
        assert await conn.fetchval("SELECT count(*) FROM inbox WHERE id = 'kept'") == 1
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(
            [*(LEGACY_SQL / "runtime").glob("*.sql"), *(LEGACY_SQL / service).glob("*.sql")])
    finally:
        await conn.close()
    assert await differences(url, metadata_of(service)) == []
    pool = await db.create_pool(url)
    try:
        await db.check_schema(pool, ROOT / "services" / service)
    finally:
        await pool.close()


async def test_a_database_the_former_runner_left_behind_is_refused(database) -> None:
    url = await database()
    await _build_with_the_former_runner(url, "subsidy", skip="0007_security_policy_rules_hash")
    done = _migrate_command("subsidy", url)
    assert done.returncode == 2 and "0007_security_policy_rules_hash" in done.stderr
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT to_regclass('alembic_version')") is None
    finally:
        await conn.close()


async def test_the_check_refuses_a_database_not_at_head(database) -> None:
    service_dir = ROOT / "services" / "assessment"
    url = await database()
    pool = await db.create_pool(url)
    try:
        with pytest.raises(db.SchemaBehind, match="no Alembic revision"):
            await db.check_schema(pool, service_dir)
        await db.migrate(url, service_dir)
        await db.check_schema(pool, service_dir)
        await pool.execute("UPDATE alembic_version SET version_num = 'ffff'")
        with pytest.raises(db.SchemaBehind, match="does not know"):
            await db.check_schema(pool, service_dir)
    finally:
        await pool.close()


def test_every_environment_has_one_head_and_the_baseline_names_the_former_files() -> None:
    for service in SERVICES:
        service_dir = ROOT / "services" / service
        assert db.head(service_dir)
        base, legacy = db._legacy(service_dir)
        assert base == "0001"
        assert sorted(legacy) == sorted(
            p.stem for p in [*(LEGACY_SQL / "runtime").glob("*.sql"), *(LEGACY_SQL / service).glob("*.sql")])


def test_the_baseline_executes_the_former_files_verbatim() -> None:
    for service in SERVICES:
        path = ROOT / "services" / service / "alembic" / "versions" / "0001_baseline.py"
        spec = importlib.util.spec_from_file_location(f"baseline_{service}", path)
        assert spec is not None and spec.loader is not None
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        files = dict(schema.RUNTIME_BASELINE + baseline.SERVICE_BASELINE)
        expected = {p.stem: p.read_text() for p in
                    [*(LEGACY_SQL / "runtime").glob("*.sql"), *(LEGACY_SQL / service).glob("*.sql")]}
        assert files == expected



async def test_the_alembic_command_line_connects_with_the_service_settings(database) -> None:
    """What a developer runs to check or generate a revision (README, "Database schema and
    migrations"): the environment connects by itself with <SERVICE>_MIGRATION_DATABASE_URL."""
    url = await database()
    env = {**os.environ, "ENVIRONMENT": "development",
           "ENROLLMENT_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/unreachable",
           "ENROLLMENT_MIGRATION_DATABASE_URL": url}

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "alembic", "-c", "services/enrollment/alembic.ini",
                               *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert alembic("upgrade", "head").returncode == 0
    checked = alembic("check")
    assert checked.returncode == 0 and "No new upgrade operations detected" in checked.stdout + checked.stderr
    assert alembic("current").stdout.split() == ["0001", "(head)"]
