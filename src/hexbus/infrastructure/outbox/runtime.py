"""``Outbox``: the database, the writer, the inbox and the relay of one service, together.

Why one object: the container builds it from ``HEXBUS_OUTBOX_URL`` (or from an engine
the application already has), attaches the writer and the inbox to the bus, and starts
and drains the relay with the bus; ``hexbus relay`` builds the same object and runs only
the relay. Everything that needs the database goes through here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.outbox.database import (
    check_database,
    create_tables,
    ddl,
    dialect_of,
    open_engine,
)
from hexbus.infrastructure.outbox.inbox import SqlInbox
from hexbus.infrastructure.outbox.relay import EncodedSender, OutboxRelay
from hexbus.infrastructure.outbox.schema import DEFAULT_PREFIX, OutboxTables, outbox_tables
from hexbus.infrastructure.outbox.store import OutboxStore, open_store
from hexbus.infrastructure.outbox.writer import SqlOutboxWriter

if TYPE_CHECKING:
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["Outbox"]

logger = logging.getLogger("hexbus.outbox")


class Outbox:
    """The outbox/inbox database of one service and what works on it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        service_name: str = "hexbus",
        metadata: MetaData | None = None,
        prefix: str = DEFAULT_PREFIX,
        batch_size: int = 500,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        create: bool = True,
        inbox_retention: float = 7 * 24 * 3600.0,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        owns_engine: bool = False,
    ) -> None:
        dialect_of(engine)  # SQLite or PostgreSQL, else ConfigurationError
        self.engine = engine
        self.tables: OutboxTables = outbox_tables(metadata, prefix=prefix)
        self.writer = SqlOutboxWriter(self.tables, CloudEventCodec(source=service_name))
        self.inbox = SqlInbox(
            engine, self.tables, retention=inbox_retention, sessions=sessions
        )
        self.store: OutboxStore = open_store(engine, self.tables)
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.create = create
        self._owns_engine = owns_engine
        #: ``async with outbox.sessions() as s`` gives a session on the outbox database.
        self.sessions = self.inbox.sessions

    @classmethod
    def from_settings(
        cls, settings: HexbusSettings, *, engine: AsyncEngine | None = None, **options: Any
    ) -> Outbox | None:
        """The outbox of ``HEXBUS_OUTBOX_URL`` (or on ``engine``); ``None`` when unset."""
        owns = engine is None
        if engine is None:
            if not settings.outbox_url:
                return None
            engine = open_engine(settings.outbox_url)
        values: dict[str, Any] = {
            "service_name": settings.service_name,
            "batch_size": settings.outbox_batch_size,
            "lease": settings.outbox_lease,
            "poll_interval": settings.outbox_poll_interval,
            "create": settings.outbox_create_tables,
            "inbox_retention": settings.inbox_retention,
            "owns_engine": owns,
        }
        values.update(options)
        return cls(engine, **values)

    async def check(self) -> None:
        """Connect once: a wrong URL fails here, naming the variable, password masked."""
        await check_database(self.engine)

    async def has_tables(self) -> bool:
        """Does the database have the outbox table (created, or migrated in)?"""
        name = self.tables.outbox.name
        async with self.engine.connect() as connection:
            found: bool = await connection.run_sync(lambda sync: inspect(sync).has_table(name))
        return found

    async def open(self) -> None:
        """Connect once (a wrong URL fails here, naming the variable) and create the
        tables that are missing (unless ``create`` is off)."""
        await check_database(self.engine)
        if self.create:
            await create_tables(self.engine, self.tables)

    def attach(self, bus: Any) -> None:
        """Give ``bus`` the writer (``publish(..., session=s)``) and the inbox."""
        bus.use_outbox(self.writer)
        bus.use_inbox(self.inbox)

    def relay(self, sender: EncodedSender, *, name: str | None = None) -> OutboxRelay:
        """A relay sending this outbox through ``sender`` (a started bus)."""
        return OutboxRelay(
            self.store,
            sender,
            batch_size=self.batch_size,
            lease=self.lease,
            poll_interval=self.poll_interval,
            writer=self.writer,
            name=name,
        )

    def ddl(self) -> str:
        """The DDL of the tables for this database."""
        return ddl(self.tables, dialect_of(self.engine))

    async def close(self) -> None:
        """Dispose of the engine if this object created it."""
        await self.inbox.stop_cleanup()
        await self.store.close()
        if self._owns_engine:
            await self.engine.dispose()
