"""Settings of the in-memory adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemoryConfig"]


class MemoryConfig(BaseModel):
    """``mode="await"``: publish returns when every handler finished (the default, and
    what tests want). ``mode="background"``: publish returns once handlers are scheduled;
    ``stop()`` drains them for up to ``drain_timeout`` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["await", "background"] = "await"
    handler_timeout: float | None = Field(default=30.0, gt=0)
    drain_timeout: float = Field(default=30.0, gt=0)
