"""The database fixtures against a real PostgreSQL (hexbus.testing.brokers / .databases).

Why these matter: the outbox and inbox tests trust these fixtures to hand them a server
that answers on 127.0.0.1 and a database no other test writes to. A fixture that
shared one database between tests would let one test's rows satisfy another's
assertions; one that leaked its databases would fill the server run after run.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from hexbus.testing.brokers import broker_source
from hexbus.testing.databases import asyncpg_dsn, fresh_postgres_database


async def test_postgres_url_answers_on_loopback(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    assert parts.scheme == "postgresql+asyncpg"
    assert parts.hostname == "127.0.0.1"
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "hexbus"
        # The fixtures create a database per test with this role.
        assert await conn.fetchval(
            "select rolcreatedb or rolsuper from pg_roles where rolname = current_user"
        )
    finally:
        await conn.close()
    source = broker_source("postgres")
    assert source is not None and source.path in ("environment", "container", "native")


async def _databases(admin_url: str) -> set[str]:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        return {r["datname"] for r in await conn.fetch("select datname from pg_database")}
    finally:
        await conn.close()


async def test_a_fresh_database_is_empty_and_dropped_afterwards(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url:
        name = urlsplit(url).path.lstrip("/")
        assert name.startswith("t_") and name in await _databases(postgres_url)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            assert await conn.fetchval("select current_database()") == name
            tables = await conn.fetchval(
                "select count(*) from information_schema.tables where table_schema = 'public'"
            )
            assert tables == 0
            await conn.execute("create table kept_open (id int)")
        finally:
            # an open connection at the end must not keep the database alive
            leaked = await asyncpg.connect(asyncpg_dsn(url))
            await conn.close()
    assert name not in await _databases(postgres_url)
    assert leaked.is_closed() or await _is_terminated(leaked)


async def _is_terminated(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("select 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError):
        return True
    finally:
        await conn.close()
    return False


@pytest.mark.parametrize("round_", [1, 2])
async def test_each_test_gets_a_database_of_its_own(database_url: str, round_: int) -> None:
    """Run twice per store: the second CREATE TABLE would fail on a shared database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("select 1"))).scalar() == 1
            await conn.execute(text("create table only_mine (round int)"))
            await conn.execute(text("insert into only_mine values (:r)"), {"r": round_})
            rows = (await conn.execute(text("select round from only_mine"))).scalars().all()
            assert rows == [round_]
    finally:
        await engine.dispose()
