"""A secured broker set for these tests: RabbitMQ over TLS, Kafka over SASL_SSL (SCRAM).

Started once per session with ``scripts/brokers.py --state-dir <dir> up --secure`` (a
throw-away CA and certificates, random passwords; see ``scripts/harness/tls.py``) in a
state directory of its own, so it runs beside any plain brokers of the checkout; stopped
at the end when this session started it. ``<dir>`` is
``$HEXBUS_SECURE_BROKERS_STATE_DIR``, else ``<repo>/.cache/brokers-secure``.

A second throw-away CA (``other_authority``) signs nothing the brokers trust: its CA file
and client certificate are the "untrusted certificate" of the tests. If the set cannot
start, the tests are skipped locally and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from secure_set import REPO, SecureBrokers, tls

SCRIPT = REPO / "scripts" / "brokers.py"
STATE_ENV = "HEXBUS_SECURE_BROKERS_STATE_DIR"
START_TIMEOUT = 900.0


def _brokers(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def secure_brokers() -> Iterator[SecureBrokers]:
    """The secure set (started here unless it runs already)."""
    state = Path(os.environ.get(STATE_ENV) or REPO / ".cache" / "brokers-secure").resolve()
    where = ["--state-dir", str(state)]
    try:
        result = _brokers(*where, "up", "--secure", timeout=START_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"cannot start the secure broker set: {exc}")
    if result.returncode != 0:
        _unavailable(
            f"`brokers.py {' '.join(where)} up --secure` failed (exit {result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    env: dict[str, str] = {}
    started = False
    for line in result.stdout.splitlines():
        match = re.match(r"^(HEXBUS_[A-Z_]+)=(.*)$", line.strip())
        if match:
            env[match.group(1)] = match.group(2)
        elif line.startswith("#") and "started:" in line:
            started = "nothing" not in line.split("started:", 1)[1]
    try:
        yield SecureBrokers(env, state)
    finally:
        if started:
            _brokers(*where, "down", timeout=180)


@pytest.fixture(scope="session")
def other_authority(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A CA the brokers do not trust, with a server and a client certificate of its own."""
    return tls.make_authority(tmp_path_factory.mktemp("other-ca"), "untrusted test CA")


@pytest.fixture
def secure_env(
    monkeypatch: pytest.MonkeyPatch, secure_brokers: SecureBrokers, unique_name: str
) -> dict[str, str]:
    """The process environment of one test: exactly the secure set's ``HEXBUS_*``
    variables (plus a unique service name), none of the plain brokers' ones."""
    for name in list(os.environ):
        if name.startswith("HEXBUS_") and name != STATE_ENV:
            monkeypatch.delenv(name)
    env = {
        **secure_brokers.env,
        "HEXBUS_SERVICE_NAME": unique_name,
        "HEXBUS_RABBITMQ_EXCHANGE": f"{unique_name}.events",
        "HEXBUS_KAFKA_TOPIC_PREFIX": f"{unique_name}.",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
