"""``AuditLogHandler``: every event, one JSON line each, appended to a file.

Why buffered: an audit trail must not cost a disk write per event; lines are kept in
memory and written every ``buffer_size`` events, on ``flush()`` and on ``stop()``, so at
most one buffer is at risk if the process dies hard.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

from hexbus.application.handlers import EventHandler
from hexbus.domain.context import current_context
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import SubscriptionTarget

__all__ = ["AuditLogHandler"]


class AuditLogHandler(EventHandler):
    """Subscribes to ``#`` (all events); register it with ``bus.register(handler)``."""

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = ("#",)
    subscription_name: ClassVar[str | None] = "hexbus.audit"

    def __init__(self, path: str | Path, *, buffer_size: int = 100) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.path = Path(path)
        self.buffer_size = buffer_size
        self._buffer: list[str] = []
        self._lock = asyncio.Lock()
        self.written = 0

    async def handle(self, event: DomainEvent) -> None:
        context = current_context()
        record: dict[str, Any] = {
            "event_type": event.event_type,
            "event_version": event.event_version,
            **event.to_dict(),
        }
        if context.metadata:
            record["metadata"] = dict(context.metadata)
        self._buffer.append(json.dumps(record, separators=(",", ":"), sort_keys=True))
        if len(self._buffer) >= self.buffer_size:
            await self.flush()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Append the buffered lines to the file (in a thread: never block the loop)."""
        async with self._lock:
            if not self._buffer:
                return
            lines, self._buffer = self._buffer, []
            await asyncio.to_thread(self._append, lines)
            self.written += len(lines)

    def _append(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    async def stop(self) -> None:
        await self.flush()
