#!/usr/bin/env python3
"""Start real RabbitMQ and Apache Kafka natively (no Docker) for hexbus tests.

Stdlib only; runs with any Python >= 3.11 (no venv needed).

    python3 scripts/brokers.py up [--nodes 1|3] [--only rabbitmq|kafka]
    python3 scripts/brokers.py down
    python3 scripts/brokers.py restart NAME      # rabbitmq, kafka, kafka-2, ...
    python3 scripts/brokers.py stop NAME | start NAME
    python3 scripts/brokers.py status | env
    python3 scripts/brokers.py run [--nodes N] [--only X] -- CMD ARGS...

`up` and `env` print ``HEXBUS_RABBITMQ_URL=...`` and
``HEXBUS_KAFKA_BOOTSTRAP_SERVERS=...`` as their last stdout lines, so
``export $(python3 scripts/brokers.py env)`` works; `up` precedes them with a
``# ...`` timing line (use ``set -a; eval "$(... up)"; set +a``).
Progress goes to stderr.

State (pid files, data, logs, Kafka jars) lives in ``<repo>/.cache/brokers``:
``c1/`` holds the single-node brokers, ``c3/`` the 3-node clusters, and
``kafka/libs`` the Kafka jars fetched with Maven (``scripts/kafka/pom.xml``).
Only processes recorded in our pid files are ever stopped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
STATE = REPO / ".cache" / "brokers"
KAFKA_POM = SCRIPTS / "kafka" / "pom.xml"
KAFKA_LOG4J = SCRIPTS / "kafka" / "log4j2.properties"
KAFKA_LIBS = STATE / "kafka" / "libs"
KAFKA_MARKER = KAFKA_LIBS / ".complete"

RABBIT_USER = "rabbitmq"
RABBIT_HOME = Path("/var/lib/rabbitmq")
DEBIAN_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")

DEFAULT_TIMEOUT = float(os.environ.get("HEXBUS_BROKERS_TIMEOUT", "120"))
STOP_TIMEOUT = 45.0
APT_TIMEOUT = 900.0
MVN_TIMEOUT = 600.0

KAFKA_READY_MARKERS = ("Kafka Server started", "started (kafka.server.KafkaRaftServer)")


class BrokerError(Exception):
    """A broker could not be installed, started or stopped."""


def log(msg: str) -> None:
    print(f"[brokers] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process helpers


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); the command name (field 2) may contain spaces
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, starttime: str | None = None) -> bool:
    """True if *pid* runs (not a zombie) and, if given, started at *starttime*."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, now reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except OSError:
        return False
    return starttime is None or _proc_starttime(pid) == starttime


def port_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_answers(port, 0.2)


def free_port(avoid: set[int]) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid and port < 60000:
            return port
    raise BrokerError("could not find a free TCP port on 127.0.0.1")


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group we created for *pid* (start_new_session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_dead(pid: int, starttime: str | None, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not pid_alive(pid, starttime):
            return True
        time.sleep(0.2)
    return not pid_alive(pid, starttime)


def terminate(pid: int, starttime: str | None, grace: float) -> None:
    """SIGTERM the group, then SIGKILL it after *grace* seconds."""
    if not pid_alive(pid, starttime):
        return
    signal_group(pid, signal.SIGTERM)
    if wait_dead(pid, starttime, time.monotonic() + grace):
        return
    log(f"pid {pid} ignored SIGTERM for {grace:.0f}s; sending SIGKILL")
    signal_group(pid, signal.SIGKILL)
    if not wait_dead(pid, starttime, time.monotonic() + 10):
        raise BrokerError(f"pid {pid} survived SIGKILL")


@contextlib.contextmanager
def state_lock(timeout: float = 300.0) -> Iterator[None]:
    """Serialise concurrent invocations that change broker state."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / ".lock", "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BrokerError(f"another brokers.py holds {STATE / '.lock'}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text[-lines:])


# --------------------------------------------------------------------------
# node model


@dataclass
class Node:
    kind: str  # "rabbitmq" | "kafka"
    index: int  # 1-based
    size: int  # cluster size (1 or 3)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def cluster_dir(self) -> Path:
        return STATE / f"c{self.size}"

    @property
    def dir(self) -> Path:
        if self.kind == "rabbitmq":
            return rabbit_base(self.size) / self.name
        return self.cluster_dir / self.name

    @property
    def pidfile(self) -> Path:
        return self.cluster_dir / f"{self.name}.pid.json"

    @property
    def port(self) -> int:
        return self.ports["port"]

    @property
    def logfile(self) -> Path:
        if self.kind == "rabbitmq":
            return self.dir / "log" / f"{self.erl_node}.log"
        return self.dir / "logs" / "server.log"

    @property
    def erl_node(self) -> str:
        return f"hexbus{'' if self.size == 1 else self.index}@localhost"

    def read_pid(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def running_pid(self) -> tuple[int, str | None] | None:
        data = self.read_pid()
        if not data:
            return None
        pid = data.get("pid")
        st = data.get("starttime")
        if not isinstance(pid, int):
            return None
        st = st if isinstance(st, str) else None
        return (pid, st) if pid_alive(pid, st) else None

    def is_running(self) -> bool:
        return self.running_pid() is not None

    def is_healthy(self) -> bool:
        return self.is_running() and port_answers(self.port)


RABBIT_DEFAULTS = {1: [(5672, 25672)], 3: [(5672, 25672), (5673, 25673), (5674, 25674)]}
KAFKA_DEFAULTS = {1: [(9092, 9093)], 3: [(9092, 9093), (9094, 9095), (9096, 9097)]}


def rabbit_base(size: int) -> Path:
    """Where RabbitMQ node dirs live: under .cache unless the rabbitmq user can't reach it."""
    default = STATE / f"c{size}"
    user = rabbit_user()
    if user is None:
        return default
    p = STATE.resolve()
    for parent in [p, *p.parents]:
        if parent.exists():
            mode = parent.stat().st_mode
            if not mode & 0o001 and parent.stat().st_uid != user.pw_uid:
                digest = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
                return RABBIT_HOME / "hexbus-brokers" / digest / f"c{size}"
    return default


def rabbit_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RABBIT_USER)
    except KeyError:
        return None


def cluster(size: int) -> list[Node]:
    """The nodes of the single-node (size 1) or 3-node layout, with their ports."""
    cdir = STATE / f"c{size}"
    pfile = cdir / "ports.json"
    saved: dict[str, dict[str, int]] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(pfile.read_text())
    nodes: list[Node] = []
    for kind, defaults in (("rabbitmq", RABBIT_DEFAULTS), ("kafka", KAFKA_DEFAULTS)):
        for i, (p, p2) in enumerate(defaults[size], start=1):
            n = Node(kind, i, size)
            second = "dist_port" if kind == "rabbitmq" else "controller_port"
            n.ports = saved.get(n.name) or {"port": p, second: p2}
            nodes.append(n)
    return nodes


def replan_ports(nodes: list[Node], kinds: set[str]) -> None:
    """Before starting a stopped cluster: default ports, moving off any someone else took."""
    defaults = {"rabbitmq": RABBIT_DEFAULTS, "kafka": KAFKA_DEFAULTS}
    for n in nodes:
        if n.kind in kinds:
            port, second = defaults[n.kind][n.size][n.index - 1]
            n.ports = {
                "port": port,
                ("dist_port" if n.kind == "rabbitmq" else "controller_port"): second,
            }
    used: set[int] = set()
    for n in nodes:
        used.update(n.ports.values())
    for n in nodes:
        if n.kind not in kinds:
            continue
        for key, port in list(n.ports.items()):
            if not port_free(port):
                new = free_port(used)
                used.add(new)
                log(f"{n.name}: port {port} ({key}) is taken by another process; using {new}")
                n.ports[key] = new
    save_ports(nodes)


def save_ports(nodes: list[Node]) -> None:
    if not nodes:
        return
    cdir = nodes[0].cluster_dir
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "ports.json").write_text(json.dumps({n.name: n.ports for n in nodes}, indent=1))


def write_pid(node: Node, pid: int) -> None:
    node.cluster_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "starttime": _proc_starttime(pid), "ports": node.ports, "name": node.name}
    node.pidfile.write_text(json.dumps(info))


# --------------------------------------------------------------------------
# RabbitMQ


def rabbit_tool(tool: str) -> str:
    if (DEBIAN_RABBIT_BIN / tool).exists():
        return str(DEBIAN_RABBIT_BIN / tool)
    found = shutil.which(tool)
    if not found:
        raise BrokerError(f"{tool} not found")
    return found


def ensure_rabbitmq_installed() -> None:
    if (DEBIAN_RABBIT_BIN / "rabbitmq-server").exists() or shutil.which("rabbitmq-server"):
        return
    if not shutil.which("apt-get"):
        raise BrokerError(
            "rabbitmq-server is not installed and apt-get is unavailable; install RabbitMQ >= 3.10"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise BrokerError(
                "rabbitmq-server is not installed; run as root or install it: "
                "apt-get install rabbitmq-server"
            )
        prefix = ["sudo", "-n"]
    log("installing rabbitmq-server with apt-get (service auto-start suppressed via policy-rc.d)")
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if os.geteuid() == 0 and not policy.exists():
        policy.write_text(
            "#!/bin/sh\n# hexbus brokers.py: do not start services during install\nexit 101\n"
        )
        policy.chmod(0o755)
        created_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    aptlog = STATE / "apt.log"
    STATE.mkdir(parents=True, exist_ok=True)
    try:
        with open(aptlog, "w") as out:
            for cmd in (
                [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=120", "update"],
                [
                    *prefix,
                    "apt-get",
                    "-o",
                    "DPkg::Lock::Timeout=120",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "rabbitmq-server",
                ],
            ):
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                try:
                    rc = subprocess.run(
                        cmd,
                        check=False,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        timeout=APT_TIMEOUT,
                    ).returncode
                except subprocess.TimeoutExpired:
                    raise BrokerError(
                        f"apt-get timed out after {APT_TIMEOUT:.0f}s; see {aptlog}"
                    ) from None
                if rc != 0:
                    raise BrokerError(
                        f"`{' '.join(cmd)}` failed (exit {rc}); see {aptlog}:\n{tail(aptlog)}"
                    )
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    # On a systemd host the package may still have enabled/started its own
    # service; we never rely on it (our nodes use their own names and, if it
    # holds 5672, another port).
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        subprocess.run(
            ["systemctl", "disable", "--now", "rabbitmq-server"],
            check=False,
            capture_output=True,
            timeout=60,
        )


def rabbit_env(node: Node) -> dict[str, str]:
    d = node.dir
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(RABBIT_HOME) if rabbit_user() else os.environ.get("HOME", "/tmp"),
        "RABBITMQ_NODENAME": node.erl_node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(node.port),
        "RABBITMQ_DIST_PORT": str(node.ports["dist_port"]),
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(d / "beam.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    return env


def rabbit_prepare(node: Node) -> None:
    d = node.dir
    for sub in ("mnesia", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
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
    user = rabbit_user()
    if user:
        for path in [d.parent, d, *d.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chown(path, user.pw_uid, user.pw_gid)


def _as_rabbit_user() -> dict[str, object]:
    user = rabbit_user()
    if not user:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def rabbitmqctl(node: Node, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    cmd = [rabbit_tool("rabbitmqctl"), "-q", "-n", node.erl_node, *args]
    try:
        result: subprocess.CompletedProcess[str] = subprocess.run(
            cmd,
            check=False,
            env=rabbit_env(node),
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


def ensure_epmd() -> None:
    """Start epmd ourselves (on 127.0.0.1, tracked) unless one already runs."""
    if port_answers(4369):
        return
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    if not Path(epmd).exists():
        return  # erl will start one itself
    proc = subprocess.Popen(
        [epmd, "-address", "127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not port_answers(4369):
        time.sleep(0.1)
    (STATE / "epmd.pid.json").write_text(
        json.dumps({"pid": proc.pid, "starttime": _proc_starttime(proc.pid)})
    )


def maybe_stop_epmd() -> None:
    pfile = STATE / "epmd.pid.json"
    try:
        data = json.loads(pfile.read_text())
    except (OSError, ValueError):
        return
    if any(n.is_running() for size in (1, 3) for n in cluster(size) if n.kind == "rabbitmq"):
        return
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [epmd, "-names"], check=False, capture_output=True, text=True, timeout=5
        ).stdout
        if "name " in out and "hexbus" not in out:
            return  # someone else's Erlang node uses it
    terminate(int(data["pid"]), data.get("starttime"), 5)
    pfile.unlink(missing_ok=True)


def rabbit_launch(node: Node) -> None:
    rabbit_prepare(node)
    ensure_epmd()
    with open(node.dir / "log" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            [rabbit_tool("rabbitmq-server")],
            env=rabbit_env(node),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_rabbit_user(),
        )  # type: ignore[call-overload]
    write_pid(node, proc.pid)
    log(f"{node.name}: launched {node.erl_node} pid {proc.pid} on 127.0.0.1:{node.port}")


def rabbit_wait(node: Node, deadline: float) -> None:
    last = ""
    while True:
        if not node.is_running():
            raise BrokerError(
                f"{node.name} exited during start-up; see {node.logfile} and "
                f"{node.dir / 'log' / 'stdout.log'}:\n{tail(node.dir / 'log' / 'stdout.log')}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(
                f"{node.name} not ready within the deadline ({last.strip()[:300]}); "
                f"see {node.logfile}"
            )
        r = rabbitmqctl(
            node,
            "await_startup",
            "--timeout",
            str(max(1, int(min(left, 15)))),
            timeout=min(left, 15) + 20,
        )
        if r.returncode == 0 and port_answers(node.port):
            return
        last = r.stderr or r.stdout
        time.sleep(1)


def rabbit_stop(node: Node) -> None:
    running = node.running_pid()
    if running is None:
        node.pidfile.unlink(missing_ok=True)
        return
    pid, st = running
    log(f"{node.name}: stopping pid {pid}")
    r = rabbitmqctl(node, "stop", timeout=STOP_TIMEOUT)
    if r.returncode != 0:
        log(
            f"{node.name}: rabbitmqctl stop failed "
            f"({(r.stderr or r.stdout).strip()[:200]}); using signals"
        )
    if not wait_dead(pid, st, time.monotonic() + 15):
        terminate(pid, st, 20)
    # the shell wrapper may exit before beam; make sure the group is gone
    signal_group(pid, signal.SIGKILL) if pid_alive(pid, st) else None
    node.pidfile.unlink(missing_ok=True)


def rabbit_join(nodes: list[Node], deadline: float) -> None:
    """Join nodes 2..N to node 1 once (marker file), for the 3-node layout."""
    first = nodes[0]
    for n in nodes[1:]:
        marker = n.dir / ".joined"
        if marker.exists():
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
        marker.write_text("joined\n")


# --------------------------------------------------------------------------
# Kafka


def ensure_kafka_libs() -> None:
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    if (
        KAFKA_MARKER.exists()
        and KAFKA_MARKER.read_text().strip() == pom_hash
        and list(KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    ):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "Maven (`mvn`) is needed to fetch Kafka; install it (apt-get install maven)"
        )
    if KAFKA_LIBS.exists():
        shutil.rmtree(KAFKA_LIBS)
    KAFKA_LIBS.mkdir(parents=True)
    mlog = STATE / "kafka" / "mvn.log"
    log(f"fetching Kafka jars with Maven (log: {mlog})")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(KAFKA_POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={KAFKA_LIBS}",
        "-DincludeScope=runtime",
    ]
    with open(mlog, "w") as out:
        try:
            rc = subprocess.run(
                cmd,
                check=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=MVN_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            raise BrokerError(f"Maven timed out after {MVN_TIMEOUT:.0f}s; see {mlog}") from None
    if rc != 0 or not list(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven could not fetch Kafka (exit {rc}); see {mlog}:\n{tail(mlog)}")
    KAFKA_MARKER.write_text(pom_hash + "\n")


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "`java` (17+) is needed to run Kafka; install it "
            "(apt-get install openjdk-17-jre-headless)"
        )
    return found


def kafka_cluster_id(node: Node) -> str:
    f = node.cluster_dir / "kafka.cluster-id"
    if f.exists():
        return f.read_text().strip()
    while True:  # Kafka's Uuid.randomUuid(): base64url, no padding, not starting with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    node.cluster_dir.mkdir(parents=True, exist_ok=True)
    f.write_text(cid + "\n")
    return cid


def kafka_properties(node: Node, peers: list[Node]) -> str:
    voters = ",".join(f"{p.index}@127.0.0.1:{p.ports['controller_port']}" for p in peers)
    rf = node.size
    isr = 1 if rf == 1 else 2
    return "\n".join(
        [
            "# written by scripts/brokers.py",
            "process.roles=broker,controller",
            f"node.id={node.index}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.ports['controller_port']}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={node.dir / 'data'}",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            "transaction.state.log.num.partitions=10",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "num.recovery.threads.per.data.dir=1",
            "",
        ]
    )


def kafka_java_cmd(node: Node, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
    return [
        java_bin(),
        heap,
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
        f"-Dkafka.logs.dir={node.dir / 'logs'}",
        "-cp",
        f"{KAFKA_LIBS}/*",
        main,
        *args,
    ]


def kafka_launch(node: Node, peers: list[Node]) -> None:
    (node.dir / "data").mkdir(parents=True, exist_ok=True)
    (node.dir / "logs").mkdir(parents=True, exist_ok=True)
    props = node.dir / "server.properties"
    props.write_text(kafka_properties(node, peers))
    if not (node.dir / "data" / "meta.properties").exists():
        log(f"{node.name}: formatting KRaft storage")
        cmd = kafka_java_cmd(
            node,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            kafka_cluster_id(node),
            "-c",
            str(props),
            "--ignore-formatted",
            heap="-Xmx256m",
        )
        try:
            r = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(f"{node.name}: kafka-storage format timed out") from None
        if r.returncode != 0:
            raise BrokerError(
                f"{node.name}: kafka storage format failed: {(r.stderr or r.stdout)[-1500:]}"
            )
    logfile = node.logfile
    offset = logfile.stat().st_size if logfile.exists() else 0
    (node.dir / "log-offset").write_text(str(offset))
    with open(node.dir / "logs" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            kafka_java_cmd(node, "kafka.Kafka", str(props)),
            cwd=str(node.dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    write_pid(node, proc.pid)
    log(
        f"{node.name}: launched pid {proc.pid} on 127.0.0.1:{node.port} "
        f"(controller {node.ports['controller_port']})"
    )


def kafka_started_in_log(node: Node) -> bool:
    try:
        offset = int((node.dir / "log-offset").read_text())
        with open(node.logfile, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return any(m in text for m in KAFKA_READY_MARKERS)


def kafka_wait(node: Node, deadline: float) -> None:
    while True:
        if not node.is_running():
            raise BrokerError(
                f"{node.name} exited during start-up; see {node.logfile} and "
                f"{node.dir / 'logs' / 'stdout.log'}:\n{tail(node.dir / 'logs' / 'stdout.log')}"
                f"\n{tail(node.logfile, 8)}"
            )
        if port_answers(node.port) and kafka_started_in_log(node):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"{node.name} not ready within the deadline; see {node.logfile}")
        time.sleep(0.3)


def kafka_stop(node: Node) -> None:
    running = node.running_pid()
    if running is not None:
        pid, st = running
        log(f"{node.name}: stopping pid {pid}")
        terminate(pid, st, 30)
    node.pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# orchestration


def start_nodes(nodes: list[Node], all_nodes: list[Node], timeout: float) -> list[Node]:
    """Start the stopped ones among *nodes* (launch all, then wait for all); return those."""
    to_start: list[Node] = []
    for n in nodes:
        if n.is_running():
            if port_answers(n.port):
                log(f"{n.name}: already running (pid {n.running_pid()[0]}), reusing")  # type: ignore[index]
                continue
            log(f"{n.name}: pid alive but port {n.port} does not answer; restarting it")
            stop_nodes([n])
        to_start.append(n)
    if not to_start:
        return []
    kinds = {n.kind for n in to_start}
    cluster_stopped = {
        k for k in kinds if not any(m.is_running() for m in all_nodes if m.kind == k)
    }
    if cluster_stopped:
        replan_ports(all_nodes, cluster_stopped)
    else:
        save_ports(all_nodes)
    for n in to_start:
        for p in n.ports.values():
            if not port_free(p):
                raise BrokerError(
                    f"{n.name}: port {p} on 127.0.0.1 is taken by a process we did not start; "
                    f"free it or run `down` and start the whole cluster again"
                )
    if "rabbitmq" in kinds:
        ensure_rabbitmq_installed()
    if "kafka" in kinds:
        java_bin()
        ensure_kafka_libs()
    deadline = time.monotonic() + timeout
    started: list[Node] = []
    try:
        kafka_peers = [m for m in all_nodes if m.kind == "kafka"]
        for n in to_start:
            if n.kind == "rabbitmq":
                rabbit_launch(n)
            else:
                kafka_launch(n, kafka_peers)
            started.append(n)
        for n in to_start:
            (rabbit_wait if n.kind == "rabbitmq" else kafka_wait)(n, deadline)
            log(f"{n.name}: ready")
        rabbits = [m for m in all_nodes if m.kind == "rabbitmq"]
        if len(rabbits) > 1 and any(n.kind == "rabbitmq" for n in to_start):
            rabbit_join(rabbits, deadline + 60)
    except BaseException:
        if started:
            log("start-up failed; stopping what this command started")
            with contextlib.suppress(BaseException):
                stop_nodes(started)
        raise
    return started


def stop_nodes(nodes: Sequence[Node]) -> None:
    """Stop nodes (RabbitMQ in reverse order so node 1 stops last; Kafka all at once)."""
    errors: list[str] = []
    kafkas = [n for n in nodes if n.kind == "kafka" and n.is_running()]
    for n in kafkas:  # SIGTERM all Kafka nodes together so a 3-node quorum shuts down cleanly
        running = n.running_pid()
        if running:
            signal_group(running[0], signal.SIGTERM)
    for n in kafkas:
        try:
            kafka_stop(n)
        except BrokerError as e:
            errors.append(str(e))
    for n in sorted((n for n in nodes if n.kind == "rabbitmq"), key=lambda n: -n.index):
        try:
            rabbit_stop(n)
        except BrokerError as e:
            errors.append(str(e))
    for n in nodes:
        if not n.is_running():
            n.pidfile.unlink(missing_ok=True)
    if errors:
        raise BrokerError("; ".join(errors))


def running_size() -> int | None:
    for size in (1, 3):
        if any(n.is_running() for n in cluster(size)):
            return size
    return None


def env_lines(size: int) -> list[str]:
    nodes = [n for n in cluster(size) if n.is_running()]
    lines = []
    rabbits = [n for n in nodes if n.kind == "rabbitmq"]
    kafkas = [n for n in nodes if n.kind == "kafka"]
    if rabbits:
        lines.append(f"HEXBUS_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:{rabbits[0].port}/")
    if kafkas:
        lines.append(
            "HEXBUS_KAFKA_BOOTSTRAP_SERVERS=" + ",".join(f"127.0.0.1:{n.port}" for n in kafkas)
        )
    return lines


def resolve(name: str, size_hint: int | None) -> tuple[int, list[Node]]:
    """Map NAME (rabbitmq, kafka, kafka-2, rabbitmq-1, ...) to nodes of a layout."""
    kind, _, idx = name.partition("-")
    if kind not in ("rabbitmq", "kafka") or (idx and not idx.isdigit()):
        raise BrokerError(
            f"unknown broker name {name!r}; use rabbitmq, kafka, rabbitmq-N or kafka-N"
        )
    size = size_hint or running_size() or (3 if idx and int(idx) > 1 else 1)
    if idx and int(idx) > size:
        size = 3
    nodes = [n for n in cluster(size) if n.kind == kind and (not idx or n.index == int(idx))]
    if not nodes:
        raise BrokerError(f"no node {name!r} in the {size}-node layout")
    return size, nodes


def up(size: int, only: str | None, timeout: float) -> tuple[list[Node], float]:
    other = 3 if size == 1 else 1
    if any(n.is_running() for n in cluster(other)):
        raise BrokerError(f"the {other}-node brokers are running; run `down` first")
    t0 = time.monotonic()
    all_nodes = cluster(size)
    wanted = [n for n in all_nodes if only is None or n.kind == only]
    with state_lock():
        started = start_nodes(wanted, all_nodes, timeout)
    return started, time.monotonic() - t0


def print_up(size: int, started: list[Node], secs: float) -> None:
    what = ", ".join(n.name for n in started) or "nothing (all reused)"
    print(f"# hexbus brokers ready in {secs:.1f} s ({size}-node; started: {what})", flush=True)
    for line in env_lines(size):
        print(line, flush=True)


def cmd_status() -> int:
    for size in (1, 3):
        nodes = cluster(size)
        if not nodes[0].cluster_dir.exists():
            continue
        print(f"{size}-node layout ({nodes[0].cluster_dir}):")
        for n in nodes:
            r = n.running_pid()
            ports = " ".join(f"{k}={v}" for k, v in n.ports.items())
            if r:
                health = "ready" if port_answers(n.port) else "NOT ANSWERING"
                print(f"  {n.name:<11} running pid {r[0]:<8} {ports}  {health}  log {n.logfile}")
            else:
                print(f"  {n.name:<11} stopped                {ports}")
    if not STATE.exists():
        print("nothing started yet")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    child: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, child = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(
        prog="brokers.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("up", "run"):
        p = sub.add_parser(name)
        p.add_argument("--nodes", type=int, choices=(1, 3), default=1)
        p.add_argument("--only", choices=("rabbitmq", "kafka"))
        p.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT, help="start-up deadline, seconds"
        )
    sub.add_parser("down")
    for name in ("restart", "stop", "start"):
        p = sub.add_parser(name)
        p.add_argument("name")
        p.add_argument("--nodes", type=int, choices=(1, 3))
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    sub.add_parser("status")
    sub.add_parser("env")
    args = ap.parse_args(argv)
    if child and args.cmd != "run":
        ap.error("`--` is only for `run`")

    try:
        if args.cmd == "up":
            started, secs = up(args.nodes, args.only, args.timeout)
            print_up(args.nodes, started, secs)
            return 0
        if args.cmd == "run":
            return cmd_run(args.nodes, args.only, args.timeout, child)
        if args.cmd == "down":
            with state_lock():
                for size in (1, 3):
                    stop_nodes(cluster(size))
                maybe_stop_epmd()
            log("all brokers stopped")
            return 0
        if args.cmd in ("restart", "stop", "start"):
            size, nodes = resolve(args.name, args.nodes)
            with state_lock():
                t0 = time.monotonic()
                if args.cmd in ("restart", "stop"):
                    stop_nodes(nodes)
                if args.cmd == "stop":
                    maybe_stop_epmd()
                if args.cmd in ("restart", "start"):
                    start_nodes(nodes, cluster(size), args.timeout)
                log(f"{args.cmd} {args.name}: done in {time.monotonic() - t0:.1f} s")
            for line in env_lines(size):
                print(line)
            return 0
        if args.cmd == "status":
            return cmd_status()
        if args.cmd == "env":
            current = running_size()
            if current is None:
                log("no brokers running (use `up`)")
                return 1
            for line in env_lines(current):
                print(line)
            return 0
    except BrokerError as e:
        log(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 2


def cmd_run(size: int, only: str | None, timeout: float, child: list[str]) -> int:
    if not child:
        log("ERROR: usage: brokers.py run [--nodes N] -- CMD ARGS...")
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started: list[Node] = []
    rc = 1
    try:
        started, secs = up(size, only, timeout)
        log(f"brokers ready in {secs:.1f} s; running: {' '.join(child)}")
        env = dict(os.environ)
        for line in env_lines(size):
            key, _, value = line.partition("=")
            env[key] = value
            log(line)
        proc = subprocess.Popen(child, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C already reached the child via the terminal; a SIGTERM to us
            # did not, so escalate: SIGINT, SIGTERM, SIGKILL, each bounded.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for sig, grace in (
                (signal.SIGINT, 10.0),
                (signal.SIGTERM, 10.0),
                (signal.SIGKILL, 10.0),
            ):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = 130
    except BrokerError as e:
        log(f"ERROR: {e}")
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except FileNotFoundError as e:
        log(f"ERROR: cannot run {child[0]!r}: {e}")
        rc = 127
    finally:
        if started:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            log("stopping the brokers this run started: " + ", ".join(n.name for n in started))
            try:
                with state_lock():
                    stop_nodes(started)
                    maybe_stop_epmd()
            except BrokerError as e:
                log(f"ERROR while stopping: {e}")
                rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
