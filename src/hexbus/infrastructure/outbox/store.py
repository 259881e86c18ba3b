"""The relay's side of the outbox table: claim, complete, release, dead-letter, count.

Why two stores: PostgreSQL lets several relays share one outbox, SQLite allows one.

PostgreSQL. A claim is a transaction that stays open until its rows are deleted: it
locks up to ``limit`` rows, oldest first, ``FOR UPDATE SKIP LOCKED`` (another relay's
claim skips them), and for a keyed row first the key's transaction-scoped advisory
lock, so a key's later rows wait while another relay holds earlier ones and per-key
order holds. Sent rows are deleted and the transaction commits; a failed send commits
without deleting, which frees them. The lease is the transaction's
``idle_in_transaction_session_timeout``: a relay that stalls longer loses its session,
its locks and so its rows, and its deletion then fails instead of touching rows another
relay holds (``claim_conflicts``); it can only have sent duplicates, which the inbox
absorbs. Nothing is written to claim a row, so the database does a row lock and a
deletion per event relayed, not a row rewrite as well.

SQLite. One relay at a time, enforced by a lock row with an expiry that the running
relay renews; a second one fails at start with a message saying who holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

from pydantic_core import from_json
from sqlalchemy import delete, func, insert, literal, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
_STRINGS = {str}
#: First half of the relay's per-key advisory lock ids (``"hxrk"``); the second is the
#: key's ``hashtext``.
_KEY_LOCK_SPACE = 0x6878726B
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

    def encoded(self) -> EncodedEvent:
        """The stored CloudEvent, or ``RowError`` when the row no longer reads as one.

        Runs for every row relayed: a well-formed row passes a few C-level checks (a
        JSON object whose values are all strings, the required attributes present, the
        spec version ours); only a row that fails them is examined for the message.
        """
        try:
            attributes = from_json(self.attributes)
        except ValueError as exc:
            raise RowError("malformed", f"attributes are not JSON: {exc}") from None
        try:
            if (
                attributes["specversion"] == SPECVERSION
                and attributes["id"]
                and attributes["type"]
                and attributes["source"]
                and {*map(type, attributes.values())} == _STRINGS
            ):
                return EncodedEvent(attributes, self.data.encode(), self.key)
        except (KeyError, TypeError):
            pass
        raise _malformed(attributes)


def _malformed(attributes: Any) -> RowError:
    """Why ``attributes`` (parsed from a row) is not a CloudEvent's."""
    # JSON object keys are strings already; the values must be too (they become headers).
    if type(attributes) is not dict or not all(
        type(value) is str for value in attributes.values()
    ):
        return RowError("malformed", "attributes are not a JSON object of strings")
    missing = [name for name in _REQUIRED if not attributes.get(name)]
    if missing:
        return RowError("malformed", f"required attribute(s) missing: {', '.join(missing)}")
    return RowError(
        "malformed", f"specversion {attributes['specversion']!r} is not {SPECVERSION}"
    )


@dataclass(slots=True, frozen=True)
class Claim:
    """Rows one relay holds until it completes or releases them."""

    token: str
    rows: list[OutboxRow]
    #: PostgreSQL: the open transaction holding the rows' locks.
    hold: _Hold | None = None


_COLUMNS = ("position", "event_id", "event_type", "key", "attributes", "data", "created_at")


_row = OutboxRow._make
_position = attrgetter("position")


class OutboxStore:
    """What every store offers the relay."""

    dialect = ""

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
                insert(dead).from_select([*_COLUMNS, "reason", "error", "failed_at"], source)
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

    async def any_pending(self) -> bool:
        """Is any row waiting (claimed or not)? Cheaper than ``pending``'s count."""
        outbox = self.tables.outbox
        async with self.engine.connect() as connection:
            found = await connection.execute(select(outbox.c.position).limit(1))
            return found.first() is not None

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

    async def close(self) -> None:
        """Give back what the store holds between claims (PostgreSQL: connections)."""

    # -- one relay at a time (SQLite) -----------------------------------------------
    async def acquire(self, holder: str, ttl: float) -> None:
        """Become the relay (SQLite); nothing to do where relays share the outbox."""

    async def renew(self, holder: str, ttl: float) -> None:
        """Keep the relay lock (SQLite)."""

    async def give_up(self, holder: str) -> None:
        """Release the relay lock (SQLite)."""


@dataclass(slots=True)
class _Hold:
    """A PostgreSQL claim's open transaction: the pool connection and its asyncpg driver
    connection, on which the claim ran ``BEGIN`` (plain statements: asyncpg sends a
    parameterless ``execute`` as one simple query, so ``BEGIN`` + settings and
    ``DELETE`` + ``COMMIT`` are one round trip each)."""

    connection: AsyncConnection
    driver: Any
    #: Where the connection goes after a clean end (the store keeps it for the next claim).
    keep: Callable[[AsyncConnection], Awaitable[None]]
    #: Rows moved to the dead letters in this transaction (not deleted by ``end``).
    moved: int = 0

    async def end(self, statement: str = "") -> None:
        """Run ``statement`` (if any) and commit, in one round trip, and give the
        connection back; a connection that failed is discarded, never pooled with a
        transaction open."""
        try:
            await self.driver.execute(f"{statement}; COMMIT" if statement else "COMMIT")
        except BaseException:
            await self.discard()
            raise
        await self.keep(self.connection)

    async def discard(self) -> None:
        await _discard(self.connection)


async def _discard(connection: AsyncConnection) -> None:
    """Close ``connection`` for good (not back to the pool: its state is unknown)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(connection.invalidate())
    with contextlib.suppress(Exception):
        await asyncio.shield(connection.close())


class PostgresOutboxStore(OutboxStore):
    """Claims are row locks (``FOR UPDATE SKIP LOCKED``) held by an open transaction whose
    lease is PostgreSQL's ``idle_in_transaction_session_timeout``; per-key exclusion by
    transaction-scoped advisory locks.

    The claim, deletion and dead-letter statements run on the pool connection's asyncpg
    connection itself: the relay handles every event it sends here, and SQLAlchemy's
    result layer would cost it more than the database does.
    """

    dialect = "postgresql"
    #: Connections kept between claims (a claim ahead and one in hand): taking one from
    #: the pool costs a pre-ping, three round trips, per batch.
    keep_connections = 2

    def __init__(self, engine: AsyncEngine, tables: OutboxTables) -> None:
        super().__init__(engine, tables)
        self._idle: list[AsyncConnection] = []
        if engine.dialect.driver != "asyncpg":
            raise ConfigurationError(
                f"the outbox relay on PostgreSQL needs the asyncpg driver, not "
                f"{engine.dialect.driver!r}: build the engine from a postgresql+asyncpg:// "
                "URL (pip install 'hexbus[postgres]')"
            )
        # Imported here: SQLite users need not have it (it is the [postgres] extra).
        import asyncpg  # noqa: PLC0415

        self._errors: tuple[type[BaseException], ...] = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            # what asyncpg raises on a session the server ended while it sat idle
            asyncpg.InternalClientError,
            OSError,
            SQLAlchemyError,
        )
        quote = engine.dialect.identifier_preparer.quote
        table = quote(tables.outbox.name)
        dead = quote(tables.dead_letters.name)
        # The claim's transaction settings, in one round trip:
        # - the lease: PostgreSQL ends a session idle in its transaction for longer
        #   (the relay is waiting for the broker), which releases the row and key locks
        #   so another relay claims the rows; the stalled relay's deletion then fails on
        #   its dead connection: it cannot delete rows another relay holds.
        # - synchronous_commit off: losing a deletion in a database crash only means rows
        #   are sent again (at-least-once, the inbox absorbs it), and not waiting for the
        #   WAL flush is what lets the relay keep up with the broker. The writer's INSERTs
        #   are the caller's transaction and keep the caller's setting.
        # - no sort, no sequential scan: the claim must read the primary key in order,
        #   one row at a time, so the advisory locks below are taken only for the rows
        #   claimed (a sort would evaluate the filter, and take a lock, for every row).
        # - no JIT: the disabled plans' costs would make PostgreSQL compile the claim
        #   (~0.3 s) every time.
        self._begin = (
            "BEGIN; SELECT set_config('idle_in_transaction_session_timeout', '{lease}ms',"
            " true), set_config('synchronous_commit', 'off', true),"
            " set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true),"
            " set_config('jit', 'off', true)"
        )
        # A claim takes, oldest first, rows no other transaction has locked, and a keyed
        # row only if this transaction holds its key's advisory lock (re-entrant, so a
        # claim takes several rows of a key; held until the rows are deleted). Another
        # relay that holds rows of a key holds its lock, so later rows of that key wait:
        # two relays never send one key's events side by side, and per-key order holds.
        # The lock is tried before the row is locked, so no row is ever held unclaimed.
        # Two-int4 advisory ids never collide with the writer's one-int8 ids.
        # Belt and braces for per-key order: a key whose rows in this claim are not all
        # of its rows up to the claim's last one (an earlier row exists that this claim
        # did not take, whoever holds it) is held back: its rows stay locked until the
        # claim ends, are neither sent nor deleted, and go out in a later claim. The
        # count walks the key index from the key's first row, once per key claimed.
        self._claim = (
            "WITH c AS MATERIALIZED (SELECT o.position, o.event_id, o.event_type, o.key,"
            f" o.attributes, o.data, o.created_at FROM {table} AS o"
            " WHERE o.key IS NULL OR pg_try_advisory_xact_lock($1, hashtext(o.key))"
            " ORDER BY o.position LIMIT $2 FOR UPDATE OF o SKIP LOCKED),"
            " g AS (SELECT key, count(*) AS n, max(position) AS last FROM c"
            " WHERE key IS NOT NULL GROUP BY key),"
            f" b AS (SELECT g.key FROM g WHERE (SELECT count(*) FROM {table} AS e"
            " WHERE e.key = g.key AND e.position <= g.last) > g.n)"
            " SELECT c.* FROM c WHERE c.key IS NULL OR c.key NOT IN (SELECT key FROM b)"
        )
        self._any = f"SELECT position FROM {table} LIMIT 1"
        self._delete = f"DELETE FROM {table} WHERE position = ANY('{{{{{{}}}}}}'::bigint[])"
        columns = ", ".join(quote(name) for name in _COLUMNS)
        self._dead_letter = (
            f"WITH moved AS (DELETE FROM {table} WHERE position = $1 RETURNING {columns})"
            f" INSERT INTO {dead} ({columns}, reason, error, failed_at)"
            f" SELECT {columns}, $2, $3, $4 FROM moved"
        )

    async def _checkout(self) -> tuple[AsyncConnection, Any]:
        """A connection kept between claims, else one from the pool, with its asyncpg
        connection."""
        connection = self._idle.pop() if self._idle else await self.engine.connect()
        try:
            return connection, (await connection.get_raw_connection()).driver_connection
        except BaseException:
            await _discard(connection)
            raise

    async def claim(self, limit: int, lease: float) -> Claim:
        token = uuid.uuid4().hex
        connection, driver = await self._checkout()
        hold = _Hold(connection, driver, self._keep)
        try:
            await driver.execute(self._begin.format(lease=max(1, round(lease * 1000))))
            rows = [_row(r) for r in await driver.fetch(self._claim, _KEY_LOCK_SPACE, limit)]
            rows.sort(key=_position)  # in order already (the claim's scan): a linear check
        except BaseException:
            await hold.discard()
            raise
        if not rows:
            await hold.end()
            return Claim(token, rows)
        return Claim(token, rows, hold)

    async def complete(self, claim: Claim) -> int:
        """Delete the claim's rows and end its transaction (their locks go with it); how
        many were deleted: every row not moved to the dead letters (they were locked by
        this transaction, nobody else could touch them), or 0 when the hold ended before
        (the lease ran out, the connection was lost): the rows are free again and will be
        sent again."""
        hold = claim.hold
        if hold is None:
            return 0
        positions = ",".join(str(int(row.position)) for row in claim.rows)
        try:
            await hold.end(self._delete.format(positions))
        except self._errors:
            return 0
        return len(claim.rows) - hold.moved

    async def any_pending(self) -> bool:
        """On a connection kept between claims when there is one (no pool pre-ping)."""
        connection, driver = await self._checkout()
        try:
            found = await driver.fetchval(self._any)
        except BaseException:
            await _discard(connection)
            raise
        await self._keep(connection)
        return found is not None

    async def _keep(self, connection: AsyncConnection) -> None:
        if len(self._idle) < self.keep_connections:
            self._idle.append(connection)
        else:
            await connection.close()

    async def close(self) -> None:
        """Give the connections kept between claims back to the pool."""
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.close()

    async def release(self, claim: Claim) -> None:
        """End the claim's transaction without deleting: the rows (and their keys) are free
        again; rows moved to the dead letters meanwhile stay moved."""
        if claim.hold is not None:
            await claim.hold.end()

    async def dead_letter(self, claim: Claim, row: OutboxRow, error: RowError) -> bool:
        """Move ``row`` in the claim's own transaction (it holds the row's lock)."""
        if claim.hold is None:
            return False
        status = await claim.hold.driver.execute(
            self._dead_letter, row.position, error.reason, str(error)[:2000], time.time()
        )
        moved = _count(status)
        claim.hold.moved += moved
        return moved > 0

    async def vacuum(self) -> None:
        """``VACUUM`` the outbox table: every relayed row leaves a dead version at the
        head of the primary key, which each claim's ordered scan walks over until it is
        reclaimed. Autovacuum's default pace (a minute) lets a busy relay pile up a
        million of them and slow its claims tenfold, so the relay asks for it itself
        every ``vacuum_every`` rows. Without ownership of the table PostgreSQL only warns
        and skips it."""
        name = self.engine.dialect.identifier_preparer.quote(self.tables.outbox.name)
        async with self.engine.connect() as connection:
            auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text(f"VACUUM {name}"))


def _count(status: str | None) -> int:
    """The row count of a command status (``"DELETE 500"``, ``"INSERT 0 1"``)."""
    tail = (status or "").rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


class SqliteOutboxStore(OutboxStore):
    """One relay (a lock row); rows are marked with the relay's token like on PostgreSQL."""

    dialect = "sqlite"

    async def claim(self, limit: int, lease: float) -> Claim:
        table = self.tables.outbox
        token = uuid.uuid4().hex
        async with self.engine.begin() as connection:
            result = await connection.execute(
                select(*(table.c[name] for name in _COLUMNS))
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
