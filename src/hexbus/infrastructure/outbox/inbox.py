"""The inbox: an idempotent subscription's handler runs once in effect per event.

Why in the handler's own transaction: recording "handled" apart from the handler's
writes leaves a gap either way (recorded but the writes lost, or written twice). So the
guard opens one session, inserts ``(subscription, source, event id)`` first, runs the
handler with that session in ``current_context().session``, and commits both together.
A redelivered duplicate finds the row and is acknowledged without running the handler;
a handler that fails rolls the row back with its writes, so the retry runs it again.
Inserting first also serialises two copies delivered at the same moment: the second
waits on the first's key and sees it committed (or rolled back).

The identity is ``DeliveryContext.dedup_key``, CloudEvents' (source, id), so foreign
producers' ids work as well as hexbus's. Rows older than the retention period are
deleted by ``cleanup`` (the container runs it hourly): a duplicate arriving after that
runs again, so keep the retention above the longest redelivery you expect (broker
retention, dead-letter replays).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hexbus.application.handlers import HandlerCall
from hexbus.domain.context import delivery_context
from hexbus.infrastructure.outbox.schema import OutboxTables

__all__ = ["InboxStats", "SqlInbox"]

logger = logging.getLogger("hexbus.inbox")


@dataclass(slots=True)
class InboxStats:
    handled: int = 0
    duplicates: int = 0
    cleaned: int = 0


class SqlInbox:
    """``Inbox`` over SQLAlchemy: one transaction per delivery of an idempotent handler."""

    def __init__(
        self,
        engine: AsyncEngine,
        tables: OutboxTables,
        *,
        retention: float = 7 * 24 * 3600.0,
        sessions: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.engine = engine
        self.tables = tables
        self.retention = retention
        self.sessions = sessions or async_sessionmaker(engine, expire_on_commit=False)
        self.stats = InboxStats()
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert(tables.inbox).on_conflict_do_nothing()
        self._cleaner: asyncio.Task[None] | None = None

    def guard(self, subscription: str, call: HandlerCall) -> HandlerCall:
        """``call`` run inside an inbox transaction for ``subscription`` (see module doc)."""

        async def guarded(event: Any) -> None:
            context = delivery_context.get()
            identity = context.dedup_key
            if identity is None:  # not a delivery (a direct call): nothing to record
                await call(event)
                return
            source, event_id = identity
            async with self.sessions() as session, session.begin():
                inserted = await session.execute(
                    self._insert,
                    {
                        "subscription": subscription,
                        "source": source,
                        "event_id": event_id,
                        "received_at": time.time(),
                    },
                )
                if not inserted.rowcount:  # type: ignore[attr-defined]
                    self.stats.duplicates += 1
                    logger.info(
                        "inbox: %s already handled %s event %s; duplicate acknowledged "
                        "without running the handler",
                        subscription,
                        getattr(event, "event_type", "?"),
                        event_id,
                        extra={
                            "subscription": subscription,
                            "event_id": event_id,
                            "attempt": context.attempt,
                        },
                    )
                    return
                token = delivery_context.set(context._replace(session=session))
                try:
                    await call(event)
                finally:
                    delivery_context.reset(token)
            self.stats.handled += 1

        guarded.__qualname__ = f"inbox({getattr(call, '__qualname__', repr(call))})"
        return guarded

    async def seen(self, subscription: str, source: str, event_id: str) -> bool:
        """Has ``subscription`` handled (source, event id) within the retention period?"""
        inbox = self.tables.inbox
        async with self.engine.connect() as connection:
            found = await connection.execute(
                inbox.select().where(
                    inbox.c.subscription == subscription,
                    inbox.c.source == source,
                    inbox.c.event_id == event_id,
                )
            )
            return found.first() is not None

    async def cleanup(self, now: float | None = None) -> int:
        """Delete rows older than ``retention``; how many went."""
        inbox = self.tables.inbox
        cutoff = (time.time() if now is None else now) - self.retention
        async with self.engine.begin() as connection:
            result = await connection.execute(delete(inbox).where(inbox.c.received_at < cutoff))
        removed = int(result.rowcount or 0)
        self.stats.cleaned += removed
        if removed:
            logger.info("inbox: %d row(s) older than %.0fs deleted", removed, self.retention)
        return removed

    def start_cleanup(self, every: float = 3600.0) -> None:
        """Run ``cleanup`` now and then every ``every`` seconds until ``stop_cleanup``."""
        if self._cleaner is None or self._cleaner.done():
            self._cleaner = asyncio.get_running_loop().create_task(
                self._clean_every(every), name="hexbus-inbox-cleanup"
            )

    async def stop_cleanup(self) -> None:
        task, self._cleaner = self._cleaner, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _clean_every(self, every: float) -> None:
        while True:
            try:
                await self.cleanup()
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("inbox cleanup failed (%s); trying again later", type(exc).__name__)
            await asyncio.sleep(every)
