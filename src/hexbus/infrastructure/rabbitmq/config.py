"""Settings of the RabbitMQ adapter.

Why a frozen model of its own (next to ``HexbusSettings``): the adapter can be built in
code (tests, scripts, the benchmark) without environment variables, and options that only
make sense here (retry delay tiers, drain timeout) stay out of the global settings.
The URL holds the broker password: it is masked (``redact_url``) in the repr and in every
message the adapter writes. It may list a cluster's nodes, comma-separated (``urls``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any, Self

import aiormq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hexbus.application.consuming import RetryPolicy
from hexbus.infrastructure import security
from hexbus.infrastructure.settings import (
    RabbitMQQueueType,
    RetryDelays,
    check_amqp_urls,
    redact_url,
    split_urls,
)

__all__ = ["TLS_FIELDS", "RabbitMQConfig", "config_from_settings", "tls_settings"]

logger = logging.getLogger("hexbus.rabbitmq")

#: The TLS fields of ``RabbitMQConfig``; ``HEXBUS_RABBITMQ_<FIELD>`` fills each.
TLS_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_verify")
#: What aiormq raises for refused credentials.
_AUTH_ERRORS = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
)


def tls_settings(settings: Any) -> dict[str, Any]:
    """The ``RabbitMQConfig`` TLS fields from ``HexbusSettings`` (``rabbitmq_`` + field)."""
    return {field: getattr(settings, f"rabbitmq_{field}") for field in TLS_FIELDS}


class RabbitMQConfig(BaseModel):
    """Everything ``RabbitMQEventBus`` needs; defaults match ``HexbusSettings``.

    ``retry_delays`` are the back-off tiers (seconds): a failed delivery waits in the
    tier of its attempt number (the last tier for every later attempt) before it returns
    to the subscription's queue. ``reconnect_interval``: seconds between reconnection
    attempts after the broker went away. ``drain_timeout`` bounds how long ``stop()`` waits for
    handlers in flight; the rest are requeued, never dropped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    exchange: str = Field(default="hexbus.events", min_length=1)
    service_name: str = Field(default="hexbus", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    prefetch: int = Field(default=64, ge=1, le=65535)
    #: The type of the subscriptions' work queues (``HEXBUS_RABBITMQ_QUEUE_TYPE``):
    #: ``quorum`` (replicated by Raft, the durable choice) or ``classic`` (one node,
    #: cheaper per message). Retry tiers and DLQs stay quorum queues: they dead-letter
    #: at-least-once, which only quorum queues do. docs/architecture/broker-adapters.md.
    queue_type: RabbitMQQueueType = "quorum"
    max_attempts: int = Field(default=5, ge=1)
    retry_delays: RetryDelays = (1.0, 5.0, 25.0)
    handler_timeout: float | None = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    reconnect_interval: float = Field(default=2.0, gt=0)
    drain_timeout: float = Field(default=30.0, gt=0)
    # -- TLS for amqps:// URLs (HEXBUS_RABBITMQ_SSL_*, docs/architecture/security.md):
    #: the CA that signed the broker's certificate (default: the system's CAs) ...
    ssl_cafile: str | None = None
    #: ... and the client certificate + key, for a broker that asks for one.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Verify the broker's certificate chain and host name; off only for experiments.
    ssl_verify: bool = True

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        return check_amqp_urls(value)

    @model_validator(mode="after")
    def _tls_settings(self) -> Self:
        values = {name: getattr(self, name) for name in TLS_FIELDS}
        problems = security.rabbitmq_tls_problems(self.urls, {**values, "url": self.url}, str)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tls_files(self) -> security.TlsFiles:
        return security.TlsFiles(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            verify=self.ssl_verify,
            check_hostname=self.ssl_verify,
            prefix="HEXBUS_RABBITMQ_SSL_",
            has_key_password=False,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The client SSL context for ``amqps://`` nodes (``None`` when no URL is amqps).

        Built once per bus; a file that cannot be used is a ``SecurityError`` naming
        its variable. Verification off is logged: it accepts any broker.
        """
        if not any(url.startswith("amqps://") for url in self.urls):
            return None
        if not self.ssl_verify:
            logger.warning(
                "hexbus rabbitmq: TLS certificate verification is OFF "
                "(HEXBUS_RABBITMQ_SSL_VERIFY=false): any server can pose as the broker"
            )
        return security.client_context(self.tls_files)

    async def security_failure(
        self, failures: Sequence[tuple[str, BaseException]], context: ssl.SSLContext | None
    ) -> security.SecurityError | None:
        """What TLS or credential problem made connecting to the nodes fail (a wrong
        password, an untrusted certificate, amqp:// on a TLS port ...), naming the
        variable to fix; ``None`` when the failures are of another kind."""
        for url, exc in failures:
            found = await security.explain_rabbitmq_failure(
                exc,
                url=url,
                redacted_url=redact_url(url),
                tls=self.tls_files,
                context=context,
                auth_failed=isinstance(exc, _AUTH_ERRORS),
            )
            if found is not None:
                return found
        return None

    @property
    def urls(self) -> list[str]:
        """The nodes to connect to, in order: ``url`` may list a cluster's nodes,
        comma-separated; the first that answers is used, the others on failover."""
        return split_urls(self.url)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def retry_policy(self) -> RetryPolicy:
        """What the consume pipeline decides with; its delays are the declared tiers."""
        return RetryPolicy(self.max_attempts, self.retry_delays)

    def __repr_args__(self) -> Any:
        yield "url", self.redacted_url
        yield from super().__repr_args__()


def config_from_settings(settings: Any) -> RabbitMQConfig:
    """The config ``RabbitMQEventBus.from_settings`` builds from ``HexbusSettings``."""
    return RabbitMQConfig(
        url=settings.rabbitmq_url,
        exchange=settings.rabbitmq_exchange,
        service_name=settings.service_name,
        prefetch=settings.rabbitmq_prefetch,
        queue_type=settings.rabbitmq_queue_type,
        max_attempts=settings.max_attempts,
        handler_timeout=settings.handler_timeout,
        publish_timeout=settings.publish_timeout,
        retry_delays=settings.retry_delays,
        drain_timeout=settings.drain_timeout,
        **tls_settings(settings),
    )
