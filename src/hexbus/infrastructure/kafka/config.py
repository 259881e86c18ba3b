"""Settings of the Kafka adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hexbus.application.consuming import RetryPolicy
from hexbus.infrastructure.settings import RetryDelays

__all__ = ["KafkaConfig"]


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

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    service_name: str = Field(default="hexbus", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    retry_delays: RetryDelays = (1.0, 5.0, 25.0)
    handler_timeout: float | None = Field(default=30.0, gt=0)
    publish_timeout: float = Field(default=10.0, gt=0)
    #: How long ``stop()`` / a partition revocation waits for in-flight handlers.
    drain_timeout: float = Field(default=30.0, gt=0)
    max_request_size: int = Field(default=1024 * 1024, ge=1024)
    linger_ms: int = Field(default=5, ge=0)
    max_batch_size: int = Field(default=64 * 1024, ge=1024)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: How soon a pattern subscription notices a topic created after it started.
    metadata_max_age_ms: int = Field(default=10_000, ge=100)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    #: Records fetched per ``getmany`` call (per consumer group).
    max_poll_records: int = Field(default=500, ge=1)

    @property
    def retry_policy(self) -> RetryPolicy:
        """What the consume pipeline decides retries with."""
        return RetryPolicy(self.max_attempts, self.retry_delays)
