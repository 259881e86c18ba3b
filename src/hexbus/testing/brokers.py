"""Pytest fixtures that locate real RabbitMQ and Kafka brokers for integration tests.

Integration tests must run against real brokers (an in-memory fake cannot prove
that publisher confirms, quorum queues or consumer-group commits work), but
they must also run on machines with and without Docker. So each broker is
looked up, once per test session, in this order:

1. an environment variable (``HEXBUS_RABBITMQ_URL`` /
   ``HEXBUS_KAFKA_BOOTSTRAP_SERVERS``) -- set by ``scripts/brokers.py run``,
   by CI, or by a developer pointing at brokers of their own;
2. a throw-away container via testcontainers, when a Docker engine answers;
3. a native broker started with ``scripts/brokers.py up --only X`` when that
   script exists in the repository (stopped again at session end if this
   session started it).

If none of these works the tests are skipped locally, but fail when ``CI`` is
``true``: a CI run that silently skipped every integration test would look
green while proving nothing.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

__all__ = [
    "ENV_KAFKA",
    "ENV_RABBITMQ",
    "kafka_bootstrap_servers",
    "make_unique_name",
    "new_unique_name",
    "rabbitmq_url",
    "unique_name",
]

ENV_RABBITMQ = "HEXBUS_RABBITMQ_URL"
ENV_KAFKA = "HEXBUS_KAFKA_BOOTSTRAP_SERVERS"

#: Upper bound for a native cold start (apt install + Maven download + boot).
NATIVE_START_TIMEOUT = 900.0
#: How long a Docker engine gets to answer before we consider it absent.
DOCKER_PING_TIMEOUT = 3.0


def new_unique_name(prefix: str = "t") -> str:
    """Return a fresh broker-safe name such as ``t-1a2b3c4d5e``.

    Tests share one broker per session, so every exchange, queue, topic and
    consumer group must be unique to keep tests independent and re-runnable.
    """
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _unavailable(what: str, reasons: list[str]) -> NoReturn:
    """Skip locally, fail in CI: missing brokers must never go unnoticed in CI."""
    msg = f"no {what} available for integration tests: " + "; ".join(reasons)
    if _in_ci():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _docker_available() -> bool:
    """Cheaply tell whether a Docker engine answers (never waits long)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        sock = Path("/var/run/docker.sock")
        if not sock.exists():
            return False
    docker_cli = shutil.which("docker")
    if docker_cli:
        try:
            result = subprocess.run(
                [docker_cli, "info", "--format", "{{.ServerVersion}}"],
                capture_output=True,
                timeout=DOCKER_PING_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0
    try:
        docker: Any = importlib.import_module("docker")
        client = docker.from_env(timeout=int(DOCKER_PING_TIMEOUT))
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


def _find_brokers_script(rootpath: Path) -> Path | None:
    """Locate ``scripts/brokers.py`` in the repository (rootdir or above this file)."""
    candidates = [rootpath, *rootpath.parents, *Path(__file__).resolve().parents]
    for base in candidates:
        script = base / "scripts" / "brokers.py"
        if script.is_file():
            return script
    return None


class _NativeBroker:
    """Starts one broker kind with scripts/brokers.py and stops it if we started it."""

    def __init__(self, script: Path, kind: str) -> None:
        self.script = script
        self.kind = kind
        self.started_by_us = False

    def up(self) -> dict[str, str]:
        cmd = [sys.executable, str(self.script), "up", "--nodes", "1", "--only", self.kind]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=NATIVE_START_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        values: dict[str, str] = {}
        for line in result.stdout.splitlines():
            match = re.match(r"^(HEXBUS_[A-Z_]+)=(.*)$", line.strip())
            if match:
                values[match.group(1)] = match.group(2)
            elif line.startswith("#") and "started:" in line:
                self.started_by_us = f"{self.kind}-" in line.split("started:", 1)[1]
        return values

    def down(self) -> None:
        if not self.started_by_us:
            return
        subprocess.run(
            [sys.executable, str(self.script), "stop", "--nodes", "1", self.kind],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def _broker(
    request: pytest.FixtureRequest,
    *,
    what: str,
    env_var: str,
    kind: str,
    from_container: Callable[[], tuple[Any, str]],
) -> Iterator[str]:
    """Shared lookup order for both broker fixtures (see module docstring)."""
    value = os.environ.get(env_var, "").strip()
    if value:
        yield value
        return

    reasons = [f"${env_var} is not set"]
    if _docker_available():
        try:
            container, address = from_container()
        except Exception as exc:  # noqa: BLE001 - fall through to the native broker
            reasons.append(f"testcontainers failed: {exc!r}")
        else:
            try:
                yield address
            finally:
                container.stop()
            return
    else:
        reasons.append("no Docker engine answers")

    script = _find_brokers_script(Path(str(request.config.rootpath)))
    if script is None:
        reasons.append("scripts/brokers.py not found")
        _unavailable(what, reasons)
    native = _NativeBroker(script, kind)
    try:
        values = native.up()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"native start-up failed: {exc}")
        native.down()
        _unavailable(what, reasons)
    address = values.get(env_var, "")
    if not address:
        native.down()
        reasons.append(f"{script} printed no {env_var}")
        _unavailable(what, reasons)
    try:
        yield address
    finally:
        native.down()


def _rabbitmq_container() -> tuple[Any, str]:
    module: Any = importlib.import_module("testcontainers.rabbitmq")
    container = module.RabbitMqContainer()
    container.start()
    host = container.get_container_host_ip()
    port = container.get_exposed_port(container.port)
    user = getattr(container, "username", "guest")
    password = getattr(container, "password", "guest")
    return container, f"amqp://{user}:{password}@{host}:{port}/"


def _kafka_container() -> tuple[Any, str]:
    module: Any = importlib.import_module("testcontainers.kafka")
    container = module.KafkaContainer()
    container.start()
    return container, str(container.get_bootstrap_server())


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """AMQP URL of a real RabbitMQ (env var, then testcontainers, then native)."""
    yield from _broker(
        request,
        what="RabbitMQ",
        env_var=ENV_RABBITMQ,
        kind="rabbitmq",
        from_container=_rabbitmq_container,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    """Kafka bootstrap servers ``host:port[,...]`` (env var, then testcontainers, then native)."""
    yield from _broker(
        request,
        what="Kafka",
        env_var=ENV_KAFKA,
        kind="kafka",
        from_container=_kafka_container,
    )


@pytest.fixture
def unique_name() -> str:
    """A fresh ``t-xxxxxxxxxx`` name, so tests sharing a broker never collide."""
    return new_unique_name()


@pytest.fixture
def make_unique_name() -> Callable[[str], str]:
    """Factory for several unique names in one test (``make_unique_name("q")``)."""
    return new_unique_name
