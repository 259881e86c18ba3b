"""The relay: committed outbox rows onto the transport, then out of the table.

Why a loop of claim → send → delete: a row is deleted only after the transport
confirmed it (RabbitMQ publisher confirm, Kafka ``acks=all``), so a crash anywhere
leaves it in the table to be sent again: at-least-once, never lost; the inbox on the
consuming side turns the rare duplicate into exactly-once in effect.

Waking: after each batch the relay goes on at once while rows keep coming; an idle
relay waits for a hint (PostgreSQL ``NOTIFY`` from the writer's transaction, or a commit
in this process) or ``poll_interval``, whichever is first. A hint is only a hint: the
relay polls anyway, so a lost notification delays a row, never strands it.

Failures: a send that fails frees the batch and the relay backs off (0.2 s doubling to
10 s, reset by the next success), so a broker that is down costs no CPU and delivery
resumes by itself. A row that no longer reads as a CloudEvent goes to the outbox's
dead-letter table with the reason, and the rest of the batch goes on.

Stop: ``stop()`` lets the batch in hand finish (sent and deleted) within ``timeout``;
past it, the send is cancelled and the batch freed: never half-sent and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.exc import SQLAlchemyError

from hexbus.domain.errors import BusClosedError, ConfigurationError, NotStartedError
from hexbus.infrastructure.codec import EncodedEvent
from hexbus.infrastructure.outbox.database import engine_url, mask_secret
from hexbus.infrastructure.outbox.store import Claim, OutboxStore, RowError
from hexbus.infrastructure.outbox.writer import NOTIFY_CHANNEL, SqlOutboxWriter

__all__ = ["EncodedSender", "OutboxRelay", "OutboxStats", "RelayStats"]

logger = logging.getLogger("hexbus.outbox")

_created_at = attrgetter("created_at")
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 10.0


@runtime_checkable
class EncodedSender(Protocol):
    """What the relay sends through: every adapter's ``send_encoded``."""

    def send_encoded(self, items: Sequence[EncodedEvent]) -> Awaitable[None]: ...


@dataclass(slots=True)
class RelayStats:
    """What one relay did since it started (counters; see ``OutboxStats``)."""

    batches: int = 0
    sent: int = 0
    last_batch_size: int = 0
    #: Rows this relay sent but could not delete: its lease had expired (another relay
    #: may have claimed them) or its database connection was lost; they were, or will
    #: be, sent twice.
    claim_conflicts: int = 0
    send_failures: int = 0
    dead_lettered: int = 0
    #: Seconds between a row's write and its confirmed send, for the last batch (max).
    last_lag: float = 0.0


@dataclass(slots=True, frozen=True)
class OutboxStats:
    """The outbox as one relay sees it: the table, and the relay's counters."""

    pending: int
    #: Age in seconds of the oldest row not yet sent (0 when none): the relay lag.
    oldest_pending_age: float
    dead_letters: int
    relay: RelayStats = field(default_factory=RelayStats)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutboxRelay:
    """Sends the outbox through ``sender`` until stopped."""

    def __init__(
        self,
        store: OutboxStore,
        sender: EncodedSender,
        *,
        batch_size: int = 500,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        writer: SqlOutboxWriter | None = None,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._waker = writer.on_commit(self._wake.set) if writer is not None else None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._listener: Any = None  # the SQLAlchemy connection holding the LISTEN
        #: The figures read last by the running relay (every ``stats_interval`` s), what
        #: metrics read: a gauge callback cannot query the database itself.
        self.last: OutboxStats | None = None
        self.stats_interval = 5.0
        self._stats_read = 0.0
        self._ahead: asyncio.Task[Claim] | None = None  # the next batch, claimed early
        self._keyed = False  # did the batch in hand have keyed rows (``_take_claim``)
        self._completing: asyncio.Task[None] | None = None  # the last batch's deletion
        #: Rows deleted between two ``VACUUM``s of the outbox table (PostgreSQL).
        self.vacuum_every = max(5_000, 10 * batch_size)
        self._deleted = 0
        self._vacuuming: asyncio.Task[None] | None = None
        self._lock_renewed = 0.0

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the loop (SQLite: after taking the one-relay lock, or fail saying who has it)."""
        if self.running:
            return
        await self.store.acquire(self.name, self._lock_ttl)
        self._lock_renewed = time.monotonic()
        self._stopping = False
        await self._listen()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hexbus-relay")

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Finish the batch in hand (up to ``timeout`` s), then stop; safe to call twice."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                logger.warning(
                    "outbox relay: the batch in hand did not finish within %.0fs; it is "
                    "freed and will be sent again",
                    timeout,
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_ahead()
        with contextlib.suppress(Exception):
            await self._settle()
        vacuuming, self._vacuuming = self._vacuuming, None
        if vacuuming is not None:
            with contextlib.suppress(Exception):
                await vacuuming
        await self._unlisten()
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self.store.give_up(self.name)
        await self.store.close()

    @property
    def _lock_ttl(self) -> float:
        return max(3 * self.poll_interval, 15.0)

    # -- one round ------------------------------------------------------------------
    async def run_once(self) -> int:
        """Claim one batch, send it, delete what was sent; the rows handled (0 = idle).

        While a full batch is being sent the next one is claimed already (the database
        round trips overlap the broker's), so a backlog moves at close to the transport's
        own speed. ``PublishError`` (or the transport's own error) when the send failed:
        the batch, and the one claimed ahead, are free again, so nothing after the
        failed batch goes out before it.
        """
        claim = await self._take_claim()
        if not claim.rows:
            return 0
        try:
            if len(claim.rows) >= self.batch_size:  # claimed while this one is read and sent
                self._ahead = asyncio.get_running_loop().create_task(
                    self.store.claim(self.batch_size, self.lease)
                )
            self._keyed = any(row.key is not None for row in claim.rows)
            items, oldest = await self._readable(claim)
            if items:
                traced = getattr(self.sender, "instrumentation", None)
                if traced is None:
                    await self.sender.send_encoded(items)
                else:  # a send span linked to the traceparent stored with each row
                    with traced.relay(
                        [item.attributes for item in items], [item.key for item in items]
                    ):
                        await self.sender.send_encoded(items)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(claim))
            await self._drop_ahead()
            raise
        # Deleting the sent rows overlaps the next send too; one deletion at a time.
        await self._settle()
        self._completing = asyncio.get_running_loop().create_task(
            self._complete(claim, len(items), oldest)
        )
        return len(claim.rows)

    async def _settle(self) -> None:
        """Wait for the deletion of the batch sent last (its rows are gone after this)."""
        completing, self._completing = self._completing, None
        if completing is not None:
            await completing

    async def _complete(self, claim: Claim, sent: int, oldest: float | None) -> None:
        deleted = await self.store.complete(claim)
        self._deleted += deleted
        if self._deleted >= self.vacuum_every and (
            self._vacuuming is None or self._vacuuming.done()
        ):
            self._deleted = 0
            self._vacuuming = asyncio.get_running_loop().create_task(self._vacuum())
        stats = self.stats
        stats.batches += 1
        stats.sent += sent
        stats.last_batch_size = len(claim.rows)
        if oldest is not None:
            stats.last_lag = max(0.0, time.time() - oldest)
        if deleted < sent:
            stats.claim_conflicts += sent - deleted
            logger.warning(
                "outbox relay %s: %d sent row(s) could not be deleted: this relay's hold "
                "on them ended first (its lease of %.0fs ran out, or the database "
                "connection was lost), so they are sent again (the inbox absorbs "
                "duplicates). If sends take that long, raise HEXBUS_OUTBOX_LEASE",
                self.name,
                sent - deleted,
                self.lease,
            )

    async def _vacuum(self) -> None:
        try:
            await self.store.vacuum()
        except Exception as exc:  # noqa: BLE001 - housekeeping: the relay goes on
            logger.info("outbox relay: VACUUM of the outbox table failed (%s)", exc)

    async def _take_claim(self) -> Claim:
        """The batch claimed ahead, unless it came back empty while the batch sent last
        held keys: then, once that batch's deletion released them, a fresh claim (the
        rows it held back behind its keys are free now, and no NOTIFY will say so)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            claim = await ahead
            if claim.rows or not self._keyed:
                return claim
            await self._settle()
        return await self.store.claim(self.batch_size, self.lease)

    async def _drop_ahead(self) -> None:
        """Free the batch claimed ahead (a failed send, a stop): it goes out later."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        try:
            claim = await asyncio.shield(ahead)
        except BaseException:  # noqa: BLE001 - the claim failed: nothing to free
            return
        if claim.rows:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(claim))

    async def _readable(self, claim: Claim) -> tuple[list[EncodedEvent], float | None]:
        """The claim's rows as CloudEvents; unreadable ones moved to the dead letters."""
        items: list[EncodedEvent] = []
        append = items.append
        for row in claim.rows:
            try:
                append(row.encoded())
            except RowError as exc:
                logger.error(
                    "outbox row %d (event %s, %s) cannot be sent: %s; moved to the outbox "
                    "dead letters (%s)",
                    row.position,
                    row.event_id,
                    row.event_type,
                    exc,
                    self.store.tables.dead_letters.name,
                    extra={
                        "event_id": row.event_id,
                        "event_type": row.event_type,
                        "reason": exc.reason,
                    },
                )
                if await self.store.dead_letter(claim, row, exc):
                    self.stats.dead_lettered += 1
        oldest = min(map(_created_at, claim.rows)) if claim.rows else None
        return items, oldest

    async def drain(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        """Send until the outbox is empty (tests, ``hexbus relay --once``)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    handled = await self.run_once()
                    if handled >= self.batch_size:
                        continue  # a full batch: there may be more
                    # A short batch (or none) took what was there: ask whether any row
                    # is left instead of claiming again (rows held back behind a key, or
                    # new ones, go round).
                    await self._settle()
                    if not await self.store.any_pending():
                        return
                    if not handled:
                        await asyncio.sleep(min(0.05, self.poll_interval))  # held elsewhere
        finally:
            await self._drop_ahead()
            await self._settle()

    async def stats_now(self) -> OutboxStats:
        """Pending rows, the oldest one's age and dead letters, read now, with the counters."""
        if self._task is None:  # not running: nothing else awaits the last deletion
            await self._settle()
        pending, oldest, dead = await self.store.pending()
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return OutboxStats(pending, age, dead, self.stats)

    # -- the loop -------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            await self._refresh_stats()  # also while sends fail: the backlog is news then
            try:
                await self._keep_lock()
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except (NotStartedError, BusClosedError):
                if self._stopping:
                    return
                handled, backoff = 0, _next(backoff)
                await self._pause(backoff)
                continue
            except ConfigurationError as exc:  # another relay took the SQLite lock
                logger.error("outbox relay %s stops: %s", self.name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - the relay must survive a failed send
                self.stats.send_failures += 1
                backoff = _next(backoff)
                logger.warning(
                    "outbox relay: %s; retrying in %.1fs (nothing is lost: the rows stay "
                    "in the outbox)",
                    mask_secret(f"{type(exc).__name__}: {exc}", engine_url(self.store.engine)),
                    backoff,
                )
                await self._pause(backoff)
                continue
            backoff = 0.0
            if handled >= self.batch_size:
                continue
            if handled == 0:
                await self._idle()

    async def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_read < self.stats_interval:
            return
        self._stats_read = now
        with contextlib.suppress(SQLAlchemyError, OSError):
            self.last = await self.stats_now()

    def register_metrics(self, *, meter_provider: Any = None) -> list[Any]:
        """OpenTelemetry gauges of this relay's figures (read every ``stats_interval``):
        ``hexbus.outbox.pending``, ``hexbus.outbox.relay.lag`` (age of the oldest row not
        sent, s) and ``hexbus.outbox.dead_letters``; nothing without the ``[otel]`` extra.
        """
        # Imported here: the telemetry package imports OpenTelemetry only when asked.
        from hexbus.infrastructure.telemetry import register_gauge  # noqa: PLC0415

        def figure(name: str) -> Callable[[], float]:
            def read() -> float:
                last = self.last
                return 0.0 if last is None else float(getattr(last, name))

            return read

        gauges = [
            register_gauge(
                "hexbus.outbox.pending",
                figure("pending"),
                unit="{message}",
                description="Outbox rows written and not yet sent",
                meter_provider=meter_provider,
            ),
            register_gauge(
                "hexbus.outbox.relay.lag",
                figure("oldest_pending_age"),
                unit="s",
                description="Age of the oldest outbox row not yet sent",
                meter_provider=meter_provider,
            ),
            register_gauge(
                "hexbus.outbox.dead_letters",
                figure("dead_letters"),
                unit="{message}",
                description="Outbox rows that could not be read back",
                meter_provider=meter_provider,
            ),
        ]
        return [gauge for gauge in gauges if gauge is not None]

    async def _idle(self) -> None:
        if self._listener is None and self.store.dialect == "postgresql":
            await self._listen()  # the LISTEN connection was lost: try again
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_interval):
                await self._wake.wait()
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        """Back off; ``stop()`` ends the pause at once."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return

    async def _keep_lock(self) -> None:
        if time.monotonic() - self._lock_renewed > self._lock_ttl / 3:
            await self.store.renew(self.name, self._lock_ttl)
            self._lock_renewed = time.monotonic()

    # -- LISTEN (PostgreSQL) --------------------------------------------------------
    async def _listen(self) -> None:
        if self.store.dialect != "postgresql":
            return
        try:
            connection = await self.store.engine.connect()
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.add_listener(NOTIFY_CHANNEL, self._notified)
            driver.add_termination_listener(self._listener_lost)
        except Exception as exc:  # noqa: BLE001 - polling still works without it
            logger.warning(
                "outbox relay: LISTEN %s failed (%s); polling every %.1fs instead",
                NOTIFY_CHANNEL,
                mask_secret(str(exc), engine_url(self.store.engine)),
                self.poll_interval,
            )
            return
        self._listener = connection

    def _notified(self, *_args: Any) -> None:
        self._wake.set()

    def _listener_lost(self, *_args: Any) -> None:
        self._listener = None

    async def _unlisten(self) -> None:
        connection, self._listener = self._listener, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def _next(backoff: float) -> float:
    return _BACKOFF_FIRST if backoff <= 0 else min(_BACKOFF_MAX, backoff * 2)
