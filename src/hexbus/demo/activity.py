"""A chronological journal of what the demo did: events seen, and what handlers did.

Why a journal instead of printing from handlers: handlers must not know about the
terminal; the scenario renders the journal with rich after each step, and tests read it.
Entries carry the id of the event being handled (from ``hexbus.current_context()``), so
each handler action lines up under the event that caused it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from hexbus import DomainEvent, current_context

__all__ = ["Action", "ActivityLog", "EventSeen", "EventTap"]


@dataclass(frozen=True, slots=True)
class EventSeen:
    event: DomainEvent
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Action:
    actor: str
    text: str
    event_id: UUID | None


@dataclass
class ActivityLog:
    """Append-only; plain ``def`` handlers write from worker threads, hence the lock."""

    entries: list[EventSeen | Action] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cursor: int = 0

    def event(self, event: DomainEvent, metadata: Mapping[str, str]) -> None:
        with self._lock:
            self.entries.append(EventSeen(event, dict(metadata)))

    def record(self, actor: str, text: str) -> None:
        """Note what ``actor`` did, tied to the event being handled (if any)."""
        parent = current_context().event
        with self._lock:
            self.entries.append(Action(actor, text, None if parent is None else parent.event_id))

    def take_new(self) -> list[EventSeen | Action]:
        """Entries added since the last call (the scenario renders them step by step)."""
        with self._lock:
            new, self._cursor = self.entries[self._cursor :], len(self.entries)
        return new

    def actions(self, actor: str | None = None) -> list[Action]:
        return [e for e in self.entries if isinstance(e, Action) and actor in (None, e.actor)]

    def events(self) -> list[DomainEvent]:
        return [e.event for e in self.entries if isinstance(e, EventSeen)]


class EventTap:
    """Subscribed to ``#`` first: puts every delivered event (and its metadata) in the log."""

    def __init__(self, activity: ActivityLog) -> None:
        self.activity = activity

    async def __call__(self, event: DomainEvent) -> None:
        self.activity.event(event, current_context().metadata)
