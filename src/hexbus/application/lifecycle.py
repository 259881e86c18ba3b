"""A bus's explicit lifecycle state (the httpx way: one enum, checked everywhere)."""

from __future__ import annotations

import enum

__all__ = ["BusState"]


class BusState(enum.Enum):
    """Lifecycle: NEW → RUNNING → STOPPING → CLOSED. A closed bus is not restarted."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"
