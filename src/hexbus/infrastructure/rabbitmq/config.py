"""Settings of the RabbitMQ adapter.

Why a frozen model of its own (next to ``HexbusSettings``): the adapter can be built in
code (tests, scripts, the benchmark) without environment variables, and options that only
make sense here (retry delay tiers, drain timeout) stay out of the global settings.
The URL holds the broker password: it is masked (``redact_url``) in the repr and in every
message the adapter writes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hexbus.application.consuming import RetryPolicy
from hexbus.infrastructure.settings import RetryDelays, redact_url

__all__ = ["RabbitMQConfig"]


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
    max_attempts: int = Field(default=5, ge=1)
    retry_delays: RetryDelays = (1.0, 5.0, 25.0)
    handler_timeout: float | None = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    reconnect_interval: float = Field(default=2.0, gt=0)
    drain_timeout: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"must be an amqp:// or amqps:// URL, got {redact_url(value)!r}")
        return value

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
