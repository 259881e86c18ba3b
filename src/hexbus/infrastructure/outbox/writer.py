"""Writing events into the caller's transaction: the outbox half of ``publish``.

Why encode here and not in the relay: the row holds exactly what will be on the wire
(the CloudEvents attributes, trace context included, and the JSON body), so the relay
is a pure transport, an event reads the same in the database as on the broker, and a
class renamed between write and relay cannot change what was promised.

Order: rows leave the outbox by ``position``. For one key that must be commit order, so
on PostgreSQL the writer first takes a transaction-scoped advisory lock per key: a
second transaction writing the same key waits until the first commits or rolls back,
and its rows get later positions (eventsourcing's "non-interleaving" rule, per key
instead of per table; transactions on other keys do not wait). SQLite has one writer
at a time, which gives the same order for every row. The same statement sends a
``NOTIFY`` (delivered on commit, dropped on rollback) that wakes relays elsewhere; a
relay in this process is woken by the session's commit itself.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event, insert, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from hexbus.application.publishing import Admitted
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.outbox.schema import OutboxTables

__all__ = ["NOTIFY_CHANNEL", "SqlOutboxWriter", "key_lock_seed"]

#: The PostgreSQL channel relays LISTEN on.
NOTIFY_CHANNEL = "hexbus_outbox"

#: Seed of ``hashtextextended``: keeps hexbus's advisory lock ids apart from others'.
key_lock_seed = 0x68657862  # "hexb"

_SESSION_HOOK = "hexbus_outbox_commit_hook"

_LOCK_AND_NOTIFY = text(
    "SELECT pg_notify(:channel, ''), "
    "(SELECT count(pg_advisory_xact_lock(hashtextextended(k, :seed))) "
    "FROM unnest(CAST(:keys AS text[])) AS k)"
)
_NOTIFY = text("SELECT pg_notify(:channel, '')")


class SqlOutboxWriter:
    """``OutboxWriter`` over SQLAlchemy: one multi-row INSERT into the caller's session."""

    def __init__(self, tables: OutboxTables, codec: CloudEventCodec) -> None:
        self.tables = tables
        self.codec = codec
        self._statement = insert(tables.outbox)
        self._wakers: weakref.WeakSet[_Waker] = weakref.WeakSet()
        #: Rows written (not necessarily committed) by this process.
        self.written = 0

    def on_commit(self, wake: Callable[[], None]) -> _Waker:
        """Call ``wake`` after a session this writer wrote to commits (in-process relays).

        Keep the returned handle: the writer holds it weakly.
        """
        waker = _Waker(wake)
        self._wakers.add(waker)
        return waker

    def rows(self, items: Sequence[Admitted]) -> list[dict[str, Any]]:
        """The outbox rows of ``items``: the encoded CloudEvent plus the key."""
        encode = self.codec.encode
        now = time.time()
        rows: list[dict[str, Any]] = []
        for item in items:
            attributes, body = encode(item.event, item.metadata or None)
            rows.append(
                {
                    "event_id": attributes["id"],
                    "event_type": attributes["type"],
                    "key": item.key,
                    "attributes": json.dumps(attributes, separators=(",", ":")),
                    "data": body.decode(),
                    "created_at": now,
                }
            )
        return rows

    async def write(self, session: Any, items: Sequence[Admitted]) -> None:
        """Add ``items`` to the outbox in ``session``'s transaction; the caller commits."""
        if not items:
            return
        if not callable(getattr(session, "execute", None)):
            raise TypeError(
                "publish(..., session=...) with the outbox takes a SQLAlchemy AsyncSession "
                f"(or AsyncConnection), got {type(session).__name__}"
            )
        rows = self.rows(items)
        try:
            if _dialect(session) == "postgresql":
                keys = sorted({row["key"] for row in rows if row["key"] is not None})
                if keys:
                    params = {"channel": NOTIFY_CHANNEL, "seed": key_lock_seed, "keys": keys}
                    await session.execute(_LOCK_AND_NOTIFY, params)
                else:
                    await session.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL})
            await session.execute(self._statement, rows)
        except (OperationalError, ProgrammingError) as exc:
            if _missing_table(exc):
                raise ConfigurationError(
                    f"the outbox table {self.tables.outbox.name!r} does not exist in the "
                    "database of this session: is the session bound to the outbox database "
                    "(HEXBUS_OUTBOX_URL)? Create the tables with HEXBUS_OUTBOX_CREATE_TABLES="
                    "true (the default) or `hexbus outbox create`"
                ) from None
            raise
        self.written += len(rows)
        self._hook(session)

    def _hook(self, session: Any) -> None:
        """Wake in-process relays when ``session`` commits (once per session)."""
        sync_session = getattr(session, "sync_session", None)
        info = getattr(session, "info", None)
        if sync_session is None or info is None or info.get(_SESSION_HOOK):
            return
        info[_SESSION_HOOK] = True
        wakers = self._wakers

        def committed(_session: Any) -> None:
            for waker in list(wakers):
                waker.wake()

        event.listen(sync_session, "after_commit", committed)


class _Waker:
    __slots__ = ("__weakref__", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake


def _dialect(session: Any) -> str:
    bind = getattr(session, "bind", None)
    if bind is None:
        bind = session.get_bind()
    return str(bind.dialect.name)


def _missing_table(exc: Exception) -> bool:
    text_ = str(getattr(exc, "orig", exc)).lower()
    return "no such table" in text_ or ("does not exist" in text_ and "relation" in text_)
