"""RabbitMQ adapter configuration: bad credentials fail fast without leaking the password,
settings map onto the adapter's config, subscriptions after start and topology names."""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from bus_makers import RabbitBusMaker
from bus_makers import RabbitTestEvent as FaultEvent

from hexbus import ConfigurationError, HexbusSettings, PublishError
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus
from hexbus.testing import eventually

pytestmark = pytest.mark.integration

WRONG_PASSWORD = "n0t-the-Passw0rd-4711"


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{parts.username or 'guest'}:{password}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _all_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


async def test_wrong_credentials_fail_fast_without_the_password(rabbitmq_url: str) -> None:
    url = _with_password(rabbitmq_url, WRONG_PASSWORD)
    bus = RabbitMQEventBus(RabbitMQConfig(url=url, connect_timeout=15))
    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    text = _all_text(info.value)
    assert WRONG_PASSWORD not in text
    assert "***" in str(info.value)
    assert "password" in str(info.value).lower() or "auth" in str(info.value).lower()
    assert WRONG_PASSWORD not in repr(bus)
    assert WRONG_PASSWORD not in repr(bus.config)
    await bus.stop()  # harmless after a failed start


async def test_unreachable_broker_fails_fast_without_the_password() -> None:
    url = f"amqp://guest:{WRONG_PASSWORD}@127.0.0.1:1/"
    bus = RabbitMQEventBus(RabbitMQConfig(url=url, connect_timeout=5))
    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    assert WRONG_PASSWORD not in _all_text(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_invalid_url_error_does_not_show_the_password() -> None:
    with pytest.raises(ValueError) as info:
        RabbitMQConfig(url=f"http://guest:{WRONG_PASSWORD}@host/")
    assert WRONG_PASSWORD not in str(info.value)


def test_from_settings_maps_every_rabbitmq_setting() -> None:
    settings = HexbusSettings(
        adapter="rabbitmq",
        service_name="orders",
        rabbitmq_url=f"amqp://app:{WRONG_PASSWORD}@broker:5673/vh",
        rabbitmq_exchange="orders.events",
        rabbitmq_prefetch=7,
        max_attempts=4,
        handler_timeout=3.5,
        publish_timeout=2.5,
    )
    bus = RabbitMQEventBus.from_settings(settings)
    config = bus.config
    assert (config.url, config.exchange, config.service_name, config.prefetch) == (
        settings.rabbitmq_url, "orders.events", "orders", 7,
    )
    assert (config.max_attempts, config.handler_timeout, config.publish_timeout) == (4, 3.5, 2.5)
    assert bus.queue_name("mail") == "orders.mail"
    assert bus.dlq_name("mail") == "orders.mail.dlq"
    assert WRONG_PASSWORD not in repr(bus)


async def test_subscribe_after_start_then_unsubscribe(rabbit_bus_maker: RabbitBusMaker) -> None:
    """A subscription added to a running bus declares, binds and consumes at once (a
    publish right after it is not lost); unsubscribe unbinds, so later events skip it."""
    seen: list[str] = []

    async def late(event: FaultEvent) -> None:
        seen.append(str(event.event_id))

    bus = rabbit_bus_maker()
    async with bus:
        bus.subscribe(FaultEvent, late, name="late")
        first = FaultEvent(seq=1)
        await bus.publish(first)  # waits for the binding: not lost
        await eventually(lambda: seen == [str(first.event_id)], timeout=15)
        bus.unsubscribe(FaultEvent, late)
        kept = FaultEvent(seq=2)
        await bus.publish(kept)
    assert seen == [str(first.event_id)]
    # The durable queue survived the unsubscribe, but unbound: `kept` never reached it.
    again = rabbit_bus_maker()
    again.subscribe(FaultEvent, late, name="late")
    async with again:
        third = FaultEvent(seq=3)
        await again.publish(third)
        await eventually(lambda: str(third.event_id) in seen, timeout=15)
    assert str(kept.event_id) not in seen


async def test_publish_on_a_closed_broker_connection_raises_publish_error(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    """With the connection gone and not coming back, publish gives up after
    ``publish_timeout`` with a ``PublishError`` naming the URL without the password."""
    bus = rabbit_bus_maker(publish_timeout=0.5, reconnect_interval=30)
    await bus.start()
    try:
        # Close the underlying transport as a network failure would (the robust
        # connection then waits reconnect_interval before trying again).
        connection = bus.connection
        assert connection is not None
        transport = connection.transport
        assert transport is not None
        await transport.connection.close(ConnectionError("test: network down"))
        with pytest.raises(PublishError) as info:
            await bus.publish(FaultEvent(seq=1))
        assert "not confirmed" in str(info.value)
        assert "guest:***@" in str(info.value) or "@" not in str(info.value)
    finally:
        await bus.stop()


class _SilentChannel:
    is_closed = False


class _SilentExchange:
    """An exchange whose broker takes the message and never confirms it."""

    channel = _SilentChannel()

    async def publish(self, message: object, routing_key: str, *, mandatory: bool) -> None:
        await asyncio.Event().wait()


async def test_unconfirmed_publish_raises_publish_error_after_publish_timeout() -> None:
    """The shared deadline watchdog: no confirm within ``publish_timeout`` → PublishError;
    the caller's task is left uncancelled; a caller's own cancellation stays one."""
    publisher = RabbitMQEventBus(RabbitMQConfig(publish_timeout=0.2)).publisher
    exchange: Any = _SilentExchange()
    message: Any = object()
    began = time.monotonic()
    with pytest.raises(PublishError, match=r"not confirmed .* within 0\.2s"):
        await publisher.send(exchange, message, "rk", lambda: "event x")
    assert time.monotonic() - began < 2
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0

    sending = asyncio.create_task(publisher.send(exchange, message, "rk", lambda: "event y"))
    await asyncio.sleep(0.05)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await publisher.close()


def test_queue_type_setting_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_RABBITMQ_QUEUE_TYPE", "Classic")
    settings = HexbusSettings(adapter="rabbitmq")
    assert RabbitMQEventBus.from_settings(settings).config.queue_type == "classic"
    assert RabbitMQConfig().queue_type == "quorum"
    monkeypatch.setenv("HEXBUS_RABBITMQ_QUEUE_TYPE", "lazy")
    with pytest.raises(ValueError, match="rabbitmq_queue_type"):
        HexbusSettings(adapter="rabbitmq")


async def test_classic_work_queues_deliver_and_a_changed_type_is_refused(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    """A classic work queue delivers like a quorum one; the same subscription declared
    later as quorum is refused with a ConfigurationError naming the setting (RabbitMQ
    cannot change a queue's type), which also proves the first one is classic."""
    seen: list[int] = []

    async def handler(event: FaultEvent) -> None:
        seen.append(event.seq)

    classic = rabbit_bus_maker(queue_type="classic")
    classic.subscribe(FaultEvent, handler, name="typed")
    async with classic:
        await classic.wait_ready()
        await classic.publish_many([FaultEvent(seq=n) for n in range(5)])
        await eventually(lambda: len(seen) == 5, timeout=20)
    assert sorted(seen) == list(range(5))

    quorum = rabbit_bus_maker(queue_type="quorum")
    quorum.subscribe(FaultEvent, handler, name="typed")
    with pytest.raises(ConfigurationError, match="HEXBUS_RABBITMQ_QUEUE_TYPE"):
        await quorum.start()
