"""Runtime metrics every service exports on /metrics (the catalogue is in the README).

Each service is its own process, so the default registry holds exactly one service's metrics;
the ``service`` label comes from the process-wide constant label set at start-up.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
OUTBOX_BACKLOG = Gauge("skills_outbox_backlog", "Outbox rows not yet published")
OUTBOX_AGE = Gauge("skills_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
LAG = Gauge("skills_consumer_lag", "Records behind the high watermark", ["topic", "partition"])
READY = Gauge("skills_ready", "1 when the service reports ready on /readyz")
PENDING = Gauge("skills_pending_records", "Records parked waiting for what they refer to")
