"""Outbox settings and idempotent subscriptions, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from hexbus import DomainEvent, EventHandler, EventRouter, idempotent
from hexbus.application.handlers import SubscriptionTable, is_idempotent
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.settings import load_settings


class Booked(DomainEvent, event_type="unit.outbox.booked"):
    room: str


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:hunter2@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("postgres://app:hunter2@db/app", "postgresql+asyncpg://app:***@db/app"),
        ("sqlite:///app.db", "sqlite+aiosqlite:///app.db"),
    ],
)
def test_a_sync_url_is_refused_with_the_async_spelling(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as failure:
        load_settings(outbox_url=url)
    message = str(failure.value)
    assert "HEXBUS_OUTBOX_URL" in message
    assert expected in message
    assert "hunter2" not in message


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_an_in_memory_sqlite_outbox_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        load_settings(outbox_url=url)


def test_other_databases_are_refused_naming_the_supported_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"SQLite or PostgreSQL") as failure:
        load_settings(outbox_url="mysql+aiomysql://u:topsecret@h/db")
    assert "topsecret" not in str(failure.value)


def test_the_outbox_url_is_masked_in_reprs_and_dumps_and_listed_as_a_secret() -> None:
    settings = load_settings(outbox_url="postgresql+asyncpg://app:hunter2@db:5432/app")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.safe_dump())
    assert "hunter2" in settings.secret_values()


def test_an_empty_outbox_url_means_no_outbox() -> None:
    assert load_settings(outbox_url="  ").outbox_url is None


def test_every_way_of_marking_a_handler_idempotent() -> None:
    @idempotent
    async def decorated(event: Booked) -> None: ...

    router = EventRouter()

    @router.on(Booked, idempotent=True)
    async def routed(event: Booked) -> None: ...

    class Handler(EventHandler):
        event_types = (Booked,)
        idempotent = True

        async def handle(self, event: Any) -> None: ...

    async def plain(event: Booked) -> None: ...

    assert is_idempotent(decorated)
    assert is_idempotent(routed)
    assert is_idempotent(Handler().handle)
    assert not is_idempotent(plain)
    table = SubscriptionTable()
    table.add(Booked, plain, "explicit", idempotent=True)
    table.add(Booked, decorated, "decorated")
    table.add(Booked, routed, "overridden", idempotent=False)
    assert table.idempotent_names() == ["explicit", "decorated"]


async def test_an_inbox_wraps_only_idempotent_subscriptions() -> None:
    calls: list[str] = []

    class Recorder:
        def guard(self, subscription: str, call: Any) -> Any:
            async def guarded(event: Any) -> None:
                calls.append(subscription)
                await call(event)

            return guarded

    ran: list[str] = []

    async def once(event: Booked) -> None:
        ran.append("once")

    async def always(event: Booked) -> None:
        ran.append("always")

    table = SubscriptionTable()
    table.add(Booked, once, "once", idempotent=True)
    table.use_inbox(Recorder())
    table.add(Booked, always, "always")
    for sub in table.for_event(Booked):
        await sub.call(Booked(room="1"))
    assert ran == ["once", "always"]
    assert calls == ["once"]
    table.use_inbox(None)  # and back
    calls.clear()
    for sub in table.for_event(Booked):
        await sub.call(Booked(room="2"))
    assert calls == []
