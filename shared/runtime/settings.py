"""Typed settings shared by every service; each service subclasses with its own env prefix.

Connection settings shared by the whole deployment (Kafka, the person-id secret) are read
without a prefix; per-service settings (database, HTTP port) carry the service's prefix,
e.g. ``SUBSIDY_DATABASE_URL``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AGENCIES = ("city-a", "suqian", "baoshan", "beijing")
DEV_PERSON_ID_SECRET = "dev-only-person-id-secret-change-me"
DEV_DATA_KEY = "ZGV2LW9ubHktZGF0YS1rZXktY2hhbmdlLW1lLTAwMDA="  # 32 bytes, development only
# Values shipped in examples and scripts: never a secret, whatever their length.
KNOWN_PLACEHOLDERS = frozenset({
    DEV_PERSON_ID_SECRET, DEV_DATA_KEY, "replace-with-a-long-random-secret",
    "compose-demo-person-id-secret", "replace-with-a-fernet-key", "test-person-id-secret",
})
PLACEHOLDER_WORDS = ("change-me", "changeme", "replace-with", "placeholder", "example", "demo",
                     "dev-only", "secret-here")
MIN_SECRET_CHARS = 32
MIN_SECRET_BITS = 128.0


def secret_weakness(value: str) -> str | None:
    """Why ``value`` is no production secret (a placeholder, too short, too little entropy);
    None when it is long and varied enough (``secrets.token_urlsafe(32)`` passes)."""
    lowered = value.strip().lower()
    if value in KNOWN_PLACEHOLDERS or any(w in lowered for w in PLACEHOLDER_WORDS):
        return "is a known placeholder"
    if len(value) < MIN_SECRET_CHARS:
        return f"has {len(value)} characters, fewer than {MIN_SECRET_CHARS}"
    counts = Counter(value)
    bits = -sum(n * math.log2(n / len(value)) for n in counts.values())
    if bits < MIN_SECRET_BITS:
        return f"carries about {bits:.0f} bits of entropy, under {MIN_SECRET_BITS:.0f}"
    return None


def fernet_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Fernet key (32 bytes, URL-safe base64), or None."""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return "is not URL-safe base64"
    if len(raw) != 32:
        return f"decodes to {len(raw)} bytes, not 32"
    return None


def dsn_sslmode(dsn: str) -> str | None:
    """The ``sslmode`` a PostgreSQL URL names in its query string, if any."""
    values = parse_qs(urlsplit(dsn).query).get("sslmode")
    return values[-1] if values else None


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = "service"
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    topic_prefix: str = Field(
        "", validation_alias="TOPIC_PREFIX",
        description="prepended to every topic name; empty in production, unique per test run",
    )
    person_id_secret: str = Field(DEV_PERSON_ID_SECRET, validation_alias="PERSON_ID_SECRET")
    environment: str = Field(
        "production", validation_alias="ENVIRONMENT",
        description="'development' relaxes the production checks (local scripts and tests set it "
        "explicitly); anything else, and the default, is production",
    )
    data_key: str = Field(
        DEV_DATA_KEY, validation_alias="DATA_ENCRYPTION_KEY",
        description="current Fernet key protecting personal data at rest: the enrollment "
        "service's identities, every service's dead letters (DLQ records and their outbox rows) "
        "and parked records",
    )
    data_previous_keys: str = Field(
        "", validation_alias="DATA_ENCRYPTION_PREVIOUS_KEYS",
        description="comma-separated earlier Fernet keys, still accepted for reading (rotation)",
    )
    allow_insecure_transport: bool = Field(
        False, validation_alias="ALLOW_INSECURE_TRANSPORT",
        description="waives, outside development, the requirement of Kafka over TLS and "
        "PostgreSQL with sslmode=verify-full (a named, logged exception)",
    )
    agencies: tuple[str, ...] = Field(DEFAULT_AGENCIES, validation_alias="AGENCIES")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    topic_partitions: int = Field(12, validation_alias="TOPIC_PARTITIONS")
    topic_replication_factor: int = Field(
        1, ge=1, validation_alias="TOPIC_REPLICATION_FACTOR",
        description="replicas of every topic the services create (1 fits the single local broker; "
        "production: 3)",
    )
    topic_min_insync_replicas: int = Field(
        1, ge=1, validation_alias="TOPIC_MIN_INSYNC_REPLICAS",
        description="min.insync.replicas of the topics the services create (production: 2)",
    )
    topic_retention_ms: int = Field(
        -1, ge=-1, validation_alias="TOPIC_RETENTION_MS",
        description="retention.ms of the upstream, internal and output topics: -1 keeps every "
        "record, which a rebuild from the log needs",
    )
    dlq_retention_ms: int = Field(
        30 * 24 * 3600 * 1000, ge=-1, validation_alias="DLQ_RETENTION_MS",
        description="retention.ms of the skills.<service>.dlq topics (default 30 days)",
    )

    api_tokens: str = Field(
        "", validation_alias="API_TOKENS",
        description="query-API bearer tokens: JSON {\"sha256:<hex>\": {\"role\": \"agency\", "
        "\"agency\": \"suqian\"} | {\"role\": \"auditor\"}} inline, or the path of such a file",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: str | None = Field(
        None, validation_alias="KAFKA_SSL_CAFILE",
        description="CA bundle the broker's certificate is checked against (default: system CAs)",
    )
    kafka_ssl_certfile: str | None = Field(
        None, validation_alias="KAFKA_SSL_CERTFILE", description="client certificate (mutual TLS)"
    )
    kafka_ssl_keyfile: str | None = Field(
        None, validation_alias="KAFKA_SSL_KEYFILE", description="client key (mutual TLS)"
    )
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = Field(
        None, validation_alias="DATABASE_SSLMODE",
        description="libpq sslmode for every connection; unset: the DSN's, else asyncpg's 'prefer'",
    )
    database_sslrootcert: str | None = Field(
        None, validation_alias="DATABASE_SSLROOTCERT",
        description="CA bundle the server's certificate is checked against (verify-ca/verify-full)",
    )

    database_url: str = "postgresql://postgres@127.0.0.1:5432/service"
    migration_database_url: str | None = Field(
        None, description="the DSN `migrate` uses (a role that may change the schema); unset: "
        "DATABASE_URL. The running service then needs only data privileges",
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(
        None, description="serve /metrics on this port only (not on the API port); unset: on "
        "the API port, where outside development it needs a bearer token",
    )
    consumer_group: str = ""
    auto_offset_reset: str = "earliest"
    batch_max_records: int = 5000
    batch_timeout_ms: int = Field(
        500, ge=1,
        description="how long one poll waits for records before the subscriber polls again. "
        "A poll returns as soon as a fetch brings records, so this adds nothing to a record's "
        "latency (FastStream's sleep after an empty poll, which it did, is taken out: "
        "faststream_app.PromptBatchSubscriber); it only sets how often an idle service wakes",
    )
    fetch_max_wait_ms: int = Field(
        20, ge=1,
        description="how long the broker may hold a fetch that finds no new records while some "
        "partitions have records waiting to be handled (aiokafka's default is 500). aiokafka "
        "keeps one fetch in flight per broker and leaves out the partitions that still have "
        "records buffered, so while a batch is handled the fetch in flight can cover idle "
        "partitions only; everything arriving meanwhile waited for it (the 370-500 ms stalls "
        "behind the latency of decisions caused by assessment records)",
    )
    idle_fetch_max_wait_ms: int = Field(
        500, ge=1,
        description="how long the broker may hold a fetch that covers every assigned partition "
        "(nothing buffered, nothing paused): it answers as soon as a record arrives on any of "
        "them, so this delays nothing and only sets how often an idle service asks the broker "
        "(faststream_app.fetch_long_when_idle)",
    )
    top_up_after_ms: int = Field(
        20, ge=0,
        description="a poll whose newest record is older than this was fetched while the "
        "previous batch was handled, and aiokafka fetches a partition again only once its "
        "buffered records are taken: what arrived since is still on the broker. The batch then "
        "polls once more (waiting up to top_up_wait_ms) and takes it too, instead of running "
        "a batch of the few records one fetch caught and leaving the rest to wait behind it. "
        "0: never",
    )
    top_up_wait_ms: int = Field(
        5, ge=1,
        description="how long that second poll waits at most. Measured in the benchmark: the "
        "enrollment's top-ups found records in 671 of 673 cases, within 0.4 ms (median); the "
        "assessment and subsidy services, which read several topics, found none in about 70 % "
        "of theirs, because the fetch they need waits behind one of idle partitions that the "
        "broker holds for fetch_max_wait_ms: each such miss cost the whole wait",
    )
    commit_interval_ms: int = Field(
        200, description="Kafka offsets are committed at most this often (and whenever the "
        "consumer is idle); the inbox absorbs what a crash makes it read again",
    )
    relay_batch_size: int = 5000
    gc_threshold: int = Field(
        50_000, ge=0,
        description="the cyclic garbage collector's first-generation threshold (Python's "
        "default is 700); the objects alive at startup are frozen out of its scans. A batch "
        "allocates hundreds of thousands of objects that reference counting frees: at 700 the "
        "collector ran so often that it tripled the cost of decoding a person's state. 0 keeps "
        "Python's defaults",
    )
    gc_pause_in_batch: bool = Field(
        True,
        description="no cyclic garbage collection while a batch is handled: a collection walks "
        "every object allocated since the last, and during a batch those are the batch's own, "
        "alive until it ends (the subsidy's collections took about 30 ms each at the threshold "
        "above and freed almost nothing). The collector runs after the batch instead",
    )
    pending_wait_seconds: float = Field(
        3600.0,
        description="how long a record referring to something not yet seen waits before it "
        "is dead-lettered as unknown_reference, counted from the pending watermark: only once "
        "every group of pending_upstream and this service's own group have processed "
        "everything appended to their input topics up to the record's parking plus this period",
    )
    pending_upstream: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="the consumer groups (farthest upstream first) that produce what this "
        "service's parked records wait for, each with the topics it consumes, as JSON "
        "{\"group\": [\"topic\", ...]}; names without TOPIC_PREFIX, which is prepended. This "
        "service's own group and input topics always come last",
    )
    sweep_interval_seconds: float = 5.0
    consumer_stall_seconds: float = Field(
        300.0, description="/healthz fails (503) when the consumer has had records to handle but "
        "committed nothing for this long, so an orchestrator restarts the process",
    )
    crash_after_db_commit: bool = Field(
        False, description="test hook: exit abruptly after the first batch's database commit, "
        "before its Kafka offsets are committed",
    )

    @property
    def development(self) -> bool:
        return self.environment == "development"

    @property
    def data_keys(self) -> list[str]:
        """The at-rest keys, current first (MultiFernet order)."""
        return [self.data_key] + [k.strip() for k in self.data_previous_keys.split(",") if k.strip()]

    @property
    def migration_dsn(self) -> str:
        return self.migration_database_url or self.database_url

    def key_problems(self) -> list[str]:
        """Keys that cannot be used at all, in any environment (never echoing a key)."""
        found = []
        for index, key in enumerate(self.data_keys):
            problem = fernet_key_problem(key)
            if problem is not None:
                name = ("DATA_ENCRYPTION_KEY" if index == 0
                        else f"DATA_ENCRYPTION_PREVIOUS_KEYS entry {index}")
                found.append(f"{name} {problem}; generate one with "
                             "`python -m shared.runtime.crypto new-key`")
        return found

    def unsafe_defaults(self) -> list[str]:
        """What makes this configuration unfit outside development, each a reason to refuse to
        start: development or placeholder secrets, weak secrets, no tokens, plaintext transport."""
        found = []
        if self.person_id_secret == DEV_PERSON_ID_SECRET:
            found.append("PERSON_ID_SECRET is the development default; set a real secret")
        else:
            weakness = secret_weakness(self.person_id_secret)
            if weakness is not None:
                found.append(f"PERSON_ID_SECRET {weakness}; use e.g. "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
        if self.data_key == DEV_DATA_KEY:
            found.append("DATA_ENCRYPTION_KEY is the development default; set a real Fernet key")
        elif self.data_key in KNOWN_PLACEHOLDERS:
            found.append("DATA_ENCRYPTION_KEY is a known placeholder; set a real Fernet key")
        if not self.api_tokens.strip():
            found.append("API_TOKENS is empty; configure hashed bearer tokens (docs/SECURITY.md)")
        if not self.allow_insecure_transport:
            found.extend(self.transport_problems())
        return found

    def transport_problems(self) -> list[str]:
        """Plaintext or unverified connections (waived only by ALLOW_INSECURE_TRANSPORT)."""
        found = []
        if self.kafka_security_protocol not in ("SASL_SSL", "SSL"):
            found.append(
                f"KAFKA_SECURITY_PROTOCOL is {self.kafka_security_protocol}; production needs "
                "SASL_SSL (or SSL with a client certificate), or ALLOW_INSECURE_TRANSPORT=true"
            )
        for name, dsn in (("DATABASE_URL", self.database_url),
                          ("MIGRATION_DATABASE_URL", self.migration_database_url)):
            if dsn is None:
                continue
            mode = self.database_sslmode or dsn_sslmode(dsn)
            if mode != "verify-full":
                found.append(
                    f"PostgreSQL ({name}) sslmode is {mode or 'unset'}; production needs "
                    "DATABASE_SSLMODE=verify-full, or ALLOW_INSECURE_TRANSPORT=true"
                )
        return found

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}{self.service_name}"
