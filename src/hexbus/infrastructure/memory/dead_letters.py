"""The memory adapter's dead letters: bounded, per subscription, in process.

Why bounded: a handler that fails on every event must not grow the process without
limit; past ``limit`` per subscription the oldest dead letter is dropped, with a
warning and a count (``dropped``). Nothing here survives the process: use a broker
adapter where dead letters must.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime

from hexbus.application.consuming import Outcome
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import DeadLetter

__all__ = ["DeadLetterStore"]

logger = logging.getLogger("hexbus.memory")


class DeadLetterStore:
    """Dead letters per subscription name, oldest first, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._by_subscription: dict[str, deque[DeadLetter]] = {}

    def add(self, outcome: Outcome, event: DomainEvent, metadata: Mapping[str, str]) -> bool:
        """Keep the dead letter of ``outcome``; ``False`` when the store is disabled."""
        if self.limit <= 0:
            return False
        name = outcome.subscription or ""
        kept = self._by_subscription.setdefault(name, deque())
        if len(kept) >= self.limit:
            lost = kept.popleft()
            self.dropped += 1
            logger.warning(
                "memory dead letters of %s are full (%d); dropped the oldest, event %s",
                name,
                self.limit,
                lost.event_id,
            )
        kept.append(
            DeadLetter(
                subscription=name,
                event_id=str(event.event_id),
                event_type=event.event_type,
                error=outcome.error,
                reason=outcome.reason,
                attempts=outcome.attempt,
                handler=name,
                failed_at=datetime.now(UTC).isoformat(),
                origin="memory",
                body=type(event).__pydantic_serializer__.to_json(event, by_alias=True),
                headers=dict(metadata),
                event=event,
            )
        )
        return True

    def peek(self, subscription: str, limit: int) -> list[DeadLetter]:
        return list(self._by_subscription.get(subscription, ()))[:limit]

    def select(
        self, subscription: str, limit: int | None, event_type: str | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` (all when ``None``) of ``event_type`` (any when ``None``), oldest
        first, left in place."""
        kept = self._by_subscription.get(subscription, ())
        chosen = [d for d in kept if event_type is None or d.event_type == event_type]
        return chosen if limit is None else chosen[:limit]

    def remove(self, subscription: str, letters: list[DeadLetter]) -> None:
        kept = self._by_subscription.get(subscription)
        if kept is None:
            return
        gone = {id(letter) for letter in letters}
        self._by_subscription[subscription] = deque(d for d in kept if id(d) not in gone)

    def discard(self, subscription: str) -> None:
        self._by_subscription.pop(subscription, None)

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._by_subscription.values())
