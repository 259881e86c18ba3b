"""Engines, table creation and DDL for the outbox database; the one place that turns the
database client's errors into ours.

Why one module: the URL comes from ``HEXBUS_OUTBOX_URL`` and may hold a password, so
every error that could quote it (connection refused, authentication failed, a missing
table) is built here, names the variable, and is masked before it is raised.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable

from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.outbox.schema import OutboxTables
from hexbus.infrastructure.settings import OUTBOX_DRIVERS, check_outbox_url, redact_url

__all__ = [
    "Dialect",
    "check_database",
    "create_tables",
    "ddl",
    "dialect_of",
    "mask_secret",
    "open_engine",
    "url_password",
]

Dialect = Literal["sqlite", "postgresql"]

_VARIABLE = "HEXBUS_OUTBOX_URL"


def dialect_of(engine_or_url: AsyncEngine | str) -> Dialect:
    """``"sqlite"`` or ``"postgresql"``; anything else is refused (``ConfigurationError``)."""
    name = (
        engine_or_url.dialect.name
        if isinstance(engine_or_url, AsyncEngine)
        else OUTBOX_DRIVERS.get(engine_or_url.split("://", 1)[0].lower(), "")
    )
    if name == "sqlite":
        return "sqlite"
    if name == "postgresql":
        return "postgresql"
    raise ConfigurationError(
        f"the outbox supports SQLite (aiosqlite) and PostgreSQL (asyncpg), not {name or '?'}"
    )


def url_password(url: str) -> str | None:
    with contextlib.suppress(ValueError):
        return urlsplit(url).password
    return None


def mask_secret(message: str, url: str | None) -> str:
    """``message`` with the URL's password (and the URL itself) masked."""
    if not url:
        return message
    message = message.replace(url, redact_url(url))
    password = url_password(url)
    if password:
        message = message.replace(password, "***")
    return message


def open_engine(url: str, *, variable: str = _VARIABLE, **options: Any) -> AsyncEngine:
    """An ``AsyncEngine`` for the outbox database at ``url``.

    SQLite: WAL journal (the relay reads while the service writes) and a 30 s busy
    timeout (writers queue instead of failing with "database is locked"). PostgreSQL:
    pre-ping, so a database restart costs one reconnect, not an error.
    """
    try:
        check_outbox_url(url)
    except ValueError as exc:
        raise ConfigurationError(f"{variable}={redact_url(url)!r}: {exc}") from None
    dialect = dialect_of(url)
    try:
        if dialect == "sqlite":
            engine = create_async_engine(url, connect_args={"timeout": 30.0}, **options)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, pool_pre_ping=True, **options)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigurationError(
            f"{variable}={redact_url(url)!r} cannot be used: "
            f"{mask_secret(f'{type(exc).__name__}: {exc}', url)}"
            + (
                "; install the extra: pip install 'hexbus[postgres]'"
                if isinstance(exc, ImportError)
                else ""
            )
        ) from None
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def engine_url(engine: AsyncEngine) -> str:
    """The engine's URL with the password in it (only for masking)."""
    return engine.url.render_as_string(hide_password=False)


async def check_database(engine: AsyncEngine, *, variable: str = _VARIABLE) -> None:
    """Connect once: a wrong host, port, password or database fails here, at start-up,
    with a message naming ``variable`` (password masked), not at the first publish."""
    url = engine_url(engine)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        detail = getattr(exc, "orig", None) or exc
        raise ConfigurationError(
            f"the outbox database at {variable}={redact_url(url)!r} cannot be reached: "
            f"{mask_secret(f'{type(detail).__name__}: {detail}', url)}; check the host, "
            "port, user, password and database name in the URL"
        ) from None


async def create_tables(engine: AsyncEngine, tables: OutboxTables) -> None:
    """Create the hexbus tables that are missing (existing ones are left alone)."""
    url = engine_url(engine)
    wanted = [tables.outbox, tables.dead_letters, tables.inbox, tables.relay_lock]
    try:
        async with engine.begin() as connection:
            await connection.run_sync(
                lambda sync: tables.metadata.create_all(sync, tables=wanted, checkfirst=True)
            )
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise ConfigurationError(
            f"could not create the outbox tables in {redact_url(url)}: "
            f"{mask_secret(f'{type(detail).__name__}: {detail}', url)}; create them with "
            "`hexbus outbox ddl` (and your migration tool) and set "
            "HEXBUS_OUTBOX_CREATE_TABLES=false"
        ) from None


def ddl(tables: OutboxTables, dialect: Dialect) -> str:
    """The ``CREATE TABLE`` / ``CREATE INDEX`` statements for ``dialect``, ``;``-ended."""
    target: Any = sqlite.dialect() if dialect == "sqlite" else postgresql.dialect()  # type: ignore[no-untyped-call]
    statements: list[str] = []
    for table in (tables.outbox, tables.dead_letters, tables.inbox, tables.relay_lock):
        statements.append(str(CreateTable(table).compile(dialect=target)).strip())
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            statements.append(str(CreateIndex(index).compile(dialect=target)).strip())
    return "\n\n".join(f"{statement};" for statement in statements) + "\n"
