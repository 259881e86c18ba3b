"""Settings of the in-memory adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hexbus.application.consuming import RetryPolicy
from hexbus.infrastructure.settings import RetryDelays

__all__ = ["MemoryConfig"]


class MemoryConfig(BaseModel):
    """``mode="await"``: publish returns when every handler finished (the default, and
    what tests want). ``mode="background"``: publish returns once handlers are scheduled;
    ``stop()`` drains them for up to ``drain_timeout`` seconds.

    Failure semantics are fail-open by default: one attempt, the failure logged and
    counted. Opt in to the brokers' semantics with ``max_attempts`` > 1 (retries, in the
    background, after ``retry_delays``; the last delay repeats) and ``dead_letter_limit``
    > 0 (events whose last attempt failed are kept, up to that many per subscription,
    readable with ``bus.dead_letters(name)`` and replayable). ``HEXBUS_MEMORY_RETRIES=true``
    applies ``HEXBUS_MAX_ATTEMPTS`` / ``HEXBUS_RETRY_DELAYS`` to the memory adapter.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["await", "background"] = "await"
    handler_timeout: float | None = Field(default=30.0, gt=0)
    drain_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=1, ge=1)
    retry_delays: RetryDelays = (1.0, 5.0, 25.0)
    dead_letter_limit: int = Field(default=0, ge=0)
    #: The CloudEvents ``source`` of this service: how ``send_encoded`` (the outbox
    #: relay) reads events back (``HEXBUS_SERVICE_NAME``).
    service_name: str = Field(default="hexbus", min_length=1)

    @property
    def retry_policy(self) -> RetryPolicy:
        """What the consume pipeline decides retries with."""
        return RetryPolicy(self.max_attempts, self.retry_delays)

    @property
    def redelivers(self) -> bool:
        """Does a failure do more than being logged and counted?"""
        return self.max_attempts > 1 or self.dead_letter_limit > 0
