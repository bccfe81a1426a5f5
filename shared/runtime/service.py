"""The service host: wires settings, database, consumer, relay, HTTP and periodic work together.

Each service describes itself with a :class:`ServiceDefinition` (its topics, its batch handler,
its HTTP routes, its periodic sweep) and is started by :func:`serve` or the ``cli`` entry
point: ``python -m services.<name> run|migrate``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import hmac
import importlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.contract import topics
from shared.runtime import auth, crypto, db, logs, metrics, pending
from shared.runtime.assignor import CoPartitionedAssignor
from shared.runtime.consumer import BatchConsumer, Handler
from shared.runtime.http import BadRequest, BoundBodies, bad_request, openapi_document
from shared.runtime.outbox import Outbox, Relay
from shared.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

WATERMARK_TIMEOUT = 10.0  # seconds one advance of the pending watermark may take

# Periodic work given the cutoff before which parked records may be dead-lettered: the
# waiting period counts only from the pending watermark on (shared/runtime/pending.py), the time
# up to which every service that would bring a parked record's reference has caught up, so a
# backlog here or upstream never expires records whose reference is still queued behind it.
Sweep = Callable[[asyncpg.Pool, ServiceSettings, dt.datetime], Awaitable[None]]
OnStart = Callable[[asyncpg.Pool, ServiceSettings], Awaitable[None]]


@dataclass
class ServiceDefinition:
    """What makes one service different from another; everything else is shared."""

    name: str
    directory: Path
    topics: tuple[str, ...]
    handler: Callable[[ServiceSettings], Handler]
    # (hot-path pool for writes, settings, SQLModel AsyncSession factory for reads) -> routes
    routes: Callable[[asyncpg.Pool, ServiceSettings, Any], list[BaseRoute]] = (
        lambda pool, s, sessions: [])
    sweeps: tuple[Sweep, ...] = field(default_factory=tuple)
    on_start: OnStart | None = None  # one-off work once the database is reachable
    # What /openapi.json adds to the routes per path template: query parameters, request body
    openapi: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Runtime:
    """The live parts of a running service, for /readyz and shutdown."""

    settings: ServiceSettings
    pool: asyncpg.Pool
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    batches: BatchConsumer
    relay: Relay
    db_ok: bool = True
    kafka_ok: bool = True

    def ready(self) -> tuple[bool, dict[str, bool]]:
        checks = {
            "database": self.db_ok,
            "kafka": self.kafka_ok,
            "consumer": self.batches.healthy
            and time.monotonic() - self.batches.last_poll < 30,
            "relay": self.relay.healthy,
        }
        ok = all(checks.values())
        metrics.READY.set(1 if ok else 0)
        return ok, checks


MAX_URL_BYTES = 4096


class RejectHostileUrls:
    """ASGI middleware: a URL no route could answer sensibly is a 400, never a database error.

    PostgreSQL text cannot hold NUL, and no identifier of the contract needs control
    characters or kilobytes: refusing them here keeps every query route free of the check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _hostile(scope):
            response = JSONResponse(
                {"error": "bad_request", "detail": "the URL holds control characters or is too long"},
                status_code=400,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _hostile(scope: Scope) -> bool:
    path: str = scope["path"]
    query: bytes = scope.get("query_string", b"")
    if len(path.encode("utf-8", "surrogatepass")) + len(query) > MAX_URL_BYTES:
        return True
    if any(ord(c) < 0x20 or c == "\x7f" or 0xD800 <= ord(c) <= 0xDFFF for c in path):
        return True
    lowered = query.lower()
    return b"%00" in lowered or any(b < 0x20 for b in query)


def http_app(
    runtime: Runtime | None, routes: list[BaseRoute], tokens: auth.TokenTable | None = None,
    *, title: str = "service", metrics_here: bool = True, protect_metrics: bool = False,
    described: dict[str, dict[str, Any]] | None = None,
) -> Starlette:
    """The service's HTTP app; ``tokens`` None means open (tests of the host alone).

    ``metrics_here`` False leaves /metrics to the metrics port; ``protect_metrics`` makes it
    need a bearer token on this one (outside development without METRICS_PORT)."""

    async def healthz(request: Request) -> Response:
        """Liveness: 503 when the consumer is stalled."""
        # Alive is more than answering: a consumer that has records to handle but has
        # committed nothing for CONSUMER_STALL_SECONDS is stuck, and a restart is the cure.
        if runtime is not None:
            stalled = runtime.batches.seconds_without_progress()
            if stalled > runtime.settings.consumer_stall_seconds:
                return JSONResponse(
                    {"status": "stalled", "seconds_without_progress": round(stalled)},
                    status_code=503,
                )
        # in_batch: inside a batch's transaction at this instant (no data; the bench samples it
        # to show replicas of one service working at the same time).
        return JSONResponse({"status": "ok",
                             "in_batch": runtime is not None and runtime.batches.in_batch})

    async def readyz(request: Request) -> Response:
        """Readiness: database, Kafka, consumer and relay."""
        if runtime is None:
            return JSONResponse({"ready": False}, status_code=503)
        ok, checks = runtime.ready()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def openapi(request: Request) -> Response:
        """This document."""
        return JSONResponse(document)

    base = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if metrics_here:
        base.append(Route("/metrics", metrics_endpoint(runtime)))
    base.append(Route("/openapi.json", openapi))
    document = openapi_document(title, base + routes, described)
    return Starlette(
        routes=base + routes,
        middleware=[
            Middleware(RejectHostileUrls),
            Middleware(BoundBodies),
            Middleware(auth.Authenticate, table=tokens or auth.TokenTable({}, open=True),
                       protected=frozenset({"/metrics"}) if protect_metrics else frozenset()),
        ],
        exception_handlers={auth.Forbidden: auth.forbidden, BadRequest: bad_request},
    )


def metrics_endpoint(runtime: Runtime | None) -> Callable[[Request], Awaitable[Response]]:
    async def metrics_view(request: Request) -> Response:
        """Prometheus metrics."""
        if runtime is not None:
            runtime.ready()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return metrics_view


def metrics_app(runtime: Runtime | None) -> Starlette:
    """The app of METRICS_PORT: /metrics alone, for the operators' network."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint(runtime))],
                     middleware=[Middleware(RejectHostileUrls)])


def check_settings(settings: ServiceSettings) -> auth.TokenTable:
    """Refuse to start on unusable keys anywhere, on development defaults, weak secrets or
    plaintext transport outside development; the API's token table."""
    problems = settings.key_problems()
    if problems:
        raise SystemExit("refusing to start: " + "; ".join(problems))
    if not settings.development:
        unsafe = settings.unsafe_defaults()
        if unsafe:
            raise SystemExit(
                f"refusing to start with ENVIRONMENT={settings.environment!r}: " + "; ".join(unsafe)
            )
        if settings.allow_insecure_transport and settings.transport_problems():
            log.warning(
                "ALLOW_INSECURE_TRANSPORT: running outside development without TLS",
                extra={"problems": settings.transport_problems()},
            )
    try:
        tokens = auth.token_table(settings.api_tokens, settings.agencies,
                                  development=settings.development)
    except auth.TokenConfigError as exc:
        raise SystemExit(f"refusing to start: {exc}") from None
    if tokens.open:
        log.warning(
            "NO API TOKENS CONFIGURED: the query API is OPEN to anyone who can reach the port, "
            "as an auditor (development only; set API_TOKENS, see docs/SECURITY.md)",
        )
    return tokens


FINGERPRINT_LABEL = b"skills.person-id-secret.fingerprint.v1"


def secret_fingerprint(secret: str) -> str:
    """What a database records of PERSON_ID_SECRET: an HMAC of a fixed label, never the secret."""
    return hmac.new(secret.encode("utf-8"), FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


async def check_fingerprint(pool: asyncpg.Pool, settings: ServiceSettings) -> None:
    """Record the person-id secret's fingerprint on the first start; refuse any other secret.

    Every person_id in the database was derived with one secret: another one would silently
    split each person in two (annual limits and duplicate checks reset, double payments)."""
    mine = secret_fingerprint(settings.person_id_secret)
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO secret_fingerprint (name, fingerprint) VALUES ('PERSON_ID_SECRET', $1) "
            "ON CONFLICT (name) DO NOTHING", mine,
        )
        stored = await conn.fetchval(
            "SELECT fingerprint FROM secret_fingerprint WHERE name = 'PERSON_ID_SECRET'"
        )
    if stored != mine:
        raise SystemExit(
            f"refusing to start: PERSON_ID_SECRET does not match the secret this database was "
            f"built with (fingerprint {mine[:16]}, recorded {stored[:16]}); every person_id "
            "would change. Restore the secret, or follow the rotation procedure "
            "(docs/SECURITY.md §4)"
        )


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class of ``services.<service>`` (its config module's ServiceSettings)."""
    config = importlib.import_module(f"services.{service}.config")
    return next(
        value for value in vars(config).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
    )


def kafka_security(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments that put every aiokafka client on the configured transport."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        password = settings.kafka_sasl_password
        if not settings.kafka_sasl_username or password is None:
            raise SystemExit(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value(),
        )
    return options


def database_ssl(settings: ServiceSettings) -> Any:
    """asyncpg's ``ssl`` argument from DATABASE_SSLMODE / DATABASE_SSLROOTCERT."""
    return db.ssl_option(settings.database_sslmode, settings.database_sslrootcert)


async def _db_probe(runtime: Runtime, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            async with runtime.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            runtime.db_ok = True
        except (*db.DATABASE_ERRORS, TimeoutError):
            runtime.db_ok = False
        await _sleep_unless(stopping, 2.0)


async def _kafka_probe(runtime: Runtime, stopping: asyncio.Event) -> None:
    """A metadata round trip every 2 s: with the broker gone, getmany just returns nothing,
    which must not read as "healthy and caught up". It asks about the service's own topics
    only: a request naming none is answered with every topic of the cluster."""
    own = sorted(runtime.consumer.subscription())
    while not stopping.is_set():
        try:
            client = runtime.relay.producer.client  # the relay may have renewed its producer
            for topic in own:
                client.add_topic(topic)  # tracked once; the refresh below names only these
            runtime.kafka_ok = bool(await asyncio.wait_for(client.force_metadata_update(), 3))
        except Exception:  # any failure to reach the cluster means not ready
            runtime.kafka_ok = False
        await _sleep_unless(stopping, 2.0)


async def _sweeper(
    sweep: Sweep, pool: asyncpg.Pool, settings: ServiceSettings, relay: Relay,
    watermark: pending.Watermark, stopping: asyncio.Event,
) -> None:
    while not stopping.is_set():
        try:
            await asyncio.wait_for(watermark.advance(), WATERMARK_TIMEOUT)
        except Exception as exc:  # the cluster cannot be read: the watermark stays where it was
            log.warning("pending watermark not advanced", extra={"error": repr(exc)})
        cutoff = pending.expiry_cutoff(time.time(), watermark.at, settings.pending_wait_seconds)
        try:
            await sweep(pool, settings, dt.datetime.fromtimestamp(max(cutoff, 0), dt.UTC))
            relay.wake.set()
        except db.DATABASE_ERRORS as exc:
            log.warning("sweep failed", extra={"error": repr(exc)})
        await _sleep_unless(stopping, settings.sweep_interval_seconds)


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        pass


def topic_configs(settings: ServiceSettings, name: str) -> dict[str, str]:
    """Topic-level configs of one contract topic (``name`` without the prefix): the history of
    the event topics is kept (a rebuild replays it), dead letters expire."""
    dlq = name in {topics.dlq(s) for s in ("enrollment", "assessment", "subsidy")}
    retention = settings.dlq_retention_ms if dlq else settings.topic_retention_ms
    return {
        "retention.ms": str(retention),
        "min.insync.replicas": str(settings.topic_min_insync_replicas),
    }


def new_topics(settings: ServiceSettings, names: Sequence[str], partitions: int) -> list[NewTopic]:
    """The contract topics ``names`` as the configured prefix, partitions, replication factor,
    min.insync.replicas and retention make them."""
    return [
        NewTopic(settings.topic(t), num_partitions=partitions,
                 replication_factor=settings.topic_replication_factor,
                 topic_configs=topic_configs(settings, t))
        for t in names
    ]


async def ensure_topics(settings: ServiceSettings, partitions: int = 12) -> None:
    """Create the contract's topics (with the configured prefix) where they do not exist yet."""
    if settings.topic_min_insync_replicas > settings.topic_replication_factor:
        raise SystemExit(
            f"TOPIC_MIN_INSYNC_REPLICAS={settings.topic_min_insync_replicas} is above "
            f"TOPIC_REPLICATION_FACTOR={settings.topic_replication_factor}: no write could succeed"
        )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_security(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics.ALL_TOPICS if settings.topic(t) not in existing]
        if wanted:
            try:
                await admin.create_topics(new_topics(settings, wanted, partitions))
            except TopicAlreadyExistsError:
                pass  # another replica or service created it first
    finally:
        await admin.close()


async def serve(definition: ServiceDefinition, settings: ServiceSettings) -> None:
    """Run the service until SIGTERM/SIGINT."""
    tokens = check_settings(settings)
    crypto.configure(crypto.Keyring.of(settings.data_keys))  # seals dead letters, parked records
    kafka = kafka_security(settings)
    await ensure_topics(settings, settings.topic_partitions)
    pool = await db.create_pool(settings.database_url, max_size=6, ssl=database_ssl(settings))
    await db.check_schema(pool, definition.directory)
    await check_fingerprint(pool, settings)
    if definition.on_start is not None:
        await definition.on_start(pool, settings)
    def make_producer() -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            compression_type=None,
            **kafka,
        )

    producer = make_producer()
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in definition.topics),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        # Partition p of every input topic on one member: one owner per person (assignor.py).
        partition_assignment_strategy=(CoPartitionedAssignor,),
        **kafka,
    )
    await producer.start()
    await consumer.start()
    relay = Relay(pool, producer, settings.relay_batch_size, make_producer)

    def make_outbox() -> Outbox:
        return Outbox(
            source=f"/services/{definition.name}",
            topic_prefix=settings.topic_prefix,
            dlq_topic=settings.topic(topics.dlq(definition.name)),
        )

    batches = BatchConsumer(
        consumer, pool, definition.handler(settings), make_outbox, relay,
        agencies=frozenset(settings.agencies),
        max_records=settings.batch_max_records,
        timeout_ms=settings.batch_timeout_ms,
        commit_interval=settings.commit_interval_ms / 1000,
        crash_after_db_commit=settings.crash_after_db_commit,
    )
    runtime = Runtime(settings, pool, consumer, producer, batches, relay)
    batches.kafka_ok = lambda: runtime.kafka_ok
    separate = settings.metrics_port is not None
    # The query APIs read through SQLModel AsyncSessions on their own small pool (db.py).
    sessions = db.session_factory(settings)
    app = http_app(
        runtime, definition.routes(pool, settings, sessions), tokens,
        title=f"{definition.name} service",
        metrics_here=not separate, protect_metrics=not settings.development,
        described=definition.openapi,
    )
    servers = [uvicorn.Server(
        uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port,
            log_level="warning", access_log=False, lifespan="off",
        )
    )]
    if separate:
        servers.append(uvicorn.Server(uvicorn.Config(
            metrics_app(runtime), host=settings.metrics_host, port=settings.metrics_port,
            log_level="warning", access_log=False, lifespan="off",
        )))
    for server in servers:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # ours below

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    # What the sweeps' cutoff waits for: the groups named by PENDING_UPSTREAM, then this one.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **kafka)
    offsets_reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, **kafka
    )
    await admin.start()
    await offsets_reader.start()
    watermark = pending.Watermark(
        pending.stages(settings.group_id, [settings.topic(t) for t in definition.topics],
                       settings.pending_upstream, settings.topic_prefix),
        pending.KafkaOffsets(admin, offsets_reader),
    )

    tasks = [
        asyncio.create_task(batches.run(stopping), name="consumer"),
        asyncio.create_task(relay.run(stopping), name="relay"),
        asyncio.create_task(_db_probe(runtime, stopping), name="db-probe"),
        asyncio.create_task(_kafka_probe(runtime, stopping), name="kafka-probe"),
        *(asyncio.create_task(server.serve(), name="http") for server in servers),
        *(
            asyncio.create_task(_sweeper(s, pool, settings, relay, watermark, stopping),
                                name="sweep")
            for s in definition.sweeps
        ),
    ]
    log.info("service started", extra={"http_port": settings.http_port, "group": settings.group_id})
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = False
    for task in done:
        if task is not stop_wait and task.exception() is not None:
            log.error("task failed", exc_info=task.exception(), extra={"task": task.get_name()})
            failed = True
    stopping.set()
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await consumer.stop()
    await relay.producer.stop()
    await offsets_reader.stop()
    await admin.close()
    await db.dispose_sessions(sessions)
    await pool.close()
    log.info("service stopped")
    if failed:
        # A supervisor (systemd, Kubernetes, make up's operator) must see a failure and restart.
        raise SystemExit(1)


def cli(definition: ServiceDefinition, settings_cls: type[ServiceSettings]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{definition.name}")
    parser.add_argument("command", choices=["run", "migrate"], nargs="?", default="run")
    parser.add_argument("--migrate", action="store_true", help="with run: migrate first")
    args = parser.parse_args()
    settings = settings_cls()
    logs.configure(definition.name, settings.log_level)
    metrics.identify(definition.name)

    async def main() -> None:
        if args.command == "migrate" or args.migrate:
            # Migrations run with their own credentials where configured (MIGRATION_DATABASE_URL).
            await db.ensure_database(settings.migration_dsn, ssl=database_ssl(settings))
            applied = await db.migrate(settings.migration_dsn, definition.directory,
                                       ssl=database_ssl(settings))
            log.info("migrations applied", extra={"applied": applied})
            if args.command == "migrate":
                return
        await serve(definition, settings)

    try:
        asyncio.run(main())
    except db.SchemaBehind as exc:
        print(f"{definition.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
