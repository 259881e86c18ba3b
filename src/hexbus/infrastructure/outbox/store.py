"""The relay's side of the outbox table: claim, complete, release, dead-letter, count.

Why two stores: PostgreSQL lets several relays share one outbox, SQLite allows one.

PostgreSQL. A claim is one short transaction: it takes a transaction-scoped advisory
lock (claims queue behind each other for a few milliseconds; sends do not), then marks
up to ``limit`` free rows with a fresh token and a lease, oldest first, ``FOR UPDATE
SKIP LOCKED``. A row is not claimed while an earlier row of its key is held by another
live lease, so two relays never send one key's events side by side and per-key order
holds. Only the token holder deletes (``complete``) or frees (``release``) a row: a
relay whose lease expired and whose rows were claimed again deletes nothing
(``claim_conflicts``), it can only have sent duplicates, which the inbox absorbs.
Lease times come from the database's clock, so relays on different hosts agree.

SQLite. One relay at a time, enforced by a lock row with an expiry that the running
relay renews; a second one fails at start with a message saying who holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import TextClause, delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.codec import SPECVERSION, EncodedEvent
from hexbus.infrastructure.outbox.schema import OutboxTables

__all__ = [
    "Claim",
    "OutboxRow",
    "OutboxStore",
    "PostgresOutboxStore",
    "RowError",
    "SqliteOutboxStore",
    "open_store",
]

_REQUIRED = ("specversion", "id", "type", "source")
#: ``pg_advisory_xact_lock`` id serialising claims (``"hexbusrl"`` as an int64).
_CLAIM_LOCK = 0x6865786275737262 >> 1
_RELAY_LOCK_NAME = "relay"


class RowError(Exception):
    """An outbox row that cannot be read back as a CloudEvent (``reason``, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class OutboxRow(NamedTuple):
    """One row as the relay reads it (a tuple: one is built per event relayed)."""

    position: int
    event_id: str
    event_type: str
    key: str | None
    attributes: str
    data: str
    created_at: float
    attempts: int = 0

    def encoded(self) -> EncodedEvent:
        """The stored CloudEvent, or ``RowError`` when the row no longer reads as one."""
        try:
            attributes = json.loads(self.attributes)
        except ValueError as exc:
            raise RowError("malformed", f"attributes are not JSON: {exc}") from None
        # JSON object keys are strings already; the values must be too (they become
        # headers). ``type() is`` keeps this cheap: it runs for every row relayed.
        if type(attributes) is not dict or not all(
            type(value) is str for value in attributes.values()
        ):
            raise RowError("malformed", "attributes are not a JSON object of strings")
        missing = [name for name in _REQUIRED if not attributes.get(name)]
        if missing:
            raise RowError("malformed", f"required attribute(s) missing: {', '.join(missing)}")
        if attributes["specversion"] != SPECVERSION:
            raise RowError(
                "malformed", f"specversion {attributes['specversion']!r} is not {SPECVERSION}"
            )
        return EncodedEvent(attributes, self.data.encode(), self.key)


@dataclass(slots=True, frozen=True)
class Claim:
    token: str
    rows: list[OutboxRow]


_COLUMNS = ("position", "event_id", "event_type", "key", "attributes", "data", "created_at")


_row = OutboxRow._make


class OutboxStore:
    """What every store offers the relay."""

    dialect = ""
    #: Run first in the relay's deletions (PostgreSQL: no wait for the WAL flush).
    _no_flush: TextClause | None = None

    def __init__(self, engine: AsyncEngine, tables: OutboxTables) -> None:
        self.engine = engine
        self.tables = tables

    async def claim(self, limit: int, lease: float) -> Claim:
        raise NotImplementedError

    async def complete(self, claim: Claim) -> int:
        """Delete the rows ``claim`` still holds (all sent: the unreadable ones were moved
        to the dead letters already); how many were deleted."""
        table = self.tables.outbox
        async with self.engine.begin() as connection:
            if self._no_flush is not None:
                await connection.execute(self._no_flush)
            mine = table.c.claimed_by == claim.token
            result = await connection.execute(delete(table).where(mine))
        return int(result.rowcount or 0)

    async def release(self, claim: Claim) -> None:
        """Free what ``claim`` still holds (a failed send: the rows go out again later)."""
        table = self.tables.outbox
        async with self.engine.begin() as connection:
            await connection.execute(
                update(table)
                .where(table.c.claimed_by == claim.token)
                .values(claimed_by=None, lease_until=None)
            )

    async def dead_letter(self, claim: Claim, row: OutboxRow, error: RowError) -> bool:
        """Move ``row`` to the dead-letter table with the reason; ``False`` if no longer ours."""
        outbox, dead = self.tables.outbox, self.tables.dead_letters
        mine = (outbox.c.position == row.position) & (outbox.c.claimed_by == claim.token)
        async with self.engine.begin() as connection:
            source = select(
                outbox.c.position,
                outbox.c.event_id,
                outbox.c.event_type,
                outbox.c.key,
                outbox.c.attributes,
                outbox.c.data,
                outbox.c.created_at,
                literal(error.reason),
                literal(str(error)[:2000]),
                literal(time.time()),
            ).where(mine)
            await connection.execute(
                insert(dead).from_select(
                    [*_COLUMNS, "reason", "error", "failed_at"], source
                )
            )
            result = await connection.execute(delete(outbox).where(mine))
        return bool(result.rowcount)

    async def pending(self) -> tuple[int, float | None, int]:
        """(rows waiting, oldest ``created_at`` or ``None``, dead letters)."""
        outbox, dead = self.tables.outbox, self.tables.dead_letters
        async with self.engine.connect() as connection:
            count, oldest = (
                await connection.execute(
                    select(func.count(), func.min(outbox.c.created_at)).select_from(outbox)
                )
            ).one()
            dead_count = (
                await connection.execute(select(func.count()).select_from(dead))
            ).scalar_one()
        return int(count), (None if oldest is None else float(oldest)), int(dead_count)

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The outbox's dead letters, oldest first."""
        dead = self.tables.dead_letters
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(dead).order_by(dead.c.position).limit(limit)
            )
            return [dict(row._mapping) for row in result]

    async def vacuum(self) -> None:
        """Reclaim the rows the relay deleted (PostgreSQL); nothing elsewhere."""

    # -- one relay at a time (SQLite) -----------------------------------------------
    async def acquire(self, holder: str, ttl: float) -> None:
        """Become the relay (SQLite); nothing to do where relays share the outbox."""

    async def renew(self, holder: str, ttl: float) -> None:
        """Keep the relay lock (SQLite)."""

    async def give_up(self, holder: str) -> None:
        """Release the relay lock (SQLite)."""


class PostgresOutboxStore(OutboxStore):
    """Claims with ``FOR UPDATE SKIP LOCKED``, a lease and per-key exclusion."""

    dialect = "postgresql"

    def __init__(self, engine: AsyncEngine, tables: OutboxTables) -> None:
        super().__init__(engine, tables)
        quote = engine.dialect.identifier_preparer.quote
        table = quote(tables.outbox.name)
        # synchronous_commit off for the relay's own transactions (claims, deletions):
        # losing one in a database crash only means rows are sent again (at-least-once,
        # the inbox absorbs it), and not waiting for the WAL flush twice per batch is
        # what lets the relay keep up with the broker. The writer's INSERTs are the
        # caller's transaction and keep the caller's setting.
        self._lock = text(
            "SELECT pg_advisory_xact_lock(:lock), extract(epoch FROM clock_timestamp()),"
            " set_config('synchronous_commit', 'off', true)"
        )
        self._no_flush = text("SELECT set_config('synchronous_commit', 'off', true)")
        # ``= ANY(ARRAY(subquery))``, not ``UPDATE ... FROM (CTE)``: the table swings
        # between empty and a backlog, so its statistics are always stale, and a join
        # with the candidates was planned as a nested loop over the whole backlog
        # (265 ms for 5,000 rows instead of 2). An array compares by the primary key.
        self._claim = text(
            f"UPDATE {table} AS t SET claimed_by = :token, lease_until = :until,"
            " attempts = t.attempts + 1"
            " WHERE t.position = ANY(ARRAY("
            f"  SELECT o.position FROM {table} AS o"
            "  WHERE (o.lease_until IS NULL OR o.lease_until < :now)"
            # per row, not an anti-join: the scan walks the primary key in order and
            # stops at the limit, however long the backlog
            f"  AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM {table} AS e"
            "   WHERE e.key = o.key AND e.position < o.position AND e.lease_until >= :now))"
            "  ORDER BY o.position LIMIT :limit FOR UPDATE OF o SKIP LOCKED))"
            " RETURNING t.position, t.event_id, t.event_type, t.key, t.attributes, t.data,"
            " t.created_at, t.attempts"
        )

    async def claim(self, limit: int, lease: float) -> Claim:
        token = uuid.uuid4().hex
        async with self.engine.begin() as connection:
            now = float(
                (await connection.execute(self._lock, {"lock": _CLAIM_LOCK})).one()[1]
            )
            result = await connection.execute(
                self._claim,
                {"now": now, "limit": limit, "token": token, "until": now + lease},
            )
            rows = sorted((_row(r) for r in result), key=lambda r: r.position)
        return Claim(token, rows)

    async def vacuum(self) -> None:
        """``VACUUM`` the outbox table: every relayed row leaves two dead versions (the
        claim's and the deletion's) at the head of the primary key, which each claim's
        ordered scan walks over until they are reclaimed. Autovacuum's default pace
        (a minute) lets a busy relay pile up a million of them and slow its claims
        tenfold, so the relay asks for it itself every ``vacuum_every`` rows. Without
        ownership of the table PostgreSQL only warns and skips it."""
        name = self.engine.dialect.identifier_preparer.quote(self.tables.outbox.name)
        async with self.engine.connect() as connection:
            auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text(f"VACUUM {name}"))



class SqliteOutboxStore(OutboxStore):
    """One relay (a lock row); rows are marked with the relay's token like on PostgreSQL."""

    dialect = "sqlite"

    async def claim(self, limit: int, lease: float) -> Claim:
        table = self.tables.outbox
        token = uuid.uuid4().hex
        async with self.engine.begin() as connection:
            result = await connection.execute(
                select(*(table.c[name] for name in _COLUMNS), table.c.attempts)
                .where(table.c.claimed_by.is_(None) | (table.c.lease_until < time.time()))
                .order_by(table.c.position)
                .limit(limit)
            )
            rows = [_row(r) for r in result]
            if rows:
                await connection.execute(
                    update(table)
                    .where(table.c.position.in_([r.position for r in rows]))
                    .values(
                        claimed_by=token,
                        lease_until=time.time() + lease,
                        attempts=table.c.attempts + 1,
                    )
                )
        return Claim(token, rows)

    async def acquire(self, holder: str, ttl: float) -> None:
        lock = self.tables.relay_lock
        now = time.time()
        async with self.engine.begin() as connection:
            taken = await connection.execute(
                update(lock)
                .where(
                    lock.c.name == _RELAY_LOCK_NAME,
                    lock.c.holder.is_(None)
                    | (lock.c.holder == holder)
                    | (lock.c.expires_at < now),
                )
                .values(holder=holder, expires_at=now + ttl)
            )
            if taken.rowcount:
                await self._free_claims(connection)
                return
            current = (
                await connection.execute(
                    select(lock.c.holder, lock.c.expires_at).where(
                        lock.c.name == _RELAY_LOCK_NAME
                    )
                )
            ).first()
            if current is not None and _dead_here(current[0]):
                # Its process on this host is gone (killed): the lock is void now, not
                # when it expires, so a service restarted at once starts its relay.
                taken = await connection.execute(
                    update(lock)
                    .where(lock.c.name == _RELAY_LOCK_NAME, lock.c.holder == current[0])
                    .values(holder=holder, expires_at=now + ttl)
                )
                if taken.rowcount:
                    await self._free_claims(connection)
                    return
            if current is None:
                await connection.execute(
                    insert(lock).values(
                        name=_RELAY_LOCK_NAME, holder=holder, expires_at=now + ttl
                    )
                )
                await self._free_claims(connection)
                return
        raise ConfigurationError(
            f"another outbox relay ({current[0]}) is running on this SQLite outbox (its "
            f"lock expires in {max(0.0, current[1] - now):.0f}s unless renewed; a holder "
            "on this host whose process is gone is taken over at once): SQLite "
            "supports one relay at a time. Stop the other one (or set "
            "HEXBUS_OUTBOX_RELAY=false in all but one process), or use PostgreSQL for "
            "several relays"
        )

    async def _free_claims(self, connection: Any) -> None:
        """The lock holder is the only relay: claims left by a killed one are void."""
        table = self.tables.outbox
        await connection.execute(
            update(table)
            .where(table.c.claimed_by.is_not(None))
            .values(claimed_by=None, lease_until=None)
        )

    async def renew(self, holder: str, ttl: float) -> None:
        lock = self.tables.relay_lock
        async with self.engine.begin() as connection:
            renewed = await connection.execute(
                update(lock)
                .where(lock.c.name == _RELAY_LOCK_NAME, lock.c.holder == holder)
                .values(expires_at=time.time() + ttl)
            )
        if not renewed.rowcount:
            await self.acquire(holder, ttl)

    async def give_up(self, holder: str) -> None:
        lock = self.tables.relay_lock
        async with self.engine.begin() as connection:
            await connection.execute(
                update(lock)
                .where(lock.c.name == _RELAY_LOCK_NAME, lock.c.holder == holder)
                .values(holder=None, expires_at=None)
            )


def _dead_here(holder: str | None) -> bool:
    """Is ``holder`` (``host:pid:...``, a relay's name) a process of this host that no
    longer exists?"""
    if not holder:
        return False
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def open_store(engine: AsyncEngine, tables: OutboxTables) -> OutboxStore:
    """The store for ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        return PostgresOutboxStore(engine, tables)
    return SqliteOutboxStore(engine, tables)
