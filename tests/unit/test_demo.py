"""The demo service: its use cases against real handlers on an in-memory bus, and the
``hexbus demo`` command end to end.

Why real adapters instead of mocks: the in-memory adapters record what they did, so the
tests read like the story the demo tells (three failed logins → one alert).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from typer.testing import CliRunner

from hexbus import InMemoryEventBus
from hexbus.cli import app
from hexbus.demo import handlers
from hexbus.demo.activity import ActivityLog, EventSeen, EventTap
from hexbus.demo.adapters import (
    InMemoryCache,
    InMemoryItemRepository,
    InMemoryUserRepository,
    RecordingNotifier,
)
from hexbus.demo.events import SystemAuditRecorded, UserCreated, UserDeleted, UserLoginFailed
from hexbus.demo.ports import StorageError
from hexbus.demo.use_cases import (
    CreateItem,
    DeleteUser,
    GetUser,
    LogIn,
    RegisterUser,
    Request,
    UpdateProfile,
)
from hexbus.testing.recording import RecordingEventBus


@dataclass
class Service:
    bus: InMemoryEventBus
    users: InMemoryUserRepository
    items: InMemoryItemRepository
    cache: InMemoryCache
    notifier: RecordingNotifier
    activity: ActivityLog
    counter: handlers.AuditCounter


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    activity, cache, notifier = ActivityLog(), InMemoryCache(), RecordingNotifier()
    counter = handlers.AuditCounter()
    router = handlers.demo_router(
        tap=EventTap(activity),
        cache_invalidation=handlers.CacheInvalidationHandler(cache, activity),
        welcome_mail=handlers.WelcomeMailHandler(notifier, activity),
        security_alert=handlers.SecurityAlertHandler(notifier, activity, threshold=3),
        admin_alert=handlers.AdminAlertHandler(notifier, activity),
        counter=counter,
    )
    bus = InMemoryEventBus()
    bus.include(router)
    async with bus:
        yield Service(
            bus,
            InMemoryUserRepository(),
            InMemoryItemRepository(),
            cache,
            notifier,
            activity,
            counter,
        )


async def test_register_sends_a_welcome_mail_with_request_metadata(service: Service) -> None:
    user = await RegisterUser(service.users, service.bus)(
        "ann@example.com", "Ann", "pw", Request(ip_address="10.1.2.3", user_agent="UA/1")
    )

    assert service.users.users[user.user_id].email == "ann@example.com"
    [mail] = service.notifier.on("mail")
    assert (mail.to, mail.subject) == ("ann@example.com", "Welcome, Ann!")
    [seen] = [e for e in service.activity.entries if isinstance(e, EventSeen)]
    assert seen.metadata == {"ip_address": "10.1.2.3", "user_agent": "UA/1"}


async def test_three_failed_logins_raise_exactly_one_security_alert(service: Service) -> None:
    await RegisterUser(service.users, service.bus)("bob@example.com", "Bob", "hunter2")
    log_in = LogIn(service.users, service.bus)
    attacker = Request(ip_address="203.0.113.7")

    results = [await log_in("bob@example.com", guess, attacker) for guess in "abc"]

    assert results == [False, False, False]
    [alert] = service.notifier.on("security")
    assert "3 failed logins for bob@example.com" in alert.subject
    assert "203.0.113.7" in alert.body
    failures = [e for e in service.activity.events() if isinstance(e, UserLoginFailed)]
    assert [e.consecutive_failures for e in failures] == [1, 2, 3]


async def test_a_successful_login_resets_the_failure_count(service: Service) -> None:
    await RegisterUser(service.users, service.bus)("bob@example.com", "Bob", "hunter2")
    log_in = LogIn(service.users, service.bus)
    for guess in ("a", "b", "hunter2", "c", "d"):
        await log_in("bob@example.com", guess)

    assert service.notifier.on("security") == []  # never three in a row


async def test_profile_update_invalidates_the_cached_profile(service: Service) -> None:
    user = await RegisterUser(service.users, service.bus)("ann@example.com", "Ann", "pw")
    get_user = GetUser(service.users, service.cache, service.bus)
    await get_user(user.user_id)
    assert f"user:{user.user_id}" in service.cache.data

    await UpdateProfile(service.users, service.bus)(user.user_id, name="Ann L.")

    assert service.cache.deleted == [f"user:{user.user_id}"]
    assert (await get_user(user.user_id))["name"] == "Ann L."


async def test_storage_failure_publishes_system_error_and_alerts_admins(
    service: Service,
) -> None:
    service.items.fail_next("database connection lost")
    with pytest.raises(StorageError):
        await CreateItem(service.items, service.bus)(uuid4(), "Engine", 100)

    [alert] = service.notifier.on("admin")
    assert "items: database connection lost" in alert.subject


async def test_delete_user_audit_event_shares_the_correlation_id(service: Service) -> None:
    user = await RegisterUser(service.users, service.bus)("bob@example.com", "Bob", "pw")
    await DeleteUser(service.users, service.bus)(user.user_id, actor="admin")

    deleted, audit = service.activity.events()[-2:]
    assert isinstance(deleted, UserDeleted) and isinstance(audit, SystemAuditRecorded)
    assert audit.correlation_id == deleted.correlation_id
    assert audit.causation_id == str(deleted.event_id)


async def test_the_plain_def_counter_sees_every_event(service: Service) -> None:
    await RegisterUser(service.users, service.bus)("ann@example.com", "Ann", "pw")
    await LogIn(service.users, service.bus)("ann@example.com", "pw")

    assert service.counter.counts == {"user.created": 1, "user.login": 1}


def test_demo_command_tells_the_whole_story(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(
        app, ["demo", "--audit-log", str(audit)], env={"HEXBUS_ADAPTER": "memory"}
    )

    assert result.exit_code == 0, result.output
    out = result.output
    assert "SECURITY ALERT" in out
    assert "cache-invalidation: invalidated user:" in out
    assert "ADMIN ALERT" in out
    assert "Summary" in out and "audit log lines written" in out
    lines = audit.read_text().splitlines()
    assert len(lines) == 14
    assert json.loads(lines[0])["metadata"]["ip_address"] == "198.51.100.23"


async def test_use_cases_publish_facts_with_metadata_on_a_recording_bus() -> None:
    bus = RecordingEventBus()
    users = InMemoryUserRepository()
    request = Request(ip_address="203.0.113.7", user_agent="curl/8")
    user = await RegisterUser(users, bus)("bob@example.com", "Bob", "pw", request)
    await LogIn(users, bus)("bob@example.com", "nope", request)
    await LogIn(users, bus)("eve@example.com", "nope", request)

    bus.assert_published(UserCreated, user_id=user.user_id, email="bob@example.com")
    wrong, unknown = bus.published_of(UserLoginFailed)
    assert (wrong.reason, wrong.user_id, wrong.consecutive_failures) == (
        "wrong_password",
        user.user_id,
        1,
    )
    assert (unknown.reason, unknown.user_id) == ("unknown_user", None)
    [record] = bus.records_of(UserCreated)
    assert record.metadata == {"ip_address": "203.0.113.7", "user_agent": "curl/8"}


async def test_update_without_changes_publishes_nothing() -> None:
    bus = RecordingEventBus()
    users = InMemoryUserRepository()
    user = await RegisterUser(users, bus)("ann@example.com", "Ann", "pw")
    bus.clear_published()

    await UpdateProfile(users, bus)(user.user_id, name="Ann")

    assert bus.published == []
