"""The transactional outbox, its relay and the idempotent inbox (SQLAlchemy async).

Requires the ``[outbox]`` extra (SQLite through aiosqlite); ``[postgres]`` adds asyncpg.
See docs/architecture/adr-0004-outbox.md for the design: schema, claims and leases, the
ordering rule, retention.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    from hexbus.domain.errors import ConfigurationError

    raise ConfigurationError(
        "the outbox needs SQLAlchemy: pip install 'hexbus[outbox]' (SQLite) or "
        "'hexbus[postgres]' (PostgreSQL)"
    ) from exc

from hexbus.infrastructure.outbox.database import check_database, create_tables, open_engine
from hexbus.infrastructure.outbox.inbox import InboxStats, SqlInbox
from hexbus.infrastructure.outbox.relay import EncodedSender, OutboxRelay, OutboxStats, RelayStats
from hexbus.infrastructure.outbox.runtime import Outbox
from hexbus.infrastructure.outbox.schema import OutboxTables, outbox_tables
from hexbus.infrastructure.outbox.store import OutboxStore
from hexbus.infrastructure.outbox.writer import NOTIFY_CHANNEL, SqlOutboxWriter

__all__ = [
    "NOTIFY_CHANNEL",
    "EncodedSender",
    "InboxStats",
    "Outbox",
    "OutboxRelay",
    "OutboxStats",
    "OutboxStore",
    "OutboxTables",
    "RelayStats",
    "SqlInbox",
    "SqlOutboxWriter",
    "check_database",
    "create_tables",
    "open_engine",
    "outbox_tables",
]
