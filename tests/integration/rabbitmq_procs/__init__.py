"""Helpers of the RabbitMQ fault tests: the event they use, a consumer subprocess.

A package (not test modules) because the consumer runs in another process, which
imports the same event class from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from hexbus import DomainEvent, EventBus, PublishError
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus

__all__ = [
    "BusMaker",
    "ConsumerProcess",
    "FaultEvent",
    "bus_maker",
    "publish_until_confirmed",
    "read_ids",
]

HERE = Path(__file__).resolve().parent
CONSUMER_SCRIPT = HERE / "consumer.py"


class FaultEvent(DomainEvent, event_type="rabbitmq.fault.event"):
    """The event of the fault tests; ``seq`` only helps reading failures."""

    seq: int


def read_ids(path: Path) -> set[str]:
    """Event ids a consumer subprocess recorded (one per line; a torn last line ignored)."""
    if not path.exists():
        return set()
    lines = path.read_text().split("\n")
    return {line for line in lines[:-1] if line}  # the part after the last \\n may be torn


class ConsumerProcess:
    """``consumer.py`` in a subprocess, recording handled ids to ``out``."""

    def __init__(
        self, url: str, exchange: str, service: str, out: Path, *, delay: float = 0.0
    ) -> None:
        self.args = [
            sys.executable,
            str(CONSUMER_SCRIPT),
            "--url", url,
            "--exchange", exchange,
            "--service", service,
            "--out", str(out),
            "--delay", str(delay),
        ]
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        # readline blocks; the consumer prints "ready" or dies (EOF) promptly.
        line = self.proc.stdout.readline()
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.kill()
            raise AssertionError(f"consumer did not start: {line!r} {self.stderr()}")

    def stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-4000:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no ack of what was in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> None:
        """SIGTERM: the consumer stops its bus cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class BusMaker:
    """Builds ``RabbitMQEventBus``es sharing one test's unique exchange and service name.

    On clean-up every bus is stopped and every queue they declared and the exchange are
    deleted, so the shared broker does not fill up with test queues.
    """

    def __init__(self, url: str, unique: str) -> None:
        self.url = url
        self.exchange = f"{unique}.events"
        self.service = unique
        self.buses: list[RabbitMQEventBus] = []

    def config(self, **overrides: Any) -> RabbitMQConfig:
        values: dict[str, Any] = {
            "url": self.url,
            "exchange": self.exchange,
            "service_name": self.service,
            "max_attempts": 3,
            "retry_delays": (0.05, 0.1),
            "reconnect_interval": 0.5,
            "drain_timeout": 10.0,
        }
        values.update(overrides)
        return RabbitMQConfig(**values)

    def __call__(self, **overrides: Any) -> RabbitMQEventBus:
        bus = RabbitMQEventBus(self.config(**overrides))
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        queues: set[str] = set()
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await bus.stop()
            queues |= bus.declared_queues
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            for name in sorted(queues):
                await channel.queue_delete(name)
            await channel.exchange_delete(self.exchange)


@pytest.fixture
async def bus_maker(rabbitmq_url: str, unique_name: str) -> AsyncIterator[BusMaker]:
    maker = BusMaker(rabbitmq_url, unique_name)
    try:
        yield maker
    finally:
        await maker.cleanup()


async def publish_until_confirmed(
    bus: EventBus,
    events: Iterable[DomainEvent],
    confirmed: set[str],
    *,
    window: int = 200,
    pause: float = 0.0,
    deadline: float = 120.0,
) -> int:
    """Publish every event until confirmed (resending after ``PublishError``).

    Adds confirmed ids to ``confirmed`` as they come (callers watch it grow); returns
    how many publishes failed along the way. ``pause`` between windows paces it.
    """
    pending = list(events)
    failures = 0
    give_up = time.monotonic() + deadline
    while pending:
        if time.monotonic() > give_up:
            raise AssertionError(f"{len(pending)} events still unconfirmed after {deadline}s")
        batch, pending = pending[:window], pending[window:]
        results = await asyncio.gather(*(bus.publish(e) for e in batch), return_exceptions=True)
        for event, result in zip(batch, results, strict=True):
            if result is None:
                confirmed.add(str(event.event_id))
            elif isinstance(result, PublishError):
                failures += 1
                pending.append(event)
            else:
                raise result
        if pause:
            await asyncio.sleep(pause)
    return failures
