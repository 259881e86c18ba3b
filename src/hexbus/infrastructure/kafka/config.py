"""Settings of the Kafka adapter."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Literal, Self

from aiokafka.abc import AbstractTokenProvider
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from hexbus.application.consuming import RetryPolicy
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure import security
from hexbus.infrastructure.settings import (
    KafkaCompression,
    KafkaSaslMechanism,
    KafkaSecurityProtocol,
    RetryDelays,
)

__all__ = ["SECURITY_FIELDS", "KafkaConfig", "config_from_settings", "security_settings"]

logger = logging.getLogger("hexbus.kafka")

#: The TLS/SASL fields of ``KafkaConfig``; setting ``HEXBUS_KAFKA_<FIELD>`` fills each.
SECURITY_FIELDS = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "sasl_oauth_token_provider",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "ssl_check_hostname",
)


def security_settings(settings: Any) -> dict[str, Any]:
    """The ``KafkaConfig`` TLS/SASL fields from ``HexbusSettings`` (``kafka_`` + field)."""
    return {field: getattr(settings, f"kafka_{field}") for field in SECURITY_FIELDS}


class KafkaConfig(BaseModel):
    """Everything the Kafka adapter needs; ``KafkaEventBus.from_settings`` fills it from
    ``HEXBUS_*`` settings, tests build it directly.

    ``auto_offset_reset="earliest"``: a consumer group that has never committed starts at
    the beginning of its topics. Why: the group joins asynchronously after ``start()``,
    so ``"latest"`` would silently skip events published between ``start()`` and the first
    assignment. The price: a brand-new subscription on an old topic replays what the topic
    still retains (set ``"latest"`` to opt out, and call ``wait_ready()`` before relying
    on it: it returns once the start offsets are resolved).

    ``retry_delays``: the in-process wait (seconds) after failed attempt ``n`` is
    ``retry_delays[n - 1]``, the last one repeating, exactly as RabbitMQ's back-off tiers
    (``HEXBUS_RETRY_DELAYS``). The partition waits with the record: that is what keeps
    per-key order on Kafka.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    service_name: str = Field(default="hexbus", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    #: ``min.insync.replicas`` of the replicated topics hexbus creates (ignored when
    #: ``replication_factor`` is 1); ``None``: a majority of the replicas (2 of 3), so an
    #: ack means "on a majority of the replicas" (``topology.replicated_topic_configs``).
    min_insync_replicas: int | None = Field(default=None, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    retry_delays: RetryDelays = (1.0, 5.0, 25.0)
    handler_timeout: float | None = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    #: How long ``stop()`` / a partition revocation waits for in-flight handlers.
    drain_timeout: float = Field(default=30.0, gt=0)
    max_request_size: int = Field(default=1024 * 1024, ge=1024)
    #: How long the producer holds a batch open for more records (``HEXBUS_KAFKA_LINGER_MS``).
    #: 0: a batch leaves as soon as the connection is free. aiokafka keeps one request in
    #: flight per broker, so records sent meanwhile still share the next batch; a linger
    #: would only add its time to every lone publish (5 ms capped one awaited publish at a
    #: time near 150/s).
    linger_ms: int = Field(default=0, ge=0)
    #: Bytes per partition batch (``HEXBUS_KAFKA_BATCH_SIZE``; at most ``max_request_size``
    #: is used). With one request in flight per broker, a request carries at most one
    #: batch per partition, so this bounds what one round trip moves: 256 KiB keeps a
    #: burst of publishes to a few round trips (aiokafka's 16 KiB default needs many).
    max_batch_size: int = Field(default=256 * 1024, ge=1024)
    #: Producer compression (``HEXBUS_KAFKA_COMPRESSION``): ``none``, ``gzip``,
    #: ``snappy``, ``lz4`` or ``zstd`` (the last three need ``cramjam``, in the
    #: ``hexbus[kafka]`` extra). Off by default: hexbus events are small and a
    #: local/LAN broker is rarely bandwidth-bound, while compressing costs CPU per batch.
    compression: KafkaCompression = "none"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: How soon a pattern subscription notices a topic created after it started.
    metadata_max_age_ms: int = Field(default=10_000, ge=100)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    #: Records fetched per ``getmany`` call (per consumer group).
    max_poll_records: int = Field(default=500, ge=1)
    # -- TLS and SASL: the HEXBUS_KAFKA_SECURITY_PROTOCOL, _SASL_*, _SSL_* settings
    # (docs/architecture/security.md); every client of the bus uses them (client_security).
    security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: OAUTHBEARER: an aiokafka ``AbstractTokenProvider``, or ``"module:attribute"`` naming
    #: one or a factory (a class, a function) that returns one.
    sasl_oauth_token_provider: Any = Field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _security_settings(self) -> Self:
        problems = security.kafka_security_problems(
            {name: getattr(self, name) for name in type(self).model_fields}, name=str
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _compression_library(self) -> Self:
        codec = self.compression
        if codec in _CRAMJAM_CODECS and not _has_cramjam():
            raise ValueError(
                f"compression={codec!r} (HEXBUS_KAFKA_COMPRESSION) needs the cramjam "
                "package, which is not installed: pip install 'hexbus[kafka]' (or cramjam), "
                "or choose gzip or none"
            )
        return self

    def producer_options(self) -> dict[str, Any]:
        """The batching and compression options of the bus's producer (shared by
        ``publisher.py`` and the benchmark's raw baseline, so both compare alike)."""
        return {
            "linger_ms": self.linger_ms,
            # A batch never larger than a request may be (the broker would refuse it).
            "max_batch_size": min(self.max_batch_size, self.max_request_size),
            "compression_type": None if self.compression == "none" else self.compression,
        }

    @property
    def tls_files(self) -> security.TlsFiles:
        return security.TlsFiles(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            key_password=self.ssl_key_password,
            check_hostname=self.ssl_check_hostname,
        )

    def client_security(self) -> dict[str, Any]:
        """The security keyword arguments of every aiokafka client of the bus.

        Builds the SSL context and loads the OAUTHBEARER token provider, so the bus calls
        it once and shares the result (one context, one provider, for all its clients).
        ``SecurityError`` / ``ConfigurationError`` name the variable at fault.
        """
        protocol = self.security_protocol
        context = None
        if protocol in security.TLS_PROTOCOLS:
            context = security.client_context(self.tls_files)
            if not self.ssl_check_hostname:
                logger.warning(
                    "hexbus kafka: TLS host name verification is OFF "
                    "(HEXBUS_KAFKA_SSL_CHECK_HOSTNAME=false): any certificate the CA signed "
                    "is accepted for any broker"
                )
        provider = None
        if protocol in security.SASL_PROTOCOLS and self.sasl_mechanism == "OAUTHBEARER":
            provider = _token_provider(self.sasl_oauth_token_provider)
        return security.kafka_client_options(
            protocol,
            mechanism=self.sasl_mechanism,
            username=self.sasl_username,
            password=self.sasl_password,
            token_provider=provider,
            context=context,
        )

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> Self:
        wanted = self.min_insync_replicas
        if wanted is not None and self.replication_factor > 1 and wanted > self.replication_factor:
            raise ValueError(
                f"min_insync_replicas={wanted} is more than replication_factor="
                f"{self.replication_factor}: no write could ever be acknowledged"
            )
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        """What the consume pipeline decides retries with."""
        return RetryPolicy(self.max_attempts, self.retry_delays)


_PROVIDER_VARIABLE = "HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER"
#: Codecs aiokafka implements with cramjam (gzip is in the standard library).
_CRAMJAM_CODECS = frozenset({"snappy", "lz4", "zstd"})


def _has_cramjam() -> bool:
    return importlib.util.find_spec("cramjam") is not None


def _token_provider(value: Any) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider ``value`` is or names (``module:attribute`` of an
    ``AbstractTokenProvider``, or of a factory returning one)."""
    found = security.load_object(value, _PROVIDER_VARIABLE) if isinstance(value, str) else value
    if isinstance(found, AbstractTokenProvider):
        return found
    what = "sasl_oauth_token_provider"
    if isinstance(value, str):
        what = f"{_PROVIDER_VARIABLE}={value!r}"
    if callable(found):
        try:
            made = found()
        except Exception as exc:  # noqa: BLE001 - the user's factory: reported by name
            raise ConfigurationError(
                f"{what}: calling it to make the token provider raised "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if isinstance(made, AbstractTokenProvider):
            return made
        found = made
    raise ConfigurationError(
        f"{what} is a {type(found).__name__}, not an aiokafka.abc.AbstractTokenProvider (nor a "
        "factory returning one): subclass AbstractTokenProvider and implement async token()"
    )


def config_from_settings(settings: Any) -> KafkaConfig:
    """The config ``KafkaEventBus.from_settings`` builds from ``HexbusSettings``."""
    return KafkaConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic_prefix=settings.kafka_topic_prefix,
        service_name=settings.service_name,
        partitions=settings.kafka_partitions,
        replication_factor=settings.kafka_replication_factor,
        max_attempts=settings.max_attempts,
        retry_delays=settings.retry_delays,
        handler_timeout=settings.handler_timeout,
        publish_timeout=settings.publish_timeout,
        drain_timeout=settings.drain_timeout,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=settings.kafka_batch_size,
        compression=settings.kafka_compression,
        **security_settings(settings),
    )
