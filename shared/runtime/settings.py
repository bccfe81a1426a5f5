"""Typed settings shared by every service; each service subclasses with its own env prefix.

Connection settings shared by the whole deployment (Kafka, the person-id secret) are read
without a prefix; per-service settings (database, HTTP port) carry the service's prefix,
e.g. ``SUBSIDY_DATABASE_URL``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AGENCIES = ("city-a", "suqian", "baoshan", "beijing")
DEV_PERSON_ID_SECRET = "dev-only-person-id-secret-change-me"


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
    environment: str = Field("development", validation_alias="ENVIRONMENT")
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
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    consumer_group: str = ""
    auto_offset_reset: str = "earliest"
    batch_max_records: int = 5000
    batch_timeout_ms: int = 50
    commit_interval_ms: int = Field(
        200, description="Kafka offsets are committed at most this often (and whenever the "
        "consumer is idle); the inbox absorbs what a crash makes it read again",
    )
    relay_batch_size: int = 5000
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

    def unsafe_defaults(self) -> list[str]:
        """Development defaults still in place, each a reason to refuse to start elsewhere."""
        found = []
        if self.person_id_secret == DEV_PERSON_ID_SECRET:
            found.append("PERSON_ID_SECRET is the development default; set a real secret")
        if not self.api_tokens.strip():
            found.append("API_TOKENS is empty; configure hashed bearer tokens (docs/SECURITY.md)")
        return found

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"{self.topic_prefix}{self.service_name}"
