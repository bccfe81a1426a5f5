"""Runtime metrics every service exports on /metrics (the catalogue is docs/METRICS.md).

Each service is its own process and its own scrape target, so the default registry holds
exactly one service's metrics; Prometheus' ``job``/``instance`` target labels (or the ``service``
target label of deploy/prometheus/prometheus.yml) tell services apart, and
``skills_service_info{service=...} 1`` names the service from inside the process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONSUMED = Counter(
    "skills_records_consumed_total", "Kafka records consumed, by topic and event type",
    ["topic", "type"],
)
PUBLISHED = Counter(
    "skills_records_published_total", "Records published from the outbox, by topic and type",
    ["topic", "type"],
)
DLQ = Counter("skills_dlq_records_total", "Records sent to the dead-letter topic, by error code", ["code"])
DUPLICATES = Counter(
    "skills_inbox_duplicates_total", "Records skipped because their (source, id) was seen before"
)
BATCH_SIZE = Histogram(
    "skills_batch_size", "Records per consumed batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
BATCH_SECONDS = Histogram(
    "skills_batch_processing_seconds", "Time from a batch's arrival to its database commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
GC_SECONDS = Counter(
    "skills_gc_seconds", "Seconds the cyclic garbage collector ran, by generation (GC_THRESHOLD,"
    " GC_PAUSE_IN_BATCH)", ["generation"],
)
OUTBOX_BACKLOG = Gauge("skills_outbox_backlog", "Outbox rows not yet published")
OUTBOX_AGE = Gauge("skills_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
LAG = Gauge("skills_consumer_lag", "Records behind the high watermark", ["topic", "partition"])
READY = Gauge("skills_ready", "1 when the service reports ready on /readyz")
PENDING = Gauge("skills_pending_records", "Records parked waiting for what they refer to")
PENDING_WATERMARK = Gauge(
    "skills_pending_watermark_timestamp_seconds",
    "Unix time before which every record of the chain that brings parked records' references "
    "is processed by every service of the chain (0 until first known)",
)

_identity: dict[str, str] = {}


def identify(service: str) -> None:
    """Name this process's service in ``skills_service_info`` (the host calls it at start-up)."""
    _identity["service"] = service


def service_name() -> str | None:
    """The identified service, else the one this process was started as (``-m services.X``)."""
    if "service" in _identity:
        return _identity["service"]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    parts = (getattr(spec, "name", None) or "").split(".")
    if len(parts) >= 2 and parts[0] == "services":
        return parts[1]
    return None


def _version() -> str:
    try:
        return metadata.version("skills-subsidy")
    except metadata.PackageNotFoundError:
        return "unknown"


class ServiceInfo(Collector):
    """``skills_service_info{service, version} 1``: which service answers on this target."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        name = service_name()
        if name is None:
            return
        family = GaugeMetricFamily(
            "skills_service_info", "The service behind this scrape target (always 1)",
            labels=["service", "version"],
        )
        family.add_metric([name, _version()], 1)
        yield family


REGISTRY.register(ServiceInfo())
