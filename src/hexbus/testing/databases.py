"""Pytest fixtures giving each test a database of its own: SQLite files, PostgreSQL databases.

For the transactional outbox and inbox, whose tests must run on both stores:

- ``sqlite_url``: ``sqlite+aiosqlite:///<tmp_path>/hexbus.db``, a new file per test.
- ``postgres_database_url``: a new, empty database on the session's PostgreSQL
  (``postgres_url``, found as the brokers are: environment, container, native), created as
  ``t_<random hex>`` before the test and dropped after it (``WITH (FORCE)``: connections a
  test leaked do not keep it alive). The URL is the session's with the database replaced.
- ``database_url``: parametrised over ``sqlite`` and ``postgresql`` (test ids
  ``[sqlite]`` / ``[postgresql]``): one test body, run on both.

Why a database per test rather than a schema per test: the URL alone isolates the test
(the code under test needs no ``search_path`` or schema option, and may create its own
tables, sequences and LISTEN channels freely), and it is cheap -- creating and dropping
one took about 12 ms and 7 ms on the native server of ``scripts/brokers.py``.

The databases are created over an administrative connection with asyncpg, run in a
worker thread on a loop of its own, so the fixtures are plain (synchronous) ones that
work under any pytest-asyncio mode or loop scope. asyncpg is the one database client
``hexbus.testing`` imports, here only (the ``ignore_imports`` of the database-clients
contract in pyproject.toml); without it the PostgreSQL fixtures skip, or fail with
``CI=true``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from hexbus.testing.brokers import redact

__all__ = [
    "DATABASE_KINDS",
    "asyncpg_dsn",
    "database_url",
    "fresh_postgres_database",
    "postgres_database_url",
    "sqlite_url",
    "with_database",
]

#: The stores ``database_url`` runs a test on (its parameter ids).
DATABASE_KINDS = ("sqlite", "postgresql")
#: Seconds the administrative connection and each statement may take.
ADMIN_TIMEOUT = 60.0


def asyncpg_dsn(url: str) -> str:
    """The libpq-style DSN asyncpg takes for a SQLAlchemy URL (``postgresql+asyncpg://``
    -> ``postgresql://``; the rest unchanged)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {redact(url)}")
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_database(url: str, database: str) -> str:
    """*url* pointing at *database* instead (driver, credentials and query kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _run(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to completion on a loop of its own, in a worker thread: the
    caller may be inside a running loop (an async test's fixture set-up)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hexbus-db") as pool:
        pool.submit(lambda: asyncio.run(make())).result(timeout=ADMIN_TIMEOUT * 2)


def _admin(url: str, statement: str) -> None:
    """Execute *statement* on the database of *url* (asyncpg, a connection of its own)."""
    try:
        import asyncpg  # noqa: PLC0415 - optional: only the PostgreSQL fixtures need it
    except ImportError as exc:
        message = f"asyncpg is not installed ({exc}): pip install 'hexbus[postgres]'"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    async def execute() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=ADMIN_TIMEOUT)
        try:
            await conn.execute(statement, timeout=ADMIN_TIMEOUT)
        finally:
            await conn.close()

    _run(execute)


@contextmanager
def fresh_postgres_database(admin_url: str, prefix: str = "t") -> Iterator[str]:
    """Create an empty database next to *admin_url*'s, yield its URL, drop it after.

    The role of *admin_url* needs ``CREATEDB`` (the one of ``postgres_url`` has it).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        _drop(admin_url, name)


def _drop(admin_url: str, name: str) -> None:
    """``DROP DATABASE ... WITH (FORCE)``, retried for a few seconds while PostgreSQL
    refuses because an autovacuum worker is in the database (the test's role may end
    its own sessions, not the worker): connections are closed to it first, so no new
    worker starts there and the one at work finishes its table."""
    _admin(admin_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    deadline = time.monotonic() + ADMIN_TIMEOUT
    while True:
        try:
            _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except Exception as exc:
            if "pg_signal_backend" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """``sqlite+aiosqlite:///...``: a SQLite database file of this test's own."""
    return f"sqlite+aiosqlite:///{tmp_path / 'hexbus.db'}"


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this test (dropped after it); SQLAlchemy URL
    ``postgresql+asyncpg://...``."""
    with fresh_postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A database of this test's own, once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_database_url"
    url: str = request.getfixturevalue(fixture)
    return url
