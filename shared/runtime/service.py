"""The service host: each service is a FastStream application (shared/runtime/faststream_app.py)
wired here from its settings: the broker and its batch subscriber, the database, the outbox
relay, the probes, sweeps and the commit timer in the app's lifespan, and the HTTP routes.

Each service describes itself with a :class:`ServiceDefinition` (its topics, its batch handler,
its HTTP routes, its periodic sweep); ``services/<name>/app.py`` builds the app with
:func:`create_service_app` (``create_app(settings=None, **overrides)``), and the ``cli`` entry
point runs it: ``python -m services.<name> run|migrate``.
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.specification import AsyncAPI
from faststream.specification.asyncapi.site import get_asyncapi_html
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.contract import topics
from shared.contract.asyncapi import ENVELOPE, payload_of
from shared.runtime import auth, crypto, db, faststream_app, logs, metrics, pending
from shared.runtime.assignor import CoPartitionedAssignor
from shared.runtime.consumer import BatchConsumer, Handler
from shared.runtime.gc_tuning import tune_gc
from shared.runtime.http import BadRequest, BoundBodies, bad_request, openapi_document
from shared.runtime.outbox import Outbox, Relay
from shared.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

WATERMARK_TIMEOUT = 10.0  # seconds one advance of the pending watermark may take
# How often the pipeline does an empty poll's work when no batch came (BatchConsumer.tick:
# commit what the relay published, release records TimeOrder held). The cadence it had when it
# was derived from the 10 ms polls (two polls and 50 ms); polls no longer set it.
TICK_SECONDS = 0.07

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
    # The contract topics it publishes to (through the outbox), besides its DLQ: the AsyncAPI
    # document declares a publisher for each.
    outputs: tuple[str, ...] = ()
    # (hot-path pool for writes, settings, SQLModel AsyncSession factory for reads) -> routes
    routes: Callable[[asyncpg.Pool, ServiceSettings, Any], list[BaseRoute]] = (
        lambda pool, s, sessions: [])
    sweeps: tuple[Sweep, ...] = field(default_factory=tuple)
    on_start: OnStart | None = None  # one-off work once the database is reachable
    # What /openapi.json adds to the routes per path template: query parameters, request body
    openapi: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Runtime:
    """The live parts of a running service, for /healthz, /readyz and shutdown; filled in by the
    app's lifespan (on_startup creates them, after_startup starts the tasks)."""

    settings: ServiceSettings
    pool: asyncpg.Pool | None = None
    batches: BatchConsumer | None = None
    relay: Relay | None = None
    db_ok: bool = True
    kafka_ok: bool = True
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    failed: asyncio.Event = field(default_factory=asyncio.Event)  # a task failed: exit non-zero
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def ready(self) -> tuple[bool, dict[str, bool]]:
        checks = {
            "database": self.db_ok,
            "kafka": self.kafka_ok,
            "consumer": self.batches is not None and self.batches.healthy
            and time.monotonic() - self.batches.last_poll < 30,
            "relay": self.relay is not None and self.relay.healthy,
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
    asyncapi: AsyncAPI | None = None,
) -> Starlette:
    """The service's HTTP app; ``tokens`` None means open (tests of the host alone).

    ``metrics_here`` False leaves /metrics to the metrics port; ``protect_metrics`` makes it
    need a bearer token on this one (outside development without METRICS_PORT)."""

    async def healthz(request: Request) -> Response:
        """Liveness: 503 when the consumer is stalled."""
        # Alive is more than answering: a consumer that has records to handle but has
        # committed nothing for CONSUMER_STALL_SECONDS is stuck, and a restart is the cure.
        if runtime is not None and runtime.batches is not None:
            stalled = runtime.batches.seconds_without_progress()
            if stalled > runtime.settings.consumer_stall_seconds:
                return JSONResponse(
                    {"status": "stalled", "seconds_without_progress": round(stalled)},
                    status_code=503,
                )
        # in_batch: inside a batch's transaction at this instant (no data; the bench samples it
        # to show replicas of one service working at the same time).
        return JSONResponse({"status": "ok", "in_batch": runtime is not None
                             and runtime.batches is not None and runtime.batches.in_batch})

    async def readyz(request: Request) -> Response:
        """Readiness: database, Kafka, consumer and relay."""
        if runtime is None:
            return JSONResponse({"ready": False}, status_code=503)
        ok, checks = runtime.ready()
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def openapi(request: Request) -> Response:
        """This document."""
        return JSONResponse(document)

    base: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if metrics_here:
        base.append(Route("/metrics", metrics_endpoint(runtime)))
    base.append(Route("/openapi.json", openapi))
    if asyncapi is not None:
        base += asyncapi_routes(asyncapi)
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


def asyncapi_routes(schema: AsyncAPI) -> list[BaseRoute]:
    """``/asyncapi.json`` and ``/asyncapi`` (FastStream's HTML viewer): the service's broker,
    its subscriber and publishers, as the running app declares them."""
    document = schema.to_specification()
    jsonable = document.to_jsonable()
    html = get_asyncapi_html(document, try_it_out_path=None)

    async def asyncapi_json(request: Request) -> Response:
        """The AsyncAPI document of this service's topics."""
        return JSONResponse(jsonable)

    async def asyncapi_html(request: Request) -> Response:
        """The AsyncAPI document, rendered."""
        return HTMLResponse(html)

    return [Route("/asyncapi.json", asyncapi_json), Route("/asyncapi", asyncapi_html)]


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


async def _db_probe(runtime: Runtime, pool: asyncpg.Pool, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            async with pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            runtime.db_ok = True
        except (*db.DATABASE_ERRORS, TimeoutError):
            runtime.db_ok = False
        await _sleep_unless(stopping, 2.0)


async def _kafka_probe(
    runtime: Runtime, relay: Relay, own: list[str], stopping: asyncio.Event,
) -> None:
    """A metadata round trip every 2 s: with the broker gone, getmany just returns nothing,
    which must not read as "healthy and caught up". It asks about the service's own topics
    only: a request naming none is answered with every topic of the cluster."""
    while not stopping.is_set():
        try:
            client = relay.producer.client  # the relay may have renewed its producer
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


async def _commit_timer(batches: BatchConsumer, interval: float, stopping: asyncio.Event) -> None:
    """FastStream calls the batch handler only with records: this does the empty poll's work
    (BatchConsumer.tick) every ``interval`` seconds, when no batch came since the last."""
    while not stopping.is_set():
        await _sleep_unless(stopping, interval)
        await batches.tick()


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


def declare_broker(
    definition: ServiceDefinition, settings: ServiceSettings,
    on_batch: faststream_app.OnBatch, kafka: dict[str, Any] | None = None,
) -> tuple[KafkaBroker, BatchSubscriber]:
    """The service's broker: its batch subscriber over its input topics (records to
    ``on_batch``), a publisher per output topic and one for its DLQ, with the contract's payload
    models (what the AsyncAPI document shows)."""
    broker = faststream_app.make_broker(
        settings.kafka_bootstrap_servers, faststream_app.broker_security(kafka or {}),
        service=definition.name, description="the Kafka cluster (KAFKA_BOOTSTRAP_SERVERS)",
    )
    subscriber = faststream_app.subscribe_batches(
        broker, [settings.topic(t) for t in definition.topics], on_batch,
        payload=payload_of(definition.topics),
        group_id=settings.group_id,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        auto_offset_reset=settings.auto_offset_reset,
        assignors=(CoPartitionedAssignor,),
        title=f"{definition.name}:consume",
        description=f"consumed by the {definition.name} service, one batch per poll across "
                    "partitions and topics",
    )
    for output in definition.outputs:
        faststream_app.declare_publisher(
            broker, settings.topic(output), payload_of((output,)),
            title=f"{output}:{definition.name}:publish",
            description=f"published by the {definition.name} service (transactional outbox)",
        )
    dlq = topics.dlq(definition.name)
    faststream_app.declare_publisher(
        broker, settings.topic(dlq), bytes, title=f"{dlq}:publish",
        description=f"dead letters of the {definition.name} service: the input record "
                    "untouched, headers error-code, error-detail, original-topic, "
                    "original-partition, original-offset",
    )
    return broker, subscriber


def create_service_app(
    definition: ServiceDefinition, settings: ServiceSettings,
) -> faststream_app.ServiceApp:
    """The service as a FastStream application: refuses unusable settings at once, declares the
    broker, the batch subscriber and the publishers; the database, the relay and the HTTP routes
    come up in the app's lifespan."""
    tokens = check_settings(settings)
    crypto.configure(crypto.Keyring.of(settings.data_keys))  # seals dead letters, parked records
    metrics.identify(definition.name)  # also when an ASGI server imports the factory
    kafka = kafka_security(settings)
    runtime = Runtime(settings)
    inputs = [settings.topic(t) for t in definition.topics]

    async def on_batch(records: Sequence[ConsumerRecord]) -> None:
        batches = runtime.batches
        assert batches is not None  # created on startup, before the broker starts
        if batches.consumer is None:
            # The consumer exists once the subscriber started, which may be before
            # after_startup ran: reach it through the subscriber on the first batch.
            attach(batches)
        await batches.handle(records)

    def consuming() -> bool:
        return subscriber.running and any(not t.done() for t in subscriber.tasks)

    def attach(batches: BatchConsumer) -> None:
        consumer = subscriber.consumer
        assert consumer is not None
        faststream_app.fetch_long_when_idle(
            consumer, settings.fetch_max_wait_ms, settings.idle_fetch_max_wait_ms)
        batches.attach(consumer, alive=consuming)

    broker, subscriber = declare_broker(definition, settings, on_batch, kafka)
    schema = AsyncAPI(broker, title=f"{definition.name} service", version="1.0.0",
                      description=ENVELOPE)

    def make_producer() -> AIOKafkaProducer:
        # The relay keeps its own idempotent producer rather than the broker's: it must publish
        # the outbox in order with acks=all and idempotence, and replace the producer after a
        # broker outage (fenced sequence numbers, Relay.renew_producer), which FastStream's
        # shared producer does not offer.
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            compression_type=None,
            **kafka,
        )

    def make_outbox() -> Outbox:
        return Outbox(
            source=f"/services/{definition.name}",
            topic_prefix=settings.topic_prefix,
            dlq_topic=settings.topic(topics.dlq(definition.name)),
        )

    async def on_startup() -> None:
        tune_gc(settings.gc_threshold)
        await ensure_topics(settings, settings.topic_partitions)
        pool = await db.create_pool(settings.database_url, max_size=6, ssl=database_ssl(settings))
        runtime.pool = pool
        runtime.closers.append(pool.close)
        await db.check_schema(pool, definition.directory)
        await check_fingerprint(pool, settings)
        if definition.on_start is not None:
            await definition.on_start(pool, settings)
        producer = make_producer()
        await producer.start()
        relay = runtime.relay = Relay(pool, producer, settings.relay_batch_size, make_producer)
        runtime.closers.append(lambda: relay.producer.stop())
        batches = runtime.batches = BatchConsumer(
            None, pool, definition.handler(settings), make_outbox, relay,
            agencies=frozenset(settings.agencies),
            max_records=settings.batch_max_records,
            timeout_ms=settings.batch_timeout_ms,
            top_up_after_ms=settings.top_up_after_ms,
            top_up_wait_ms=settings.top_up_wait_ms,
            commit_interval=settings.commit_interval_ms / 1000,
            pause_gc=settings.gc_pause_in_batch,
            crash_after_db_commit=settings.crash_after_db_commit,
        )
        batches.on_failure = lambda exc: runtime.failed.set()
        # The query APIs read through SQLModel AsyncSessions on their own small pool (db.py).
        sessions = db.session_factory(settings)
        runtime.closers.append(lambda: db.dispose_sessions(sessions))
        app.http = http_app(
            runtime, definition.routes(pool, settings, sessions), tokens,
            title=f"{definition.name} service",
            metrics_here=settings.metrics_port is None, protect_metrics=not settings.development,
            described=definition.openapi, asyncapi=schema,
        )

    async def after_startup() -> None:
        assert runtime.pool is not None and runtime.relay is not None
        assert runtime.batches is not None
        pool, relay, batches = runtime.pool, runtime.relay, runtime.batches
        if batches.consumer is None and subscriber.consumer is not None:
            attach(batches)
        # What the sweeps' cutoff waits for: the groups named by PENDING_UPSTREAM, then this one.
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **kafka)
        offsets_reader = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, **kafka
        )
        await admin.start()
        runtime.closers.append(admin.close)
        await offsets_reader.start()
        runtime.closers.append(offsets_reader.stop)
        watermark = pending.Watermark(
            pending.stages(settings.group_id, inputs, settings.pending_upstream,
                           settings.topic_prefix),
            pending.KafkaOffsets(admin, offsets_reader),
        )
        stopping = runtime.stopping
        work = [
            (relay.run(stopping), "relay"),
            (_db_probe(runtime, pool, stopping), "db-probe"),
            (_kafka_probe(runtime, relay, inputs, stopping), "kafka-probe"),
            (_commit_timer(batches, TICK_SECONDS, stopping), "commit-timer"),
            *(
                (_sweeper(s, pool, settings, relay, watermark, stopping), "sweep")
                for s in definition.sweeps
            ),
        ]
        for coro, name in work:
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(_watch)
            runtime.tasks.append(task)
        log.info("service started",
                 extra={"http_port": settings.http_port, "group": settings.group_id})

    def _watch(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception(), extra={"task": task.get_name()})
            runtime.failed.set()
            app.exit()

    async def on_shutdown() -> None:
        # Before the broker stops its consumer: the batch in hand finishes, nothing more is
        # taken, and the offsets of what the relay has published are committed.
        runtime.stopping.set()
        if runtime.batches is not None:
            await runtime.batches.finish()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)

    async def after_shutdown() -> None:
        for close in reversed(runtime.closers):
            try:
                await close()
            except Exception as exc:  # shutting down anyway
                log.warning("close failed", extra={"error": repr(exc)})
        runtime.closers.clear()
        log.info("service stopped")

    app = faststream_app.ServiceApp(
        broker, specification=schema, logger=logging.getLogger(f"faststream.{definition.name}"),
        on_startup=[on_startup], after_startup=[after_startup],
        on_shutdown=[on_shutdown], after_shutdown=[after_shutdown],
    )
    app.runtime = runtime
    return app


async def serve(app: faststream_app.ServiceApp, settings: ServiceSettings) -> None:
    """Run the app until SIGTERM/SIGINT: its lifespan, the HTTP server (and the metrics port's,
    METRICS_PORT) under uvicorn. A failed task (relay, probe, sweep, the batch handler) stops
    the service with exit status 1, so a supervisor restarts it."""
    runtime: Runtime = app.runtime
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await app.start()  # on_startup, the broker (its subscriber joins the group), after_startup
    servers = [uvicorn.Server(
        uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port,
            log_level="warning", access_log=False, lifespan="off",
        )
    )]
    if settings.metrics_port is not None:
        servers.append(uvicorn.Server(uvicorn.Config(
            metrics_app(runtime), host=settings.metrics_host, port=settings.metrics_port,
            log_level="warning", access_log=False, lifespan="off",
        )))
    # uvicorn catches SIGTERM/SIGINT while it serves, stops, and raises the signal again for
    # the handler above: either way the service stops below.
    http = [asyncio.create_task(server.serve(), name="http") for server in servers]
    waits = [asyncio.create_task(stopping.wait()), asyncio.create_task(runtime.failed.wait())]
    await asyncio.wait([*waits, *http], return_when=asyncio.FIRST_COMPLETED)
    failed = runtime.failed.is_set() or any(
        t.done() and not t.cancelled() and t.exception() is not None for t in http
    )
    if failed:
        for task in http:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("task failed", exc_info=task.exception(), extra={"task": "http"})
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*http, return_exceptions=True)
    for wait in waits:
        wait.cancel()
    await app.stop()  # on_shutdown (last batch, last commit), the broker, after_shutdown
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    if failed:
        # A supervisor (systemd, Kubernetes, make up's operator) must see a failure and restart.
        raise SystemExit(1)


def cli(
    definition: ServiceDefinition, settings_cls: type[ServiceSettings],
    create_app: Callable[[ServiceSettings], faststream_app.ServiceApp] | None = None,
) -> None:
    """``python -m services.<name> run|migrate``: ``create_app`` is the service's factory
    (services/<name>/app.py), given the settings read from the environment."""
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
        app = (create_app or (lambda s: create_service_app(definition, s)))(settings)
        await serve(app, settings)

    try:
        asyncio.run(main())
    except db.SchemaBehind as exc:
        print(f"{definition.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
