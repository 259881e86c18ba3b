"""How the broker fixtures pick a path (hexbus.testing.brokers), without Docker or brokers.

Why these matter: a fixture that quietly took another path than the run asked for would
test something else than it claims -- CI on containers must fail when a container cannot
start, never pass on the native brokers behind its back. The order is design.md §7's
(environment, then containers, then native), ``HEXBUS_TEST_BROKERS`` narrows it, the
path taken is announced (passwords masked), and a container that cannot run says what is
missing in one line. The container and native starters are stand-ins here; the real ones
run in ``make test-containers`` and ``make test``.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hexbus.testing import brokers
from hexbus.testing.faults import require_restartable_broker, restart_test_broker

REPO = Path(__file__).resolve().parents[2]
URL = "amqp://app:s3cret@127.0.0.1:5999/"
PG_URL = "postgresql+asyncpg://hexbus:s3cret@127.0.0.1:5433/hexbus"
ENV_VARS = (
    brokers.ENV_RABBITMQ,
    brokers.ENV_KAFKA,
    brokers.ENV_BROKERS,
    brokers.ENV_RABBITMQ_IMAGE,
    brokers.ENV_KAFKA_IMAGE,
    brokers.ENV_POSTGRES,
    brokers.ENV_POSTGRES_IMAGE,
    "CI",
)


def _load_containers_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "hexbus_containers_script", REPO / "scripts" / "containers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


containers_script = _load_containers_script()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


class FakeContainer:
    """Stands in for ContainerBroker: what the lookup and the restart hook use of it."""

    def __init__(self, recipe: Any, image: str, port: int = 41234) -> None:
        self.recipe, self.image, self.port = recipe, image, port
        self.address = recipe.address(port)
        self.container_id = "c0ffee"
        self.started_in = 1.5
        self.stopped = False
        self.restarts: list[float] = []

    def stop(self) -> None:
        self.stopped = True

    def restart(self, timeout: float = 180.0) -> float:
        self.restarts.append(timeout)
        return 0.1


class FakeNative:
    """Stands in for scripts/brokers.py: prints an address, or fails."""

    made: ClassVar[list[FakeNative]] = []

    def __init__(self, script: Path, kind: str, *, fail: bool = False) -> None:
        self.script, self.kind, self.fail = script, kind, fail
        self.started_by_us = True
        self.downs = 0
        FakeNative.made.append(self)

    def up(self) -> dict[str, str]:
        if self.fail:
            raise RuntimeError("brokers.py up failed (exit 1)")
        return {
            brokers.ENV_RABBITMQ: URL,
            brokers.ENV_KAFKA: "127.0.0.1:9999",
            brokers.ENV_POSTGRES: PG_URL,
        }

    def down(self) -> None:
        self.downs += 1


class Lookup:
    """One run of the fixtures' lookup with stand-ins; records what it tried."""

    def __init__(
        self,
        tmp_path: Path,
        recipe: Any = brokers.RABBITMQ,
        *,
        docker: bool = True,
        container_error: str | None = None,
        native_fails: bool = False,
    ) -> None:
        self.lines: list[str] = []
        self.containers: list[FakeContainer] = []
        self.images: list[str] = []
        FakeNative.made = []

        def start_container(recipe: Any, image: str) -> Any:
            self.images.append(image)
            if container_error is not None:
                raise brokers.ContainerStartError(container_error)
            container = FakeContainer(recipe, image)
            self.containers.append(container)
            return container

        self.gen: Iterator[str] = brokers._broker(
            tmp_path,
            recipe,
            announce=self.lines.append,
            start_container=start_container,
            native_broker=lambda script, kind: FakeNative(script, kind, fail=native_fails),
            docker_available=lambda: docker,
        )

    def address(self) -> str:
        return next(self.gen)

    def close(self) -> None:
        self.gen.close()

    @property
    def natives(self) -> list[FakeNative]:
        return FakeNative.made


# -- HEXBUS_TEST_BROKERS -------------------------------------------------------------------


def test_mode_defaults_to_auto_and_ignores_case() -> None:
    assert brokers.broker_mode({}) == "auto"
    assert brokers.broker_mode({brokers.ENV_BROKERS: " Containers "}) == "containers"
    assert brokers.broker_mode({brokers.ENV_BROKERS: "native"}) == "native"


def test_an_unknown_mode_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"HEXBUS_TEST_BROKERS='docker'.*auto, containers, native"):
        brokers.broker_mode({brokers.ENV_BROKERS: "docker"})


def test_an_unknown_mode_fails_the_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(brokers.ENV_BROKERS, "docker")
    lookup = Lookup(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="not one of"):
        lookup.address()
    assert lookup.images == [] and lookup.natives == []


# -- 1. the environment --------------------------------------------------------------------


def test_the_environment_comes_first_and_is_announced_without_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_RABBITMQ, URL)
    lookup = Lookup(tmp_path)
    assert lookup.address() == URL
    assert lookup.images == [] and lookup.natives == [], "env var given: nothing started"
    assert lookup.lines == ["RabbitMQ from $HEXBUS_RABBITMQ_URL (amqp://app:***@127.0.0.1:5999/)"]
    source = brokers.broker_source("rabbitmq")
    assert source is not None and source.path == "environment"
    assert "s3cret" not in repr(source)
    assert brokers.container_broker("rabbitmq", 5999) is None
    lookup.close()
    assert brokers.broker_source("rabbitmq") is None


def test_containers_mode_refuses_an_address_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_RABBITMQ, URL)
    monkeypatch.setenv(brokers.ENV_BROKERS, "containers")
    lookup = Lookup(tmp_path)
    with pytest.raises(pytest.fail.Exception) as failed:
        lookup.address()
    message = str(failed.value)
    assert "unset it" in message and "s3cret" not in message
    assert lookup.images == [] and lookup.natives == []


# -- 2. containers -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "containers"])
def test_a_container_when_an_engine_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv(brokers.ENV_BROKERS, mode)
    lookup = Lookup(tmp_path, brokers.KAFKA)
    assert lookup.address() == "127.0.0.1:41234"
    assert lookup.images == [brokers.DEFAULT_KAFKA_IMAGE]
    assert lookup.natives == [], "the container worked: no native broker"
    assert lookup.lines == [
        "Kafka in a container (testcontainers, image hexbus/kafka:4.1.1, c0ffee) at "
        "127.0.0.1:41234, ready in 1.5s"
    ]
    (container,) = lookup.containers
    assert brokers.container_broker("kafka", 41234) is container
    assert brokers.container_broker("kafka", 9092) is None, "another port is not ours"
    assert brokers.container_broker("rabbitmq", 41234) is None
    lookup.close()
    assert container.stopped, "the session's container is removed at the end"
    assert brokers.container_broker("kafka", 41234) is None


def test_the_image_comes_from_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(brokers.ENV_RABBITMQ_IMAGE, "rabbitmq:3.13-management")
    lookup = Lookup(tmp_path)
    assert lookup.address() == "amqp://guest:guest@127.0.0.1:41234/"
    assert lookup.images == ["rabbitmq:3.13-management"]
    assert "image rabbitmq:3.13-management" in lookup.lines[0]
    assert "guest:***@" in lookup.lines[0]
    lookup.close()


def test_a_failed_container_falls_back_to_native_locally_and_says_so(
    tmp_path: Path,
) -> None:
    lookup = Lookup(tmp_path, container_error="image hexbus/rabbitmq:3.10.8 is not built")
    assert lookup.address() == URL
    assert len(lookup.natives) == 1
    assert lookup.lines == [
        "RabbitMQ: the container path failed (image hexbus/rabbitmq:3.10.8 is not built); "
        "trying the native broker",
        "RabbitMQ native (scripts/brokers.py, started for this session) at "
        "amqp://app:***@127.0.0.1:5999/",
    ]
    source = brokers.broker_source("rabbitmq")
    assert source is not None and source.path == "native"
    lookup.close()
    assert lookup.natives[0].downs == 1


def test_with_ci_a_failed_container_fails_instead_of_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    lookup = Lookup(tmp_path, container_error="image hexbus/rabbitmq:3.10.8 is not built")
    with pytest.raises(pytest.fail.Exception) as failed:
        lookup.address()
    assert str(failed.value) == (
        "RabbitMQ container path failed (CI=true, no fallback): "
        "image hexbus/rabbitmq:3.10.8 is not built"
    )
    assert lookup.natives == []


def test_containers_mode_fails_without_an_engine_even_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_BROKERS, "containers")
    lookup = Lookup(tmp_path, docker=False)
    with pytest.raises(pytest.fail.Exception, match="no Docker engine answers"):
        lookup.address()
    assert lookup.images == [] and lookup.natives == []


# -- 3. native -----------------------------------------------------------------------------


def test_without_an_engine_auto_uses_the_native_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")  # no engine is not a container failure
    lookup = Lookup(tmp_path, docker=False)
    assert lookup.address() == URL
    assert lookup.images == []
    assert lookup.lines == [
        "RabbitMQ native (scripts/brokers.py, started for this session) at "
        "amqp://app:***@127.0.0.1:5999/"
    ]
    lookup.close()


def test_native_mode_never_tries_a_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_BROKERS, "native")
    lookup = Lookup(tmp_path, docker=True)
    assert lookup.address() == URL
    assert lookup.images == []
    lookup.close()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_no_broker_at_all_skips_locally_and_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    lookup = Lookup(tmp_path, docker=False, native_fails=True)
    with pytest.raises(outcome) as stopped:
        lookup.address()
    assert str(stopped.value) == (
        "no RabbitMQ available for integration tests: $HEXBUS_RABBITMQ_URL is not set; "
        "no Docker engine answers; native start-up failed: brokers.py up failed (exit 1)"
    )


# -- the restart hook ------------------------------------------------------------------------


async def test_the_restart_hook_restarts_the_sessions_container(tmp_path: Path) -> None:
    """The case that failed before: the broker came from a container, and the restart ran
    the native script (restarting a broker nobody used)."""
    lookup = Lookup(tmp_path, brokers.KAFKA)
    lookup.address()
    (container,) = lookup.containers
    await require_restartable_broker("kafka", container.port)  # no skip: it is ours
    await restart_test_broker("kafka", container.port, timeout=99)
    assert container.restarts == [99]
    assert lookup.natives == []
    lookup.close()


async def test_the_restart_hook_does_not_restart_what_is_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_KAFKA, "127.0.0.1:9")
    lookup = Lookup(tmp_path, brokers.KAFKA)
    lookup.address()
    script = tmp_path / "brokers.py"
    script.write_text("print('rabbitmq-1 running port=5672')\n")  # runs no kafka on port 9
    with pytest.raises(pytest.skip.Exception, match="needs the native broker"):
        await restart_test_broker("kafka", 9, script=script)
    lookup.close()


# -- one line on what is missing ---------------------------------------------------------


def explain(image: str, error: str, **kw: Any) -> str:
    kw.setdefault("image_present", True)
    kw.setdefault("ryuk_disabled", True)
    var = brokers.ENV_RABBITMQ_IMAGE
    return brokers.explain_container_failure(image, error, image_var=var, **kw)


def test_an_image_not_built_says_how_to_build_it() -> None:
    line = explain("hexbus/rabbitmq:3.10.8", "not built", image_present=False)
    assert line == (
        "image hexbus/rabbitmq:3.10.8 is not built on this machine: run `python3 "
        "scripts/containers.py build` (`make test-containers` builds it too), or set "
        "HEXBUS_TEST_RABBITMQ_IMAGE to another image"
    )


def test_ryuk_not_disabled_says_which_variable_to_set() -> None:
    error = (
        "500 Server Error for http+docker://localhost/v1.41/images/create?tag=0.8.1&"
        'fromImage=testcontainers%2Fryuk: Internal Server Error ("Get https://...")\nmore'
    )
    line = explain(
        "hexbus/rabbitmq:3.10.8", error, ryuk_disabled=False, ryuk_image="testcontainers/ryuk:0.8.1"
    )
    assert line.startswith(
        "testcontainers' Ryuk reaper (testcontainers/ryuk:0.8.1) could not start"
    )
    assert line.endswith("set TESTCONTAINERS_RYUK_DISABLED=true")
    assert "\n" not in line


def test_both_missing_are_named_in_one_line() -> None:
    line = explain(
        "hexbus/kafka:4.1.1",
        "not built",
        image_present=False,
        ryuk_disabled=False,
        ryuk_present=False,
    )
    assert "hexbus/kafka:4.1.1 is not built" in line
    assert "TESTCONTAINERS_RYUK_DISABLED=true" in line
    assert "\n" not in line


def test_an_official_image_that_cannot_be_pulled() -> None:
    line = explain(
        "rabbitmq:3.13", "404 Client Error: pull access denied\ndetails", image_present=False
    )
    assert line == (
        "image rabbitmq:3.13 is not on this machine and could not be pulled (404 Client "
        "Error: pull access denied): pull or build it, or set HEXBUS_TEST_RABBITMQ_IMAGE "
        "to another image"
    )


def test_any_other_failure_keeps_its_first_line() -> None:
    assert explain("hexbus/kafka:4.1.1", "port is already allocated\ntrace") == (
        "container of hexbus/kafka:4.1.1 did not start: port is already allocated"
    )


# -- what the containers are asked to be ---------------------------------------------------


def test_kafka_advertises_the_published_port_on_127_0_0_1() -> None:
    env = brokers.KAFKA.environment(45678)
    assert brokers.KAFKA.inner_port(45678) == 45678, "same port inside and out"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:45678"
    assert env["KAFKA_LISTENERS"].startswith("PLAINTEXT://0.0.0.0:45678,")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # as the native broker
    cid = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16 and not cid.startswith("-")
    assert brokers.KAFKA.environment(45678)["CLUSTER_ID"] != cid, "one cluster per container"


def test_the_default_images_carry_the_native_paths_versions() -> None:
    pom = (REPO / "scripts" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match is not None
    assert f"hexbus/kafka:{match.group(1)}" == brokers.DEFAULT_KAFKA_IMAGE
    kafka_file = (REPO / "docker" / "kafka" / "Dockerfile").read_text()
    assert f"ARG KAFKA_VERSION={match.group(1)}" in kafka_file
    rabbit_file = (REPO / "docker" / "rabbitmq" / "Dockerfile").read_text()
    assert f"ARG RABBITMQ_VERSION={brokers.RABBITMQ_VERSION}\n" in rabbit_file
    postgres_file = (REPO / "docker" / "postgres" / "Dockerfile").read_text()
    assert f"ARG POSTGRES_VERSION={brokers.POSTGRES_VERSION}\n" in postgres_file
    assert containers_script.images() == {
        "rabbitmq": brokers.DEFAULT_RABBITMQ_IMAGE,
        "kafka": brokers.DEFAULT_KAFKA_IMAGE,
        "postgres": brokers.DEFAULT_POSTGRES_IMAGE,
    }


def test_containers_run_environment_forces_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(brokers.ENV_RABBITMQ, URL)
    monkeypatch.setenv(brokers.ENV_KAFKA, "127.0.0.1:9092")
    monkeypatch.setenv(brokers.ENV_POSTGRES, PG_URL)
    env = containers_script.container_env({"rabbitmq": "r:1", "kafka": "k:1", "postgres": "p:1"})
    assert brokers.ENV_RABBITMQ not in env and brokers.ENV_KAFKA not in env
    assert brokers.ENV_POSTGRES not in env
    assert env[brokers.ENV_BROKERS] == "containers"
    assert env["TESTCONTAINERS_RYUK_DISABLED"] == "true"
    assert env[brokers.ENV_RABBITMQ_IMAGE] == "r:1" and env[brokers.ENV_KAFKA_IMAGE] == "k:1"
    assert env[brokers.ENV_POSTGRES_IMAGE] == "p:1"


def test_redact_masks_only_the_password() -> None:
    assert brokers.redact(URL) == "amqp://app:***@127.0.0.1:5999/"
    assert brokers.redact("amqp://127.0.0.1:5672/vh") == "amqp://127.0.0.1:5672/vh"
    assert brokers.redact("127.0.0.1:9092,127.0.0.1:9094") == "127.0.0.1:9092,127.0.0.1:9094"


# -- the readiness probes (through a port proxy, a connect alone proves nothing) -----------


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """``serve(reply)`` -> a port on 127.0.0.1 whose connections ``reply`` handles."""
    sockets: list[socket.socket] = []

    def serve(reply: Callable[[socket.socket], None]) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sockets.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    reply(conn)

        threading.Thread(target=loop, daemon=True).start()
        return int(listener.getsockname()[1])

    yield serve
    for s in sockets:
        s.close()


def _accept_and_close(conn: socket.socket) -> None:
    """What Docker's port proxy does while the broker behind it is down."""
    conn.recv(64)


def test_amqp_probe_wants_connection_start(server: Any) -> None:
    def connection_start(conn: socket.socket) -> None:
        assert conn.recv(8) == b"AMQP\x00\x00\x09\x01"
        conn.sendall(b"\x01\x00\x00\x00\x00\x01\x00" + b"\x00\x0a\x00\x0a")

    assert brokers.amqp_answers(server(connection_start))
    assert not brokers.amqp_answers(server(_accept_and_close))


def test_kafka_probe_wants_its_correlation_id_back(server: Any) -> None:
    def api_versions(conn: socket.socket) -> None:
        size = struct.unpack(">i", conn.recv(4))[0]
        request = conn.recv(size)
        api_key, _, correlation = struct.unpack(">hhi", request[:8])
        assert api_key == 18
        conn.sendall(struct.pack(">iih", 6, correlation, 35))  # UNSUPPORTED_VERSION answers too

    assert brokers.kafka_answers(server(api_versions))
    assert not brokers.kafka_answers(server(_accept_and_close))


def test_postgres_probe_wants_an_authentication_request(server: Any) -> None:
    def startup(answer: bytes) -> Callable[[socket.socket], None]:
        def reply(conn: socket.socket) -> None:
            size = struct.unpack(">i", conn.recv(4))[0]
            body = conn.recv(size - 4)
            assert struct.unpack(">i", body[:4])[0] == 196608  # protocol 3.0
            assert b"user\x00hexbus\x00" in body
            conn.sendall(answer)

        return reply

    scram = b"R" + struct.pack(">ii", 23, 10) + b"SCRAM-SHA-256\x00\x00"
    starting = b"E" + struct.pack(">i", 30) + b"SFATAL\x00C57P03\x00Mstarting up\x00\x00"
    assert brokers.postgres_answers(server(startup(scram)))
    assert not brokers.postgres_answers(server(startup(starting)))
    assert not brokers.postgres_answers(server(_accept_and_close))


# -- PostgreSQL: the same lookup ------------------------------------------------------------


def test_postgres_comes_from_its_variable_first_announced_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(brokers.ENV_POSTGRES, PG_URL)
    # the outbox's own variable is not one the fixture reads
    monkeypatch.setenv("HEXBUS_OUTBOX_URL", "sqlite+aiosqlite:///x.db")
    lookup = Lookup(tmp_path, brokers.POSTGRES)
    assert lookup.address() == PG_URL
    assert lookup.containers == [] and lookup.natives == []
    assert lookup.lines == [
        "PostgreSQL from $HEXBUS_TEST_POSTGRES_URL "
        "(postgresql+asyncpg://hexbus:***@127.0.0.1:5433/hexbus)"
    ]
    assert "s3cret" not in repr(brokers.broker_source("postgres"))
    lookup.close()


def test_postgres_in_a_container_carries_the_containers_password(tmp_path: Path) -> None:
    lookup = Lookup(tmp_path, brokers.POSTGRES)
    address = lookup.address()
    env = brokers.POSTGRES.environment(41234)
    assert lookup.images == [brokers.DEFAULT_POSTGRES_IMAGE]
    assert address == (
        f"postgresql+asyncpg://hexbus:{env['POSTGRES_PASSWORD']}@127.0.0.1:41234/hexbus"
    )
    assert env["POSTGRES_USER"] == env["POSTGRES_DB"] == "hexbus"
    assert brokers.POSTGRES.inner_port(41234) == 5432
    assert env["POSTGRES_PASSWORD"] not in " ".join(lookup.lines)
    lookup.close()
    assert lookup.containers[0].stopped


def test_postgres_natively_when_no_engine_and_none_at_all_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookup = Lookup(tmp_path, brokers.POSTGRES, docker=False)
    assert lookup.address() == PG_URL
    assert [n.kind for n in lookup.natives] == ["postgres"]
    lookup.close()
    monkeypatch.setenv("CI", "true")
    failing = Lookup(tmp_path, brokers.POSTGRES, docker=False, native_fails=True)
    with pytest.raises(pytest.fail.Exception, match="no PostgreSQL available"):
        failing.address()


def test_database_urls_for_asyncpg_and_for_another_database() -> None:
    databases = importlib.import_module("hexbus.testing.databases")
    assert databases.asyncpg_dsn(PG_URL) == "postgresql://hexbus:s3cret@127.0.0.1:5433/hexbus"
    assert databases.asyncpg_dsn("postgresql://u@h/d") == "postgresql://u@h/d"
    with pytest.raises(ValueError, match=r"not a PostgreSQL URL: sqlite"):
        databases.asyncpg_dsn("sqlite+aiosqlite:///x.db")
    with pytest.raises(ValueError) as err:
        databases.asyncpg_dsn("mysql://u:s3cret@h/d")
    assert "s3cret" not in str(err.value)
    assert databases.with_database(PG_URL + "?ssl=disable", "t_1") == (
        "postgresql+asyncpg://hexbus:s3cret@127.0.0.1:5433/t_1?ssl=disable"
    )


def test_sqlite_url_is_a_file_of_the_tests_own(tmp_path: Path, sqlite_url: str) -> None:
    assert sqlite_url == f"sqlite+aiosqlite:///{tmp_path / 'hexbus.db'}"
