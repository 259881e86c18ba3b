"""Pytest fixtures that locate real RabbitMQ, Kafka and PostgreSQL for integration tests.

Integration tests must run against real brokers (an in-memory fake cannot prove
that publisher confirms, quorum queues or consumer-group commits work), but
they must also run on machines with and without Docker. So each broker is
looked up, once per test session, in this order (design.md §7):

1. an environment variable (``HEXBUS_RABBITMQ_URL`` /
   ``HEXBUS_KAFKA_BOOTSTRAP_SERVERS`` / ``HEXBUS_TEST_POSTGRES_URL``) -- set by
   ``scripts/brokers.py run``, by CI, or by a developer pointing at servers of their own;
2. a throw-away container via testcontainers, when a Docker engine answers:
   the project's images ``hexbus/rabbitmq:<version>`` / ``hexbus/kafka:<version>`` /
   ``hexbus/postgres:<major>`` (``scripts/containers.py build``; the same versions as
   the native path), or any image named by ``HEXBUS_TEST_RABBITMQ_IMAGE`` /
   ``HEXBUS_TEST_KAFKA_IMAGE`` / ``HEXBUS_TEST_POSTGRES_IMAGE`` (e.g. the official
   ``rabbitmq:3.13``, ``apache/kafka:4.1.1`` or ``postgres:15``);
3. a native broker started with ``scripts/brokers.py up --only X`` when that
   script exists in the repository (stopped again at session end if this
   session started it).

``HEXBUS_TEST_BROKERS`` narrows steps 2 and 3: ``auto`` (the default) tries both,
``containers`` only containers (``make test-containers``), ``native`` only the
native start-up. The path each fixture took is written to the test log (and
listed again in the terminal summary), with any URL password masked.

If no path works the tests are skipped locally, but fail when ``CI`` is
``true``: a CI run that silently skipped every integration test would look
green while proving nothing. For the same reason a container path that cannot
start (with ``CI=true``, or with ``HEXBUS_TEST_BROKERS=containers``) fails at
once, saying in one line what is missing, instead of falling back to the native
brokers.

Containers publish their port on 127.0.0.1 at a free port chosen when they
start, and keep it: ``ContainerBroker.restart()`` (what the fault suite's broker
restart uses, through ``hexbus.testing.faults.restart_test_broker``) restarts the
container in place, so clients reconnect to the same address.

PostgreSQL (the transactional outbox's database) is found the same way by ``postgres_url``:
a SQLAlchemy URL ``postgresql+asyncpg://hexbus:<password>@127.0.0.1:<port>/hexbus`` whose
role may create databases. Its variable is deliberately not the outbox's own
``HEXBUS_OUTBOX_URL``, which would switch every container of the test session to the
outbox. Per-test databases (and SQLite files) are ``hexbus.testing.databases``.
"""

from __future__ import annotations

import base64
import importlib
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "DEFAULT_KAFKA_IMAGE",
    "DEFAULT_RABBITMQ_IMAGE",
    "ENV_BROKERS",
    "ENV_KAFKA",
    "ENV_KAFKA_IMAGE",
    "ENV_RABBITMQ",
    "ENV_POSTGRES",
    "ENV_POSTGRES_IMAGE",
    "ENV_RABBITMQ_IMAGE",
    "BrokerSource",
    "ContainerBroker",
    "ContainerStartError",
    "broker_mode",
    "broker_source",
    "container_broker",
    "kafka_bootstrap_servers",
    "make_unique_name",
    "new_unique_name",
    "postgres_url",
    "rabbitmq_url",
    "unique_name",
]

logger = logging.getLogger("hexbus.testing.brokers")

ENV_RABBITMQ = "HEXBUS_RABBITMQ_URL"
ENV_KAFKA = "HEXBUS_KAFKA_BOOTSTRAP_SERVERS"
#: ``auto`` | ``containers`` | ``native``: which provisioning paths may be used.
ENV_BROKERS = "HEXBUS_TEST_BROKERS"
ENV_RABBITMQ_IMAGE = "HEXBUS_TEST_RABBITMQ_IMAGE"
ENV_KAFKA_IMAGE = "HEXBUS_TEST_KAFKA_IMAGE"
#: Not ``HEXBUS_OUTBOX_URL`` (the application setting): see the module docstring.
ENV_POSTGRES = "HEXBUS_TEST_POSTGRES_URL"
ENV_POSTGRES_IMAGE = "HEXBUS_TEST_POSTGRES_IMAGE"
MODES = ("auto", "containers", "native")

#: The versions the native path runs: Debian bookworm's rabbitmq-server and the Kafka of
#: scripts/kafka/pom.xml. docker/*/Dockerfile build them under these names.
RABBITMQ_VERSION = "3.10.8"
KAFKA_VERSION = "4.1.1"
#: Debian bookworm's PostgreSQL major version (its ``postgresql`` package).
POSTGRES_VERSION = "15"
DEFAULT_RABBITMQ_IMAGE = f"hexbus/rabbitmq:{RABBITMQ_VERSION}"
DEFAULT_KAFKA_IMAGE = f"hexbus/kafka:{KAFKA_VERSION}"
DEFAULT_POSTGRES_IMAGE = f"hexbus/postgres:{POSTGRES_VERSION}"
#: Labels on our containers: the broker kind, and ``host:pid`` of the test process (so
#: ``scripts/containers.py`` can remove what a killed run left behind).
BROKER_LABEL = "org.hexbus.test-broker"
SESSION_LABEL = "org.hexbus.test-session"

#: Upper bound for a native cold start (apt install + Maven download + boot).
NATIVE_START_TIMEOUT = 900.0
#: How long a Docker engine gets to answer before we consider it absent.
DOCKER_PING_TIMEOUT = 3.0
#: Container start (and restart) to a broker that answers its protocol.
CONTAINER_READY_TIMEOUT = 180.0
#: Grace ``docker restart`` gives the broker to shut down cleanly before killing it.
CONTAINER_STOP_GRACE = 30


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


def broker_mode(environ: Mapping[str, str] | None = None) -> str:
    """``HEXBUS_TEST_BROKERS`` (``auto`` when unset); a value we do not know is an error,
    since guessing what a typo meant would test something else than was asked."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV_BROKERS, "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_BROKERS}={env.get(ENV_BROKERS)!r} is not one of {', '.join(MODES)}")
    return mode


def redact(address: str) -> str:
    """``address`` with any URL password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(address)
    if not parts.password:
        return address
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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


# -- what each fixture picked ------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSource:
    """Where this session's ``kind`` broker came from: ``environment``, ``container`` or
    ``native``; ``detail`` says which variable, image or script. The address may hold a
    password, so it is left out of the repr."""

    kind: str
    path: str
    address: str = field(repr=False)
    detail: str
    container: ContainerBroker | None = field(default=None, repr=False)


_SOURCES: dict[str, BrokerSource] = {}
_ANNOUNCED: list[str] = []


def broker_source(kind: str) -> BrokerSource | None:
    """What the ``kind`` (``rabbitmq`` / ``kafka``) fixture of this session picked, if it ran."""
    return _SOURCES.get(kind)


def container_broker(kind: str, port: int) -> ContainerBroker | None:
    """This session's ``kind`` container when it serves 127.0.0.1:``port``, else ``None``
    (the broker on that port came from elsewhere: the environment, the native path)."""
    source = _SOURCES.get(kind)
    if source is None or source.container is None or source.container.port != port:
        return None
    return source.container


def _announce(config: pytest.Config | None, line: str) -> None:
    """Say which path a fixture took: in the log, on the terminal now, and in the summary."""
    line = f"hexbus brokers: {line}"
    logger.info(line)
    _ANNOUNCED.append(line)
    if config is None:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if getattr(reporter, "currentfspath", 0) is None:
        # A line of progress dots may be open (-q): have pytest end it, as it does for its
        # own lines, instead of appending to it.
        reporter.currentfspath = -2
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat the brokers' paths at the end, where a reader of a CI log looks first."""
    if _ANNOUNCED:
        terminalreporter.section("hexbus brokers")
        for line in _ANNOUNCED:
            terminalreporter.write_line(line)


# -- protocol probes (what "the broker answers" means, through any port forwarding) -------


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def amqp_answers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether an AMQP 0-9-1 broker answers the protocol header with ``connection.start``.

    A TCP connect is not enough: Docker's port proxy accepts connections while the broker
    in the container is still booting (or restarting)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = _recv_exactly(sock, 7)
    except OSError:
        return False
    return frame[0] == 1  # a METHOD frame (connection.start) on channel 0


def kafka_answers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether a Kafka broker answers an ``ApiVersions`` request (it does once it serves
    clients; a version it does not support still gets an answer)."""
    client = b"hexbus-probe"
    correlation = 0x4858
    body = struct.pack(">hhih", 18, 0, correlation, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(sock, 8)
    except OSError:
        return False
    size, answered = struct.unpack(">ii", head)
    return bool(answered == correlation and size >= 6)


def postgres_answers(
    port: int, host: str = "127.0.0.1", timeout: float = 2.0, *, user: str = "hexbus"
) -> bool:
    """Whether PostgreSQL accepts logins: a startup message gets an authentication request.

    While the server starts (or an image's first-boot initialisation runs) it answers
    with an error instead, and a port proxy may accept and close; neither counts."""
    params = f"user\x00{user}\x00database\x00{user}\x00\x00".encode()
    body = struct.pack(">i", 196608) + params  # protocol 3.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body) + 4) + body)
            head = _recv_exactly(sock, 1)
    except OSError:
        return False
    return head == b"R"


# -- containers ----------------------------------------------------------------------------


class ContainerStartError(RuntimeError):
    """A broker container did not start; the message says what is missing, in one line."""


def explain_container_failure(
    image: str,
    error: BaseException | str,
    *,
    image_var: str,
    image_present: bool | None,
    ryuk_disabled: bool,
    ryuk_present: bool | None = None,
    ryuk_image: str = "testcontainers/ryuk",
) -> str:
    """One line on why ``image`` did not run, and what to do about it.

    The usual causes where no registry answers: the project's images exist only once built
    on this machine, and testcontainers' Ryuk reaper needs an image of its own (``None``
    for a presence means "not known").
    """
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if len(first) > 200:
        first = first[:197] + "..."
    missing: list[str] = []
    if image_present is False:
        if image.startswith("hexbus/"):
            missing.append(
                f"image {image} is not built on this machine: run `python3 scripts/"
                f"containers.py build` (`make test-containers` builds it too), or set "
                f"{image_var} to another image"
            )
        else:
            missing.append(
                f"image {image} is not on this machine and could not be pulled ({first}): "
                f"pull or build it, or set {image_var} to another image"
            )
    ryuk_failed = "ryuk" in text.lower()
    if not ryuk_disabled and (ryuk_failed or (image_present is False and ryuk_present is False)):
        how = f"could not start ({first})" if ryuk_failed else "image is not here either"
        missing.append(
            f"testcontainers' Ryuk reaper ({ryuk_image}) {how}: where no registry answers "
            "set TESTCONTAINERS_RYUK_DISABLED=true"
        )
    if missing:
        return "; ".join(missing)
    return f"container of {image} did not start: {first}"


@dataclass(frozen=True)
class _Recipe:
    """How one broker kind runs in a container, whatever the image (ours or official)."""

    kind: str
    what: str
    env_var: str
    image_var: str
    default_image: str
    #: host port -> the port the broker listens on inside the container
    inner_port: Callable[[int], int]
    #: host port -> the container's environment
    environment: Callable[[int], dict[str, str]]
    #: host port -> the address clients use
    address: Callable[[int], str]
    #: host port -> whether the broker answers its protocol there
    answers: Callable[[int], bool]

    def image(self) -> str:
        return os.environ.get(self.image_var, "").strip() or self.default_image


def _rabbitmq_environment(port: int) -> dict[str, str]:
    # Read by our entry script and by the official image alike.
    return {"RABBITMQ_DEFAULT_USER": "guest", "RABBITMQ_DEFAULT_PASS": "guest"}


def _kafka_cluster_id() -> str:
    """A Kafka Uuid (16 random bytes, base64url) that does not start with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_environment(port: int) -> dict[str, str]:
    """One KRaft node, configured as scripts/brokers.py configures the native one.

    Inside the container Kafka listens on the same port number as the published one, so
    the advertised ``127.0.0.1:<port>`` is right from the host and from within. The
    variables follow the convention of the official apache/kafka (and Confluent) images.
    """
    return {
        "CLUSTER_ID": _kafka_cluster_id(),
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@127.0.0.1:9093",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "10",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "10",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_NETWORK_THREADS": "2",
        "KAFKA_NUM_IO_THREADS": "4",
        "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
    }


RABBITMQ = _Recipe(
    kind="rabbitmq",
    what="RabbitMQ",
    env_var=ENV_RABBITMQ,
    image_var=ENV_RABBITMQ_IMAGE,
    default_image=DEFAULT_RABBITMQ_IMAGE,
    inner_port=lambda port: 5672,
    environment=_rabbitmq_environment,
    address=lambda port: f"amqp://guest:guest@127.0.0.1:{port}/",
    answers=amqp_answers,
)
KAFKA = _Recipe(
    kind="kafka",
    what="Kafka",
    env_var=ENV_KAFKA,
    image_var=ENV_KAFKA_IMAGE,
    default_image=DEFAULT_KAFKA_IMAGE,
    inner_port=lambda port: port,
    environment=_kafka_environment,
    address=lambda port: f"127.0.0.1:{port}",
    answers=kafka_answers,
)


#: The role's password in this session's PostgreSQL containers (made per test process).
_POSTGRES_PASSWORD = secrets.token_hex(16)


def _postgres_environment(port: int) -> dict[str, str]:
    # The official postgres image's variables; our entry script reads the same ones.
    return {
        "POSTGRES_USER": "hexbus",
        "POSTGRES_PASSWORD": _POSTGRES_PASSWORD,
        "POSTGRES_DB": "hexbus",
    }


POSTGRES = _Recipe(
    kind="postgres",
    what="PostgreSQL",
    env_var=ENV_POSTGRES,
    image_var=ENV_POSTGRES_IMAGE,
    default_image=DEFAULT_POSTGRES_IMAGE,
    inner_port=lambda port: 5432,
    environment=_postgres_environment,
    address=lambda port: (
        f"postgresql+asyncpg://hexbus:{_POSTGRES_PASSWORD}@127.0.0.1:{port}/hexbus"
    ),
    answers=postgres_answers,
)


def _free_port() -> int:
    """A free port on 127.0.0.1, never 9093 (the Kafka controller inside the container)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 9093:
            return port


class ContainerBroker:
    """One broker in a container of this test session, published on 127.0.0.1:``port``.

    The host port is fixed when the container is created (not left to Docker), so that a
    ``restart()`` brings the broker back at the same address: clients reconnect as they
    would to a restarted server, which is what the fault suite's restart scenario tests.
    """

    def __init__(self, recipe: _Recipe, image: str) -> None:
        self.recipe = recipe
        self.image = image
        self.port = 0
        self.started_in = 0.0
        self._container: Any = None

    @property
    def address(self) -> str:
        return self.recipe.address(self.port)

    @property
    def container_id(self) -> str:
        return str(self._container.get_wrapped_container().short_id) if self._container else ""

    def __repr__(self) -> str:
        return f"ContainerBroker({self.recipe.kind}, {self.image}, 127.0.0.1:{self.port})"

    def start(self, timeout: float = CONTAINER_READY_TIMEOUT) -> None:
        """Create and start the container; return once the broker answers its protocol.

        Raises ``ContainerStartError`` with a one-line reason.
        """
        began = time.monotonic()
        try:
            core: Any = importlib.import_module("testcontainers.core.container")
            config: Any = importlib.import_module("testcontainers.core.config")
        except ImportError as exc:
            raise ContainerStartError(
                f"testcontainers is not installed ({exc}); pip install 'hexbus[dev]'"
            ) from None
        tc_config = config.testcontainers_config
        image_present = _image_present(self.image)
        if image_present is False and self.image.startswith("hexbus/"):
            # Built here or nowhere: no registry has it, so do not even try to pull it.
            raise ContainerStartError(self._explain("not built", False, tc_config))
        for attempt in range(3):
            self.port = _free_port()
            container = core.DockerContainer(
                self.image,
                env=self.recipe.environment(self.port),
                labels={
                    BROKER_LABEL: self.recipe.kind,
                    SESSION_LABEL: f"{os.uname().nodename}:{os.getpid()}",
                },
            )
            # Fixed, on 127.0.0.1 only: Docker keeps this binding across restarts.
            container.ports[f"{self.recipe.inner_port(self.port)}/tcp"] = ("127.0.0.1", self.port)
            try:
                container.start()
            except Exception as exc:  # noqa: BLE001 - explained in one line below
                _quietly_remove(container)
                taken = "already allocated" in str(exc) or "address already in use" in str(exc)
                if taken and attempt < 2:
                    continue  # someone took the free port meanwhile: pick another
                raise ContainerStartError(self._explain(exc, image_present, tc_config)) from None
            self._container = container
            break
        try:
            self._wait_ready(began + timeout)
        except ContainerStartError:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def restart(self, timeout: float = CONTAINER_READY_TIMEOUT) -> float:
        """``docker restart`` the container (same address, same data); return the seconds
        until the broker answered again."""
        if self._container is None:
            raise ContainerStartError(f"{self!r} is not running")
        began = time.monotonic()
        wrapped = self._container.get_wrapped_container()
        try:
            wrapped.restart(timeout=CONTAINER_STOP_GRACE)
        finally:
            # brokers are shared by the whole session: never leave this one down
            wrapped.reload()
            if wrapped.status != "running":
                wrapped.start()
        self._wait_ready(began + timeout)
        return time.monotonic() - began

    def stop(self) -> None:
        """Remove the container (and its data)."""
        if self._container is not None:
            _quietly_remove(self._container)
            self._container = None

    def _explain(self, error: BaseException | str, present: bool | None, tc: Any) -> str:
        return explain_container_failure(
            self.image,
            error,
            image_var=self.recipe.image_var,
            image_present=present,
            ryuk_disabled=bool(tc.ryuk_disabled),
            ryuk_present=None if tc.ryuk_disabled else _image_present(str(tc.ryuk_image)),
            ryuk_image=str(tc.ryuk_image),
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll the broker's protocol until it answers; fail fast if the container died."""
        wrapped = self._container.get_wrapped_container()
        while not self.recipe.answers(self.port):
            wrapped.reload()
            if wrapped.status in ("exited", "dead"):
                logs = wrapped.logs(tail=15).decode(errors="replace").strip()
                raise ContainerStartError(
                    f"container of {self.image} exited ({wrapped.status}); its last log "
                    f"lines:\n{logs}"
                )
            if time.monotonic() > deadline:
                raise ContainerStartError(
                    f"{self.recipe.what} in {self.image} did not answer on 127.0.0.1:"
                    f"{self.port} in time (see `docker logs {wrapped.short_id}`)"
                )
            time.sleep(0.25)


def _image_present(image: str) -> bool | None:
    """Whether the engine has ``image`` locally (``None``: could not tell)."""
    try:
        client: Any = importlib.import_module("testcontainers.core.docker_client")
        errors: Any = importlib.import_module("docker.errors")
        try:
            client.DockerClient().client.images.get(image)
        except errors.ImageNotFound:
            return False
    except Exception:  # noqa: BLE001 - unknown; the start will tell
        return None
    return True


def _quietly_remove(container: Any) -> None:
    try:
        container.stop()
    except Exception as exc:  # noqa: BLE001 - clean-up must not hide the real error
        logger.debug("removing a test container failed: %s", exc)


def _start_container(recipe: _Recipe, image: str) -> ContainerBroker:
    broker = ContainerBroker(recipe, image)
    broker.start()
    return broker


# -- the native path -----------------------------------------------------------------------


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


class _Native(Protocol):
    started_by_us: bool

    def up(self) -> dict[str, str]: ...
    def down(self) -> None: ...


# -- the lookup ----------------------------------------------------------------------------


def _broker(
    rootpath: Path,
    recipe: _Recipe,
    *,
    announce: Callable[[str], None],
    start_container: Callable[[_Recipe, str], ContainerBroker] = _start_container,
    native_broker: Callable[[Path, str], _Native] = _NativeBroker,
    docker_available: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Shared lookup order for both broker fixtures (see module docstring)."""
    what, env_var, kind = recipe.what, recipe.env_var, recipe.kind
    try:
        mode = broker_mode()
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)

    value = os.environ.get(env_var, "").strip()
    if value:
        if mode == "containers":
            pytest.fail(
                f"{ENV_BROKERS}=containers, but ${env_var} is set ({redact(value)}): unset it "
                f"to test against a container, or drop {ENV_BROKERS} to use that {what}",
                pytrace=False,
            )
        _SOURCES[kind] = BrokerSource(kind, "environment", value, f"${env_var}")
        announce(f"{what} from ${env_var} ({redact(value)})")
        try:
            yield value
        finally:
            _SOURCES.pop(kind, None)
        return

    reasons = [f"${env_var} is not set"]
    if mode == "native":
        reasons.append(f"{ENV_BROKERS}=native: no containers")
    else:
        image = recipe.image()
        engine = (docker_available or _docker_available)()
        problem: str | None = None
        if not engine:
            problem = "no Docker engine answers"
        else:
            try:
                broker = start_container(recipe, image)
            except ContainerStartError as exc:
                problem = str(exc)
            else:
                _SOURCES[kind] = BrokerSource(kind, "container", broker.address, image, broker)
                announce(
                    f"{what} in a container (testcontainers, image {image}, "
                    f"{broker.container_id}) at {redact(broker.address)}, "
                    f"ready in {broker.started_in:.1f}s"
                )
                try:
                    yield broker.address
                finally:
                    _SOURCES.pop(kind, None)
                    broker.stop()
                return
        if mode == "containers" or (engine and _in_ci()):
            why = f"{ENV_BROKERS}=containers" if mode == "containers" else "CI=true"
            pytest.fail(
                f"{what} container path failed ({why}, no fallback): {problem}", pytrace=False
            )
        reasons.append(problem)
        if engine:
            announce(f"{what}: the container path failed ({problem}); trying the native broker")

    script = _find_brokers_script(rootpath)
    if script is None:
        reasons.append("scripts/brokers.py not found")
        _unavailable(what, reasons)
    native = native_broker(script, kind)
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
    how = "started for this session" if native.started_by_us else "already running"
    _SOURCES[kind] = BrokerSource(kind, "native", address, str(script))
    announce(f"{what} native (scripts/brokers.py, {how}) at {redact(address)}")
    try:
        yield address
    finally:
        _SOURCES.pop(kind, None)
        native.down()


def _fixture(request: pytest.FixtureRequest, recipe: _Recipe) -> Iterator[str]:
    config = request.config
    yield from _broker(
        Path(str(config.rootpath)), recipe, announce=lambda line: _announce(config, line)
    )


@pytest.fixture(scope="session")
def rabbitmq_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """AMQP URL of a real RabbitMQ (env var, then testcontainers, then native)."""
    yield from _fixture(request, RABBITMQ)


@pytest.fixture(scope="session")
def kafka_bootstrap_servers(request: pytest.FixtureRequest) -> Iterator[str]:
    """Kafka bootstrap servers ``host:port[,...]`` (env var, then testcontainers, then native)."""
    yield from _fixture(request, KAFKA)


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL ``postgresql+asyncpg://hexbus:<password>@127.0.0.1:<port>/hexbus`` of
    a real PostgreSQL (env var, then testcontainers, then native), shared by the session;
    its role may create databases. A database of a test's own: ``postgres_database_url``."""
    yield from _fixture(request, POSTGRES)


@pytest.fixture
def unique_name() -> str:
    """A fresh ``t-xxxxxxxxxx`` name, so tests sharing a broker never collide."""
    return new_unique_name()


@pytest.fixture
def make_unique_name() -> Callable[[str], str]:
    """Factory for several unique names in one test (``make_unique_name("q")``)."""
    return new_unique_name
