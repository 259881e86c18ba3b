"""RabbitMQ nodes: configuration, Erlang identity, start, readiness, stop and clustering.

Each state directory gets Erlang plumbing of its own, because Erlang's is machine-global:
node names must be unique per port mapper (epmd), so the nodes are named after the state
(``State.name``), register with an epmd the layout starts on a port of its own, use a
cookie in a home directory of their own, and the ``rabbitmqctl`` client takes any free
distribution port (instead of Debian's fixed 35672..35682, shared by every checkout).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import tls
from .install import rabbit_tool
from .nodes import Layout, Node
from .processes import (
    BrokerError,
    log,
    pid_alive,
    port_answers,
    proc_starttime,
    service_user,
    signal_group,
    tail,
    terminate,
    wait_dead,
)
from .state import RABBIT_USER, State

STOP_TIMEOUT = 45.0
#: The epmd an older harness started for every checkout (tracked in ``<state>/epmd.pid.json``).
LEGACY_EPMD_PORT = 4369


def _home(node: Node) -> Path:
    """$HOME of the layout's nodes and their rabbitmqctl: where the Erlang cookie lives."""
    return node.dir.parent / "erlang-home"


def _as_rabbit_user() -> dict[str, object]:
    user = service_user(RABBIT_USER)
    if not user:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def node_env(
    node: Node, erl_node: str | None = None, epmd_port: int | None = None
) -> dict[str, str]:
    """The environment of the node's server and of every rabbitmqctl addressing it."""
    d = node.dir
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(_home(node)),
        "RABBITMQ_NODENAME": erl_node or node.erl_node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(node.port),
        "RABBITMQ_DIST_PORT": str(node.ports["dist_port"]),
        "RABBITMQ_CTL_DIST_PORT_MIN": "0",  # 0..0: the CLI listens on any free port
        "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(d / "beam.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port or node.ports["epmd_port"]),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    if tls.load(node.state) is not None:  # TLS only: the listener is in rabbitmq.conf
        del env["RABBITMQ_NODE_IP_ADDRESS"], env["RABBITMQ_NODE_PORT"]
    return env


def _prepare(node: Node) -> None:
    d = node.dir
    home = _home(node)
    for sub in (d / "mnesia", d / "log", home):
        sub.mkdir(parents=True, exist_ok=True)
    (d / "enabled_plugins").write_text("[].\n")
    (d / "rabbitmq-env.conf").write_text(
        "# intentionally empty: everything comes from the environment\n"
    )
    (d / "rabbitmq.conf").write_text(
        "# written by scripts/brokers.py\n"
        "loopback_users.guest = true\n"
        "disk_free_limit.absolute = 50MB\n"
        "log.file.level = info\n"
        "log.console = false\n"
    )
    secure = tls.load(node.state)
    if secure is not None:
        with open(d / "rabbitmq.conf", "a") as conf:
            conf.write(_tls_conf(node, secure))
    cookie = home / ".erlang.cookie"
    if not cookie.exists():
        # Written here, not by the first node to boot: three nodes booting at once would
        # each write a different one, and could then not cluster.
        cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(20)))
        cookie.chmod(0o400)
    user = service_user(RABBIT_USER)
    if user:
        for path in [d.parent, d, home, *home.iterdir(), *d.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chown(path, user.pw_uid, user.pw_gid)


def _tls_conf(node: Node, secure: tls.Secure) -> str:
    """A secure set's node: AMQP over TLS only, on the node's port; one user, ``hexbus``."""
    files = tls.copy_for(secure, node.dir)
    return (
        "# --secure (scripts/harness/tls.py): TLS only, client certificates optional\n"
        "listeners.tcp = none\n"
        f"listeners.ssl.default = 127.0.0.1:{node.port}\n"
        f"ssl_options.cacertfile = {files.ca}\n"
        f"ssl_options.certfile = {files.server_cert}\n"
        f"ssl_options.keyfile = {files.server_key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        f"default_user = {tls.CLIENT_USER}\n"
        f"default_pass = {secure.rabbitmq_password}\n"
    )


def rabbitmqctl(
    node: Node,
    *args: str,
    timeout: float = 60.0,
    erl_node: str | None = None,
    epmd_port: int | None = None,
) -> subprocess.CompletedProcess[str]:
    name = erl_node or node.erl_node
    cmd = [rabbit_tool("rabbitmqctl"), "-q", "-n", name, *args]
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(
            cmd,
            check=False,
            env=node_env(node, name, epmd_port),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            cwd="/",
            **_as_rabbit_user(),
        )  # type: ignore[call-overload]
        return result
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(
            cmd, 124, "", f"rabbitmqctl timed out after {timeout:.0f}s"
        )


# -- epmd ------------------------------------------------------------------------------
def _epmd_bin() -> str:
    return shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"


def _epmd_record(where: Path) -> tuple[int, str | None, int] | None:
    """(pid, start time, port) of the epmd recorded in *where* if it still runs."""
    try:
        data = json.loads((where / "epmd.pid.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
        return None
    st = data.get("starttime")
    port = data.get("port", LEGACY_EPMD_PORT)  # an older harness always used 4369
    return data["pid"], st if isinstance(st, str) else None, int(port)


def epmd_owns(layout_dir: Path, port: int) -> bool:
    """Whether the epmd this layout started runs on *port* (then the port is ours)."""
    rec = _epmd_record(layout_dir)
    return rec is not None and rec[2] == port and pid_alive(rec[0], rec[1])


def _ensure_epmd(node: Node) -> None:
    """Start the layout's own epmd on its recorded port (tracked), unless it runs."""
    port = node.ports["epmd_port"]
    if epmd_owns(node.layout_dir, port):
        return
    epmd = _epmd_bin()
    if not Path(epmd).exists():
        return  # erl starts one itself (on ERL_EPMD_PORT)
    proc = subprocess.Popen(
        [epmd, "-address", "127.0.0.1", "-port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not port_answers(port):
        if proc.poll() is not None:
            raise BrokerError(f"epmd could not listen on 127.0.0.1:{port} (exit {proc.returncode})")
        time.sleep(0.1)
    record = {"pid": proc.pid, "starttime": proc_starttime(proc.pid), "port": port}
    (node.layout_dir / "epmd.pid.json").write_text(json.dumps(record))


def _epmd_names(port: int) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            [_epmd_bin(), "-port", str(port), "-names"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    return ""


def stop_idle_epmds(state: State, layouts: Sequence[Layout]) -> None:
    """Stop the epmds this state started once none of its RabbitMQ nodes runs.

    One per layout, plus the one an older harness kept in the state root. An epmd that
    still has names registered (some Erlang node relies on it) is left running.
    """
    running = {lay.dir for lay in layouts if any(n.is_running() for n in lay.of_kind("rabbitmq"))}
    for where in [*(lay.dir for lay in layouts), state.root]:
        rec = _epmd_record(where)
        if rec is None or where in running or (where == state.root and running):
            continue
        pid, st, port = rec
        if pid_alive(pid, st) and "name " in _epmd_names(port):
            continue
        terminate(pid, st, 5)
        (where / "epmd.pid.json").unlink(missing_ok=True)


# -- lifecycle -------------------------------------------------------------------------
def launch(node: Node, layout: Layout) -> None:
    _prepare(node)
    _ensure_epmd(node)
    with open(node.dir / "log" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [rabbit_tool("rabbitmq-server")],
            env=node_env(node),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_rabbit_user(),
        )  # type: ignore[call-overload]
    node.write_pid(proc.pid, erl_node=node.erl_node, epmd_port=node.ports["epmd_port"])
    log(f"{node.name}: launched {node.erl_node} pid {proc.pid} on 127.0.0.1:{node.port}")


def wait(node: Node, deadline: float) -> None:
    """Return once the node has booted and accepts AMQP connections."""
    last = ""
    stdout_log = node.dir / "log" / "stdout.log"
    while True:
        if not node.is_running():
            raise BrokerError(
                f"{node.name} exited during start-up; see {node.logfile} and "
                f"{stdout_log}:\n{tail(stdout_log)}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(
                f"{node.name} not ready within the deadline ({last.strip()[:300]}); "
                f"see {node.logfile}"
            )
        step = min(left, 15)
        r = rabbitmqctl(
            node, "await_startup", "--timeout", str(max(1, int(step))), timeout=step + 20
        )
        if r.returncode == 0 and port_answers(node.port):
            return
        last = r.stderr or r.stdout
        time.sleep(1)


def stop(node: Node) -> None:
    running = node.running_pid()
    if running is None:
        node.pidfile.unlink(missing_ok=True)
        return
    pid, st = running
    log(f"{node.name}: stopping pid {pid}")
    rec = node.read_pid() or {}
    erl_node, epmd_port = rec.get("erl_node"), rec.get("epmd_port")
    if isinstance(erl_node, str) and isinstance(epmd_port, int):
        r = rabbitmqctl(node, "stop", timeout=STOP_TIMEOUT, erl_node=erl_node, epmd_port=epmd_port)
        if r.returncode != 0:
            log(
                f"{node.name}: rabbitmqctl stop failed "
                f"({(r.stderr or r.stdout).strip()[:200]}); using signals"
            )
    else:  # launched by an older harness: its Erlang identity is unknown
        log(f"{node.name}: started by an older brokers.py; stopping it with signals")
    if not wait_dead(pid, st, time.monotonic() + 15):
        terminate(pid, st, 20)
    # the shell wrapper may exit before beam; make sure the group is gone
    if pid_alive(pid, st):
        signal_group(pid, signal.SIGKILL)
    node.pidfile.unlink(missing_ok=True)


def join(nodes: Sequence[Node], deadline: float) -> None:
    """Join nodes 2..N to node 1 once (3-node layout); a marker names who joined whom."""
    first = nodes[0]
    for n in nodes[1:]:
        marker = n.dir / ".joined"
        joined = f"{n.erl_node} -> {first.erl_node}\n"
        with contextlib.suppress(OSError):
            if marker.read_text() == joined:
                continue
        log(f"{n.name}: joining cluster of {first.erl_node}")
        for args in (("stop_app",), ("join_cluster", first.erl_node), ("start_app",)):
            left = deadline - time.monotonic()
            r = rabbitmqctl(n, *args, timeout=max(5.0, left))
            if r.returncode != 0:
                raise BrokerError(
                    f"{n.name}: rabbitmqctl {' '.join(args)} failed: "
                    f"{(r.stderr or r.stdout).strip()[:400]}; see {n.logfile}"
                )
        marker.write_text(joined)


def env_line(nodes: Sequence[Node]) -> str:
    secure = tls.load(nodes[0].state)
    if secure is not None:  # one line per variable
        return (
            f"HEXBUS_RABBITMQ_URL=amqps://{tls.CLIENT_USER}:{secure.rabbitmq_password}"
            f"@127.0.0.1:{nodes[0].port}/\n"
            f"HEXBUS_RABBITMQ_SSL_CAFILE={secure.authority.ca}"
        )
    return f"HEXBUS_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:{nodes[0].port}/"
