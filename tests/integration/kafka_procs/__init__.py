"""Helpers of the Kafka integration tests: events, a consumer subprocess, clean-up.

A package (not test modules) because the consumer runs in another process, which
imports the same event class from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from hexbus import DomainEvent, PublishError
from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus

__all__ = [
    "BusMaker",
    "ConsumerProcess",
    "KafkaFaultEvent",
    "bus_maker_for",
    "delete_topics",
    "ensure_kafka_up",
    "publish_until_acked",
    "read_ids",
]

HERE = Path(__file__).resolve().parent
CONSUMER_SCRIPT = HERE / "consumer.py"
BROKERS_SCRIPT = HERE.parent.parent.parent / "scripts" / "brokers.py"


def kafka_answers(bootstrap_servers: str) -> bool:
    host, _, port = bootstrap_servers.split(",", maxsplit=1)[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def restart_kafka(timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """``scripts/brokers.py restart kafka``: returns once the broker is ready again."""
    return subprocess.run(
        [sys.executable, str(BROKERS_SCRIPT), "restart", "kafka"],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def ensure_kafka_up(bootstrap_servers: str) -> None:
    """Never leave the shared broker down: start it again if it does not answer."""
    if kafka_answers(bootstrap_servers):
        return
    subprocess.run(
        [sys.executable, str(BROKERS_SCRIPT), "start", "kafka"],
        capture_output=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class KafkaFaultEvent(DomainEvent, event_type="kafkatest.fault"):
    """The event of the Kafka fault tests; ``seq``/``key`` help ordering checks."""

    seq: int
    key: str = ""


def read_ids(path: Path) -> list[str]:
    """Event ids a consumer subprocess recorded, in order (a torn last line ignored)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    return [line for line in lines[:-1] if line]


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (test clean-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await asyncio.wait_for(admin.start(), 15)
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await asyncio.wait_for(admin.delete_topics(topics), 30)
    except Exception:  # clean-up is best effort
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class BusMaker:
    """Builds ``KafkaEventBus``es sharing one test's topic prefix and service name."""

    def __init__(self, bootstrap_servers: str, unique: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = f"{unique}."
        self.service = unique
        self.buses: list[KafkaEventBus] = []

    def config(self, **overrides: Any) -> KafkaConfig:
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "topic_prefix": self.prefix,
            "service_name": self.service,
            "max_attempts": 3,
            "retry_backoff": 0.05,
            "drain_timeout": 10.0,
            "metadata_max_age_ms": 1000,
            "session_timeout_ms": 6000,
        }
        values.update(overrides)
        return KafkaConfig(**values)

    def __call__(self, **overrides: Any) -> KafkaEventBus:
        bus = KafkaEventBus(self.config(**overrides))
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.stop(), 60)
        await delete_topics(self.bootstrap_servers, self.prefix)


@asynccontextmanager
async def bus_maker_for(bootstrap_servers: str, unique: str) -> AsyncIterator[BusMaker]:
    """A ``BusMaker`` whose buses are stopped and topics deleted on exit."""
    maker = BusMaker(bootstrap_servers, unique)
    try:
        yield maker
    finally:
        await maker.cleanup()


class ConsumerProcess:
    """``consumer.py`` in a subprocess, appending handled ids to ``out``."""

    def __init__(
        self,
        bootstrap_servers: str,
        prefix: str,
        service: str,
        out: Path,
        *,
        delay: float = 0.0,
    ) -> None:
        self.out = out
        self.args = [
            sys.executable,
            str(CONSUMER_SCRIPT),
            "--bootstrap", bootstrap_servers,
            "--prefix", prefix,
            "--service", service,
            "--out", str(out),
            "--delay", str(delay),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self._log = out.with_suffix(".log")

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = self._log.open("w")
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()  # "ready" once it owns partitions, or EOF
        if line.strip() != "ready" or time.monotonic() > deadline:
            self.kill()
            raise AssertionError(f"consumer did not start: {line!r} {self.stderr()}")

    def stderr(self) -> str:
        return self._log.read_text()[-4000:] if self._log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no commit of what was in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> None:
        """SIGTERM: the consumer stops its bus cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


async def publish_until_acked(
    bus: KafkaEventBus,
    events: Iterable[DomainEvent],
    acked: set[str],
    *,
    window: int = 200,
    pause: float = 0.0,
    deadline: float = 180.0,
) -> int:
    """Publish every event until Kafka acked it (resending a window after ``PublishError``).

    Adds acked ids to ``acked`` as they come; returns how many windows failed.
    """
    pending = list(events)
    failures = 0
    give_up = time.monotonic() + deadline
    while pending:
        if time.monotonic() > give_up:
            raise AssertionError(f"{len(pending)} events still unacked after {deadline}s")
        batch = pending[:window]
        try:
            await bus.publish_many(batch)
        except PublishError:
            failures += 1
            await asyncio.sleep(0.2)
            continue
        pending = pending[window:]
        acked.update(str(e.event_id) for e in batch)
        if pause:
            await asyncio.sleep(pause)
    return failures
