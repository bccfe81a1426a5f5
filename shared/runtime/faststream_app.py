"""The FastStream side of a service: its broker, its one batch subscriber, its publishers (for
the AsyncAPI document) and the ASGI app that serves FastStream's lifespan beside the HTTP routes.

No `from __future__ import annotations` here: FastStream reads the handler annotations as objects.

What FastStream 0.7.8 does by default, and why each default is replaced here (read in its
source, faststream/kafka/parser.py, middlewares/acknowledgement):

- the default batch parser decodes every header as UTF-8, so one non-UTF-8 or null header
  fails the whole batch (ag2ai/faststream#2458), and the decoder JSON-decodes bodies by content
  type and re-parses each record (about 7 us a record). :func:`raw_parser` and
  :func:`raw_decoder`, one-argument coroutine functions, replace both (a plain function would
  be run in a worker thread, ``fast_depends.run_in_threadpool``, twice a poll: 5-6 % of the
  assessment's and the subsidy's samples in the paced phase): the handler gets the poll's
  records exactly as aiokafka returned them, bytes and headers untouched, and decodes them once
  (shared.contract.envelope.decode) for the inbox and the dead-letter queue;
- ``ACK_FIRST`` (the default) commits before the handler runs (at most once), ``ACK`` and
  ``REJECT_ON_ERROR`` commit even when the handler raises, ``nack()`` seeks back without a
  backoff. The subscriber is ``AckPolicy.MANUAL``: offsets are committed by the pipeline
  (shared.runtime.consumer.BatchConsumer) only after the batch's PostgreSQL transaction and the
  relay's publication of its outbox rows, coalesced, and a failing database rewinds with a
  bounded backoff.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from itertools import chain
from typing import Any, Literal, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from faststream.asgi import AsgiFastStream
from faststream.asgi.types import ASGIApp, Receive, Scope, Send
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.schemas import Topic
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.middlewares import AckPolicy
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from prometheus_client import REGISTRY
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

__all__ = [
    "PromptBatchSubscriber", "ServiceApp", "broker_security", "declare_publisher",
    "fetch_long_when_idle", "make_broker", "raw_decoder", "raw_parser", "subscribe_batches",
]

OnBatch = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]


def broker_security(options: dict[str, Any]) -> BaseSecurity | None:
    """FastStream's security object for the aiokafka options of ``kafka_security(settings)``
    (shared/runtime/service.py), so the broker's clients use the same transport as the others."""
    protocol = options.get("security_protocol", "PLAINTEXT")
    ssl = options.get("ssl_context")
    use_ssl = protocol in ("SSL", "SASL_SSL")
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256,
                "SCRAM-SHA-512": SASLScram512}[options["sasl_mechanism"]]
        return kind(options["sasl_plain_username"], options["sasl_plain_password"],
                    ssl_context=ssl, use_ssl=use_ssl)
    if use_ssl:
        return BaseSecurity(ssl_context=ssl, use_ssl=True)
    return None


def make_broker(bootstrap_servers: str, security: BaseSecurity | None, *, service: str,
                description: str | None = None) -> KafkaBroker:
    """The service's broker: FastStream's Prometheus middleware in the registry of the business
    metrics (one /metrics); ``apply_types=False``: the handler takes the raw records, nothing is
    validated or converted on the way in (the annotations only document the AsyncAPI payloads)."""
    return KafkaBroker(
        bootstrap_servers.split(","),
        security=security,
        client_id=f"skills-{service}",
        apply_types=False,
        middlewares=(KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service),),
        graceful_timeout=30.0,
        description=description,
        logger=logging.getLogger(f"faststream.{service}"),
    )


async def raw_parser(records: Sequence[ConsumerRecord]) -> KafkaMessage:
    """One argument, so FastStream's parser is not called at all: no header is decoded. The
    body is the record values only because FastStream's Prometheus middleware sums their size."""
    return KafkaMessage(
        body=[r.value or b"" for r in records],
        headers={},
        raw_message=tuple(records),
        consumer=FAKE_CONSUMER,  # commits are the pipeline's, through the subscriber's consumer
    )


async def raw_decoder(message: KafkaMessage) -> Sequence[ConsumerRecord]:
    """One argument: no JSON decoding, no re-parse of each record; the handler gets the poll."""
    records: Sequence[ConsumerRecord] = message.raw_message
    return records


def subscribe_batches(
    broker: KafkaBroker,
    topics: Sequence[str],
    on_batch: OnBatch,
    *,
    payload: Any,
    group_id: str,
    max_records: int,
    batch_timeout_ms: int,
    fetch_max_wait_ms: int,
    auto_offset_reset: str,
    assignors: Sequence[type],
    title: str,
    description: str,
) -> BatchSubscriber:
    """The service's one batch subscriber over all its input topics: every poll is one
    ``getmany`` across partitions, handed whole to ``on_batch``. The topics are created by the
    service beforehand with their retention settings (``declare=False``)."""
    subscriber = broker.subscriber(
        *(Topic(t, declare=False) for t in topics),
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        group_id=group_id,
        auto_offset_reset=cast(Literal["latest", "earliest", "none"], auto_offset_reset),
        # Partition p of every input topic on one member: one owner per person (assignor.py).
        partition_assignment_strategy=tuple(assignors),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        # aiokafka fetches only the partitions with nothing buffered and keeps one fetch in
        # flight per broker: while a batch is handled, that can be a fetch of idle partitions
        # only, which the broker holds this long, and every other partition waits for it.
        fetch_max_wait_ms=fetch_max_wait_ms,
        ack_policy=AckPolicy.MANUAL,
        parser=raw_parser,
        decoder=raw_decoder,
        title=title,
        description=description,
    )

    async def consume(records):  # type: ignore[no-untyped-def]  # annotated below, for AsyncAPI
        await on_batch(records)

    # Documentation only (apply_types=False): the payloads the records' CloudEvents carry.
    consume.__annotations__ = {"records": payload, "return": None}
    subscriber(consume)
    assert isinstance(subscriber, BatchSubscriber)
    subscriber.__class__ = PromptBatchSubscriber  # same slots: only get_msg differs
    return subscriber


class PromptBatchSubscriber(BatchSubscriber):
    """FastStream's batch subscriber without its sleep after an empty poll.

    FastStream 0.7.8's ``BatchSubscriber.get_msg`` waits up to ``batch_timeout_ms`` in
    ``getmany`` and, when that finds nothing, sleeps as long again, reading nothing. A record
    arriving during that sleep waited for it (so the wait had to be short, 10 ms), and a short
    wait made every idle service poll a hundred times a second: 0.07-0.10 of a core each on
    this machine, with nothing to do. aiokafka's ``getmany`` returns as soon as a fetch brings
    records, so the poll here may wait long (``BATCH_TIMEOUT_MS``) without delaying anything,
    and polls again at once."""

    __slots__ = ()

    async def get_msg(self, consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        polled = await consumer.getmany(timeout_ms=self.batch_timeout_ms,
                                        max_records=self.max_records)
        return tuple(chain.from_iterable(polled.values()))


def fetch_long_when_idle(consumer: AIOKafkaConsumer, busy_ms: int, idle_ms: int) -> None:
    """Let the broker hold a fetch for ``idle_ms`` when it covers every assigned partition,
    for ``busy_ms`` otherwise (aiokafka has one ``fetch_max_wait_ms`` for both).

    aiokafka keeps one fetch in flight per broker and leaves out of it the partitions that
    still have records buffered, so while a batch is handled the fetch in flight can cover idle
    partitions only, and whatever arrives on the busy ones waits until the broker answers it:
    that wait must be short (``FETCH_MAX_WAIT_MS``, 20 ms). But a fetch of every partition
    is answered as soon as a record arrives on any of them, so holding it long delays nothing,
    and an idle consumer then asks the broker twice a second instead of fifty times (those
    fetches cost about 0.04 of a core in each idle service and 0.03 in the broker for each,
    README "Issue #18, fifth round"). The wait is chosen
    each time aiokafka's fetch routine plans its requests: long only when no partition has
    records buffered, none is paused or waiting for its position, and no fetch is in flight.
    This reads aiokafka 0.14's fetcher internals (``_get_actions_per_node``, ``_records``,
    ``_in_flight``, ``_fetch_max_wait_ms``); tests/integration/test_fetch_wait.py holds it to
    that version's behaviour."""
    fetcher = consumer._fetcher
    if getattr(fetcher, "_plan_unadapted", None) is not None:
        return  # already adapted (the pipeline attaches the consumer once, but be safe)
    plan = fetcher._plan_unadapted = fetcher._get_actions_per_node

    def actions_per_node(assignment: Any) -> Any:
        idle = not fetcher._records and not fetcher._in_flight and all(
            (state := assignment.state_value(tp)).has_valid_position and not state.paused
            for tp in assignment.tps
        )
        fetcher._fetch_max_wait_ms = idle_ms if idle else busy_ms
        return plan(assignment)

    fetcher._get_actions_per_node = actions_per_node


def declare_publisher(broker: KafkaBroker, topic: str, payload: Any, *, title: str,
                      description: str) -> None:
    """An output topic in the AsyncAPI document with its contract payloads. The records are
    written by the outbox relay (shared/runtime/outbox.py), not through this publisher."""
    broker.publisher(topic, title=title, schema=payload, description=description)


class ServiceApp(AsgiFastStream):
    """A FastStream ASGI app whose HTTP requests all go to the service's Starlette app.

    AsgiFastStream answers exact paths only and 404s the rest; the query API has path
    parameters and middlewares (RejectHostileUrls, BoundBodies, authentication), so it stays a
    Starlette app, built once the database pool exists (on startup) and served here. The
    lifespan is FastStream's: on_startup, the broker, after_startup; on_shutdown, the broker's
    stop, after_shutdown."""

    http: ASGIApp | None = None
    runtime: Any = None  # shared.runtime.service.Runtime: what /healthz, /readyz and serve() read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
            return
        if self.http is None:  # not started yet
            if scope["type"] == "http":
                await JSONResponse({"ready": False}, status_code=503)(scope, receive, send)
            return
        await self.http(scope, receive, send)
