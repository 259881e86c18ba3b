"""The outbox, outbox dead-letter and inbox tables, as SQLAlchemy Core.

Why Core tables on a ``MetaData`` the caller may hand in: a service that manages its
schema with Alembic adds hexbus's tables to its own metadata (``outbox_tables(Base.
metadata)``) and autogenerate writes the migration; everyone else lets the container
create them (``HEXBUS_OUTBOX_CREATE_TABLES``) or prints the DDL (``hexbus outbox ddl``).

``hexbus_outbox`` — one row per event written by ``publish(..., session=s)``:

==============  =========================================================================
``position``    identity, the order rows leave in; per key it is commit order (the
                writer takes a per-key transaction lock on PostgreSQL, SQLite has one
                writer at a time), see ADR 0004
``event_id``    the CloudEvents ``id`` (for logs, dead letters, the inbox on the far side)
``event_type``  the CloudEvents ``type``
``key``         the publish key (``NULL``: none; unkeyed rows have no order among them)
``attributes``  the CloudEvents attributes as a JSON object of strings (``traceparent``
                included): the event is stored encoded, the relay never re-encodes it
``data``        the JSON body, exactly as it will be sent
``created_at``  epoch seconds when written (the relay-lag figure)
``claimed_by``  SQLite: the claim token of the relay holding the row (``NULL``: free);
                PostgreSQL claims by locking the row and leaves it ``NULL``
``lease_until`` SQLite: epoch seconds after which the claim is void
``attempts``    SQLite: claims so far (a row sent more than once shows here)
==============  =========================================================================

``hexbus_outbox_dead_letters`` keeps rows the relay could not read back (``reason``,
``error``); ``hexbus_inbox`` has one row per (subscription, source, event id) handled,
deleted after the retention period; ``hexbus_outbox_relay_lock`` is the SQLite relay's
single-holder lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

__all__ = ["DEFAULT_PREFIX", "OutboxTables", "outbox_tables"]

DEFAULT_PREFIX = "hexbus_"

#: BIGINT identity on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
_Position = BigInteger().with_variant(Integer(), "sqlite")


def _event_columns() -> list[Column[Any]]:
    """The stored event: the same columns in the outbox and its dead letters, so a row
    moves from one to the other as it is (new ``Column`` objects: one per table)."""
    return [
        Column("event_id", String(255), nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("key", String(255), nullable=True),
        Column("attributes", Text, nullable=False),
        Column("data", Text, nullable=False),
        Column("created_at", Float, nullable=False),
    ]


@dataclass(frozen=True, slots=True)
class OutboxTables:
    """The four tables, on one ``MetaData``."""

    metadata: MetaData
    outbox: Table
    dead_letters: Table
    inbox: Table
    relay_lock: Table


def outbox_tables(
    metadata: MetaData | None = None, *, prefix: str = DEFAULT_PREFIX
) -> OutboxTables:
    """Define the tables on ``metadata`` (a new one by default); names start with ``prefix``.

    Calling it twice on one ``MetaData`` returns the tables already defined there.
    """
    metadata = metadata if metadata is not None else MetaData()
    name = f"{prefix}outbox"
    if name in metadata.tables:
        return OutboxTables(
            metadata,
            metadata.tables[name],
            metadata.tables[f"{prefix}outbox_dead_letters"],
            metadata.tables[f"{prefix}inbox"],
            metadata.tables[f"{prefix}outbox_relay_lock"],
        )
    outbox = Table(
        name,
        metadata,
        Column("position", _Position, primary_key=True, autoincrement=True),
        *_event_columns(),
        # SQLite's claim marks (PostgreSQL claims rows by locking them: store.py).
        Column("claimed_by", String(64), nullable=True),
        Column("lease_until", Float, nullable=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        # The claim's check that no earlier row of a key is left behind walks this index;
        # partial, so the planner never mistakes it for a way to read rows in order.
        Index(
            f"{prefix}outbox_key_position",
            "key",
            "position",
            postgresql_where=text("key IS NOT NULL"),
            sqlite_where=text("key IS NOT NULL"),
        ),
        # PostgreSQL: autovacuum as soon as a thousand rows were relayed (the relay also
        # asks for a VACUUM itself; claims only lock rows, they never rewrite them).
        postgresql_with={
            "autovacuum_vacuum_scale_factor": "0",
            "autovacuum_vacuum_threshold": "1000",
        },
    )
    dead_letters = Table(
        f"{prefix}outbox_dead_letters",
        metadata,
        Column("position", _Position, primary_key=True, autoincrement=False),
        *_event_columns(),
        Column("reason", String(64), nullable=False),
        Column("error", Text, nullable=False),
        Column("failed_at", Float, nullable=False),
    )
    inbox = Table(
        f"{prefix}inbox",
        metadata,
        Column("subscription", String(255), nullable=False),
        Column("source", String(255), nullable=False),
        Column("event_id", String(255), nullable=False),
        Column("received_at", Float, nullable=False),
        PrimaryKeyConstraint("subscription", "source", "event_id"),
        Index(f"{prefix}inbox_received_at", "received_at"),
    )
    relay_lock = Table(
        f"{prefix}outbox_relay_lock",
        metadata,
        Column("name", String(64), primary_key=True),
        Column("holder", String(255), nullable=True),
        Column("expires_at", Float, nullable=True),
    )
    return OutboxTables(metadata, outbox, dead_letters, inbox, relay_lock)
