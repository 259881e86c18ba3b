"""The native broker harness (scripts/harness) without brokers: ports, identity, env.

Why these matter: the harness shares the machine with other brokers and with other
checkouts of hexbus. A default port someone else holds must be replaced by a free one,
recorded, and kept by every restart (clients reconnect to the address they know); node
names must differ per checkout (Erlang refuses a duplicate name). Brokers "run" here as
pid files pointing at this test process, so nothing is started.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

cli: Any = importlib.import_module("harness.cli")
cluster: Any = importlib.import_module("harness.cluster")
nodes: Any = importlib.import_module("harness.nodes")
processes: Any = importlib.import_module("harness.processes")
state_mod: Any = importlib.import_module("harness.state")


@pytest.fixture(autouse=True)
def _no_state_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(state_mod.STATE_ENV, raising=False)


@pytest.fixture
def listener() -> Iterator[Any]:
    """``take()`` -> a port on 127.0.0.1 held by a listening socket until the test ends."""
    held: list[socket.socket] = []

    def take(port: int = 0) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        held.append(s)
        return int(s.getsockname()[1])

    yield take
    for s in held:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_state(tmp_path: Path, name: str = "a", **kw: Any) -> Any:
    return state_mod.State(root=tmp_path / name / ".cache" / "brokers", **kw)


def kafka_defaults(monkeypatch: pytest.MonkeyPatch, port: int, controller: int) -> None:
    """Pretend Kafka's default ports are these (the real 9092 may be anyone's here)."""
    monkeypatch.setitem(
        nodes.PORT_DEFAULTS, "kafka", {1: [{"port": port, "controller_port": controller}]}
    )


def pretend_running(node: Any) -> None:
    """A pid file naming this process: the harness then treats the node as running."""
    node.write_pid(os.getpid())


# -- ports -------------------------------------------------------------------------------
def test_free_default_ports_are_used_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, controller = free_port(), free_port()
    kafka_defaults(monkeypatch, port, controller)
    layout = nodes.Layout(make_state(tmp_path), 1)
    layout.plan_ports(["kafka"], cold={"kafka"})
    assert layout.select("kafka")[0].ports == {"port": port, "controller_port": controller}
    saved = json.loads(layout.ports_file.read_text())
    assert saved["kafka-1"] == {"port": port, "controller_port": controller}


def test_a_taken_default_port_is_replaced_by_a_free_one_below_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Any
) -> None:
    taken, controller = listener(), free_port()
    kafka_defaults(monkeypatch, taken, controller)
    layout = nodes.Layout(make_state(tmp_path), 1)
    layout.plan_ports(["kafka"], cold={"kafka"})
    port = layout.select("kafka")[0].port
    assert port != taken
    assert 20000 <= port < max(processes.ephemeral_low(), 30000)
    assert processes.port_free(port)
    # A later invocation (another process) reads the same choice back.
    assert nodes.Layout(layout.state, 1).select("kafka")[0].port == port


def test_restart_keeps_recorded_ports_even_when_the_default_is_free_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Any
) -> None:
    taken = listener()
    kafka_defaults(monkeypatch, taken, free_port())
    state = make_state(tmp_path)
    first = nodes.Layout(state, 1)
    first.plan_ports(["kafka"], cold={"kafka"})
    recorded = dict(first.select("kafka")[0].ports)
    kafka_defaults(monkeypatch, free_port(), free_port())  # the defaults are free now

    again = nodes.Layout(state, 1)
    again.plan_ports(["kafka"], cold=set())  # restart/start: never moves
    assert again.select("kafka")[0].ports == recorded
    again.check_ports(again.select("kafka"))  # still free: no error
    cold = nodes.Layout(state, 1)
    cold.plan_ports(["kafka"], cold={"kafka"})  # `up`: keeps what is recorded and free
    assert cold.select("kafka")[0].ports == recorded


def test_a_restart_refuses_a_recorded_port_that_got_taken_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Any
) -> None:
    kafka_defaults(monkeypatch, free_port(), free_port())
    state = make_state(tmp_path)
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["kafka"], cold={"kafka"})
    port = listener(layout.select("kafka")[0].port)  # someone else took it meanwhile

    again = nodes.Layout(state, 1)
    again.plan_ports(["kafka"], cold=set())
    assert again.select("kafka")[0].port == port
    with pytest.raises(processes.BrokerError) as err:
        again.check_ports(again.select("kafka"))
    message = str(err.value)
    assert f"port {port} " in message
    assert str(again.ports_file) in message
    assert "down" in message and "up" in message


def test_a_cold_start_moves_off_a_recorded_port_that_got_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Any
) -> None:
    default = listener()
    kafka_defaults(monkeypatch, default, free_port())
    state = make_state(tmp_path)
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["kafka"], cold={"kafka"})
    recorded = listener(layout.select("kafka")[0].port)

    again = nodes.Layout(state, 1)
    again.plan_ports(["kafka"], cold={"kafka"})
    moved = again.select("kafka")[0].port
    assert moved not in (recorded, default)
    again.check_ports(again.select("kafka"))
    assert json.loads(again.ports_file.read_text())["kafka-1"]["port"] == moved


def test_three_node_layout_ports_are_distinct_and_rabbitmq_shares_one_epmd(
    tmp_path: Path,
) -> None:
    layout = nodes.Layout(make_state(tmp_path), 3)
    layout.plan_ports(["rabbitmq", "kafka"], cold={"rabbitmq", "kafka"})
    rabbits = layout.of_kind("rabbitmq")
    assert len({n.ports["epmd_port"] for n in rabbits}) == 1
    assert rabbits[0].ports["epmd_port"] not in (4369, *range(5672, 5675))
    own = [p for n in layout.nodes for k, p in n.ports.items() if k != "epmd_port"]
    assert len(own) == len(set(own)) == 12
    assert all(next(iter(n.ports)) == "port" for n in layout.nodes)


def test_ports_recorded_by_an_older_harness_are_kept_and_completed(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.layout_dir(1).mkdir(parents=True)
    old = {"rabbitmq-1": {"port": 5672, "dist_port": 25672}}
    (state.layout_dir(1) / "ports.json").write_text(json.dumps(old))
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["rabbitmq"], cold=set())
    ports = layout.select("rabbitmq")[0].ports
    assert ports["port"] == 5672 and ports["dist_port"] == 25672
    assert isinstance(ports["epmd_port"], int)


def test_candidate_ports_avoid_defaults_and_the_ephemeral_range() -> None:
    low = processes.ephemeral_low()
    some = list(nodes.candidate_ports(12345))[:2000]
    assert all(20000 <= p < max(low, 30000) for p in some)
    assert not {4369, 5672, 9092, 25672} & set(nodes.candidate_ports(0))


# -- identity ----------------------------------------------------------------------------
def test_each_checkout_gets_its_own_node_names_and_port_offset(tmp_path: Path) -> None:
    a, b = make_state(tmp_path, "a"), make_state(tmp_path, "b")
    assert a.name != b.name
    assert a.name.startswith("hexbus-") and b.name.startswith("hexbus-")
    assert a.seed != b.seed
    assert next(nodes.candidate_ports(a.seed)) != next(nodes.candidate_ports(b.seed))
    names = {n.erl_node for s in (a, b) for n in nodes.Layout(s, 1).of_kind("rabbitmq")}
    names |= {n.erl_node for s in (a, b) for n in nodes.Layout(s, 3).of_kind("rabbitmq")}
    assert len(names) == 8
    assert "hexbus@localhost" not in names
    # Stable for the same path (a later command addresses the same nodes).
    assert make_state(tmp_path, "a").name == a.name


def test_an_explicit_name_is_recorded_for_later_commands(tmp_path: Path) -> None:
    named = make_state(tmp_path, name_override="hexbus")
    named.record_name()
    later = make_state(tmp_path)
    assert later.name == "hexbus"
    assert nodes.Layout(later, 1).select("rabbitmq")[0].erl_node == "hexbus@localhost"
    with pytest.raises(processes.BrokerError, match="node name"):
        state_mod.State.from_options(str(tmp_path / "x"), "bad name@host")


def test_the_state_dir_comes_from_the_option_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert state_mod.State.from_options().root == REPO / ".cache" / "brokers"
    monkeypatch.setenv(state_mod.STATE_ENV, str(tmp_path / "env"))
    assert state_mod.State.from_options().root == tmp_path / "env"
    assert state_mod.State.from_options(str(tmp_path / "opt")).root == tmp_path / "opt"
    ap = cli._parser()
    for argv in (["--state-dir", "X", "up"], ["up", "--state-dir", "X"]):
        assert ap.parse_args(argv).state_dir == "X"
    assert ap.parse_args(["--name", "n", "restart", "kafka"]).erl_name == "n"
    assert ap.parse_args(["restart", "kafka", "--name", "n"]).name == "kafka"


# -- addressing --------------------------------------------------------------------------
def test_resolve_returns_the_layouts_own_nodes(tmp_path: Path) -> None:
    """Restart once launched a node from a second copy of the layout: the node and its
    peers (the KRaft voters) then disagreed on its ports, and Kafka exited."""
    state = make_state(tmp_path)
    layout, found = cluster.resolve(state, "kafka", None)
    assert found and all(any(n is m for m in layout.nodes) for n in found)
    layout3, found3 = cluster.resolve(state, "kafka-2", None)
    assert layout3.size == 3 and [n.name for n in found3] == ["kafka-2"]
    assert found3[0] is layout3.select("kafka", 2)[0]
    with pytest.raises(processes.BrokerError, match="unknown broker"):
        cluster.resolve(state, "zookeeper", None)
    layout_pg, found_pg = cluster.resolve(state, "postgres", None)
    assert layout_pg.size == 1 and [n.name for n in found_pg] == ["postgres-1"]


def test_env_prints_the_ports_the_brokers_really_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_state(tmp_path)
    assert cli.main(["--state-dir", str(state.root), "env"]) == 1  # nothing runs yet
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["rabbitmq", "kafka"], cold={"rabbitmq", "kafka"})
    for n in layout.of_kind("rabbitmq") + layout.of_kind("kafka"):
        pretend_running(n)
    rabbit, kafka = layout.select("rabbitmq")[0], layout.select("kafka")[0]
    capsys.readouterr()
    assert cli.main(["env", "--state-dir", str(state.root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"HEXBUS_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:{rabbit.port}/",
        f"HEXBUS_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka.port}",
    ]


def test_status_is_what_the_fault_suite_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hexbus.testing.faults finds a restartable broker in `brokers.py status` output; the
    state dir reaches the script through the environment, as under `brokers.py run`."""
    faults = importlib.import_module("hexbus.testing.faults")
    state = make_state(tmp_path)
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["kafka"], cold={"kafka"})
    kafka = layout.select("kafka")[0]
    script = SCRIPTS / "brokers.py"
    monkeypatch.setenv(state_mod.STATE_ENV, str(state.root))
    assert not faults.native_broker_running("kafka", kafka.port, script=script)
    pretend_running(kafka)
    assert faults.native_broker_running("kafka", kafka.port, script=script)
    assert not faults.native_broker_running("kafka", kafka.port + 1, script=script)


def test_the_entry_point_runs_without_the_venv() -> None:
    """`make test` runs scripts/brokers.py with the system python3, before any venv."""
    out = subprocess.run(
        [sys.executable, "-I", str(SCRIPTS / "brokers.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for command in ("up", "down", "run", "restart", "stop", "start", "status", "env"):
        assert command in out
    assert "--state-dir" in out


# -- PostgreSQL (the outbox's database) ---------------------------------------------------
postgres: Any = importlib.import_module("harness.postgres")


@pytest.fixture
def own_node_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node directories under tmp_path even as root (where tmp_path, mode 0700, is out of
    the postgres account's reach and they would move under /var/lib/postgresql)."""
    monkeypatch.setattr(state_mod, "service_user", lambda name: None)


def test_postgres_runs_in_single_node_sets_only(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    assert [n.name for n in nodes.Layout(state, 1).of_kind("postgres")] == ["postgres-1"]
    assert nodes.Layout(state, 3).of_kind("postgres") == []
    assert all(n.kind != "postgres" for n in nodes.Layout(state, 3).nodes)
    with pytest.raises(processes.BrokerError, match="no postgres"):
        cluster.up(state, 3, "postgres", 1.0)


def test_postgres_takes_5432_when_free_else_a_free_port_kept_by_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Any
) -> None:
    free = free_port()
    monkeypatch.setitem(nodes.PORT_DEFAULTS, "postgres", {1: [{"port": free}]})
    mine = nodes.Layout(make_state(tmp_path, "a"), 1)
    mine.plan_ports(["postgres"], cold={"postgres"})
    assert mine.select("postgres")[0].port == free

    taken = listener()  # a decoy set, or the system's PostgreSQL, holds the default
    monkeypatch.setitem(nodes.PORT_DEFAULTS, "postgres", {1: [{"port": taken}]})
    other = nodes.Layout(make_state(tmp_path, "b"), 1)
    other.plan_ports(["postgres"], cold={"postgres"})
    port = other.select("postgres")[0].port
    assert port != taken and processes.port_free(port)
    assert json.loads(other.ports_file.read_text())["postgres-1"] == {"port": port}
    again = nodes.Layout(other.state, 1)
    again.plan_ports(["postgres"], cold=set())
    assert again.select("postgres")[0].port == port


def test_postgres_env_line_carries_the_recorded_password_and_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], own_node_dirs: None
) -> None:
    state = make_state(tmp_path)
    layout = nodes.Layout(state, 1)
    layout.plan_ports(["postgres"], cold={"postgres"})
    pg = layout.select("postgres")[0]
    password = postgres.password(pg)
    assert len(password) >= 20 and password.isalnum()
    assert postgres.password(pg) == password  # made once, then read back
    assert (pg.dir / "password").stat().st_mode & 0o077 == 0
    pretend_running(pg)
    assert cli.main(["env", "--state-dir", str(state.root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"HEXBUS_TEST_POSTGRES_URL=postgresql+asyncpg://hexbus:{password}@127.0.0.1:"
        f"{pg.port}/hexbus"
    ]


def test_postgres_socket_dir_is_the_nodes_own_unless_the_path_is_too_long(
    own_node_dirs: None,
) -> None:
    def node(root: str) -> Any:
        pg = nodes.Layout(state_mod.State(root=Path(root)), 1).select("postgres")[0]
        pg.ports["port"] = 5432
        return pg

    short = node("/srv/co/.cache/brokers")
    assert postgres.socket_dir(short) == short.dir / "run"
    deep, other = node(f"/srv/{'d' * 90}/brokers"), node(f"/srv/{'e' * 90}/brokers")
    fallback = postgres.socket_dir(deep)
    assert str(fallback).startswith("/tmp/hexbus-pg-")
    assert len(str(fallback / ".s.PGSQL.65535.lock")) <= postgres.SOCKET_PATH_MAX
    assert fallback != postgres.socket_dir(other)  # each state its own


def test_server_major_reads_debians_version_line() -> None:
    assert postgres.server_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)") == "15"
    assert postgres.server_major("postgres (PostgreSQL) 9.6.24") == "9"
    with pytest.raises(processes.BrokerError, match="version"):
        postgres.server_major("something else")


def test_logged_env_lines_mask_passwords_but_keep_addresses() -> None:
    mask = processes.mask_secrets
    assert (
        mask("HEXBUS_TEST_POSTGRES_URL=postgresql+asyncpg://hexbus:s3cr3t@127.0.0.1:5432/hexbus")
        == "HEXBUS_TEST_POSTGRES_URL=postgresql+asyncpg://hexbus:***@127.0.0.1:5432/hexbus"
    )
    assert mask("HEXBUS_KAFKA_SASL_PASSWORD=s3cr3t") == "HEXBUS_KAFKA_SASL_PASSWORD=***"
    plain = "HEXBUS_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092,127.0.0.1:9094"
    assert mask(plain) == plain


def test_as_root_unreachable_node_dirs_move_under_the_service_accounts_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initdb and postgres run as `postgres` when we are root: a state under a 0700
    directory (root's home, pytest's tmp) must not hold their files."""
    fake = type("pw", (), {"pw_uid": 12345, "pw_gid": 12345})()
    monkeypatch.setattr(state_mod, "service_user", lambda name: fake)
    (tmp_path / "closed").mkdir(mode=0o700)
    closed = make_state(tmp_path / "closed")
    pg = nodes.Layout(closed, 1).select("postgres")[0]
    assert pg.dir.parent == state_mod.POSTGRES_HOME / "hexbus-brokers" / closed.digest[:8] / "c1"
    assert nodes.Layout(closed, 1).select("kafka")[0].dir.parent == closed.layout_dir(1)


def test_secure_sets_start_no_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secure sets test TLS and SASL of the brokers; the outbox's database is not part."""
    state = make_state(tmp_path)
    state.root.mkdir(parents=True)
    secrets = {"rabbitmq_password": "a", "kafka_password": "b", "broker_password": "c"}
    (state.root / "secure.json").write_text(json.dumps(secrets))
    asked: list[str] = []

    def start_nodes(layout: Any, wanted: Any, timeout: float, *, may_move: bool) -> list[Any]:
        asked.extend(n.name for n in wanted)
        return []

    monkeypatch.setattr(cluster, "start_nodes", start_nodes)
    cluster.up(state, 1, None, 1.0)
    assert asked == ["rabbitmq-1", "kafka-1"]
    with pytest.raises(processes.BrokerError, match="secure sets have no postgres"):
        cluster.up(state, 1, "postgres", 1.0)
    (state.root / "secure.json").unlink()
    asked.clear()
    cluster.up(state, 1, None, 1.0)
    assert asked == ["rabbitmq-1", "kafka-1", "postgres-1"]
