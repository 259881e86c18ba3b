"""Nodes and their ports: which broker processes a layout has and where they listen.

A layout is the single-node set (``c1``) or the 3-node clusters (``c3``) of one state
directory. Its ports are chosen once and recorded in ``<layout>/ports.json``:

* a port never used before is the broker's default (5672, 9092, ...) when that is free,
  else a free port from a range below the kernel's ephemeral ports, starting at an offset
  derived from the state directory (so two checkouts rarely even try the same port);
* a cold start (``up``/``run`` while no node of that broker runs) keeps the recorded
  ports, moving only off those someone else took meanwhile -- nothing holds the old
  address yet, and ``up`` prints the new one;
* starting one node while its clients or peers still know its address (``restart``,
  ``start NAME``, a peer of a running cluster) reuses the recorded ports or fails naming
  the port and what to do: a broker that came back elsewhere would strand every client.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .processes import (
    BrokerError,
    ephemeral_low,
    log,
    pid_alive,
    port_answers,
    port_free,
    port_owner,
    proc_starttime,
)
from .state import State

KINDS = ("rabbitmq", "kafka", "postgres")

#: Per kind and layout size, each node's port keys with their defaults (None: no default,
#: always chosen from the state's own range -- nobody but our nodes ever dials it).
PORT_DEFAULTS: dict[str, dict[int, list[dict[str, int | None]]]] = {
    "rabbitmq": {
        size: [{"port": 5672 + i, "dist_port": 25672 + i, "epmd_port": None} for i in range(size)]
        for size in (1, 3)
    },
    "kafka": {
        size: [{"port": 9092 + 2 * i, "controller_port": 9093 + 2 * i} for i in range(size)]
        for size in (1, 3)
    },
    # The outbox's database: single-node sets only (no cluster layout of it is needed).
    "postgres": {1: [{"port": 5432}]},
}
#: Keys with one value for every node of a kind in a layout: the nodes of a RabbitMQ
#: cluster find each other through the same Erlang port mapper (epmd).
SHARED_KEYS = frozenset({"epmd_port"})
#: Never chosen for a port without a default: other checkouts may want these later.
_RESERVED = {
    p
    for kinds in PORT_DEFAULTS.values()
    for nodes in kinds.values()
    for d in nodes
    for p in d.values()
    if p is not None
} | {4369}

#: ``owned(key, port)``: whether *port* is held by a process of this layout that stays up
#: while nodes start (the layout's epmd), so it counts as usable although it is bound.
Owned = Callable[[str, int], bool]


def kinds_of(size: int) -> list[str]:
    """The kinds a *size*-node layout has (PostgreSQL only in the single-node one)."""
    return [k for k in KINDS if size in PORT_DEFAULTS[k]]


def _nobody(key: str, port: int) -> bool:
    return False


def candidate_ports(seed: int) -> Iterator[int]:
    """Ports for a state to try, below the ephemeral range (outgoing connections never
    land there), starting at an offset derived from *seed*."""
    lo, hi = 20000, ephemeral_low()
    if hi - lo < 2000:
        hi = 30000
    span = hi - lo
    start = seed % span
    for i in range(span):
        port = lo + (start + i) % span
        if port not in _RESERVED:
            yield port


def pick_port(seed: int, used: Collection[int]) -> int:
    """The first free candidate port not in *used*."""
    for port in candidate_ports(seed):
        if port not in used and port_free(port):
            return port
    raise BrokerError("could not find a free TCP port on 127.0.0.1 below the ephemeral range")


@dataclass
class Node:
    """One broker process of a layout (``rabbitmq-1``, ``kafka-3``, ...)."""

    kind: str  # "rabbitmq" | "kafka" | "postgres"
    index: int  # 1-based
    size: int  # layout size (1 or 3)
    state: State
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def layout_dir(self) -> Path:
        return self.state.layout_dir(self.size)

    @property
    def dir(self) -> Path:
        return self.state.node_root(self.kind, self.size) / self.name

    @property
    def pidfile(self) -> Path:
        return self.layout_dir / f"{self.name}.pid.json"

    @property
    def port(self) -> int:
        return self.ports["port"]

    @property
    def erl_node(self) -> str:
        """The Erlang node name (RabbitMQ): unique per state directory, see State.name."""
        suffix = "" if self.size == 1 else f"-{self.index}"
        return f"{self.state.name}{suffix}@localhost"

    @property
    def logfile(self) -> Path:
        if self.kind == "rabbitmq":
            return self.dir / "log" / f"{self.launched_as()}.log"
        if self.kind == "postgres":
            return self.dir / "postgres.log"
        return self.dir / "logs" / "server.log"

    def launched_as(self) -> str:
        """The Erlang node name the running process was launched with (else erl_node)."""
        rec = self.read_pid()
        if rec is None:
            return self.erl_node
        name = rec.get("erl_node")
        if isinstance(name, str):
            return name
        return f"hexbus{'' if self.size == 1 else self.index}@localhost"  # older harness

    def read_pid(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_pid(self, pid: int, **extra: object) -> None:
        """Record the process we launched (pid + start time: only it will ever be signalled)."""
        self.layout_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "pid": pid,
            "starttime": proc_starttime(pid),
            "ports": self.ports,
            "name": self.name,
            **extra,
        }
        self.pidfile.write_text(json.dumps(info))

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


class Layout:
    """The nodes of one layout of a state, with their recorded ports."""

    def __init__(self, state: State, size: int) -> None:
        self.state = state
        self.size = size
        self.dir = state.layout_dir(size)
        saved: dict[str, dict[str, int]] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(self.ports_file.read_text())
            if isinstance(loaded, dict):
                saved = loaded
        self.nodes = [
            Node(kind, i, size, state, dict(saved.get(f"{kind}-{i}") or {}))
            for kind in kinds_of(size)
            for i in range(1, size + 1)
        ]

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    def of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind]

    def select(self, kind: str, index: int | None = None) -> list[Node]:
        return [n for n in self.of_kind(kind) if index is None or n.index == index]

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.is_running()]

    def save_ports(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {n.name: n.ports for n in self.nodes if n.ports}
        tmp = self.ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.ports_file)

    # -- ports ---------------------------------------------------------------------------
    def plan_ports(
        self, kinds: Collection[str], cold: Collection[str], owned: Owned = _nobody
    ) -> None:
        """Give the nodes of *kinds* all their ports and record them (see module doc).

        Kinds in *cold* have no running node: a recorded port someone else took is moved.
        Elsewhere recorded ports stay as they are (``check_ports`` then refuses them).
        """
        used = {p for n in self.nodes for p in n.ports.values()}

        def usable(key: str, port: int) -> bool:
            return port_free(port) or (key in SHARED_KEYS and owned(key, port))

        def choose(node: Node, key: str, default: int | None, old: int | None) -> int:
            if default is not None and default not in used and port_free(default):
                new = default
            else:
                new = pick_port(self.state.seed, used)
            taken = old if old is not None else default
            if taken is not None and taken != new:
                what = "recorded" if old is not None else "default"
                log(
                    f"{node.name}: {what} port {taken} ({key}) is taken by "
                    f"{port_owner(taken)}; using {new}"
                )
            used.add(new)
            return new

        for kind in kinds:
            nodes = self.of_kind(kind)
            for key in SHARED_KEYS & set(PORT_DEFAULTS[kind][self.size][0]):
                values = {n.ports[key] for n in nodes if key in n.ports}
                value = values.pop() if len(values) == 1 else None
                if value is None or (kind in cold and not usable(key, value)):
                    value = choose(nodes[0], key, None, value)
                for n in nodes:
                    n.ports[key] = value
            for n in nodes:
                for key, default in PORT_DEFAULTS[kind][self.size][n.index - 1].items():
                    old = n.ports.get(key)
                    if key in SHARED_KEYS or (
                        old is not None and (kind not in cold or usable(key, old))
                    ):
                        continue
                    n.ports[key] = choose(n, key, default, old)
        for n in self.nodes:  # the main port first: `status` shows it first
            order = list(PORT_DEFAULTS[n.kind][self.size][n.index - 1])
            n.ports = {k: n.ports[k] for k in order if k in n.ports}
        self.save_ports()

    def check_ports(self, nodes: Collection[Node], owned: Owned = _nobody) -> None:
        """Refuse to start *nodes* if one of their recorded ports is taken (say which)."""
        for n in nodes:
            for key, port in n.ports.items():
                if port_free(port) or (key in SHARED_KEYS and owned(key, port)):
                    continue
                raise BrokerError(
                    f"{n.name}: port {port} ({key}) on 127.0.0.1, recorded for these brokers "
                    f"in {self.ports_file}, is taken by {port_owner(port)}. A broker that "
                    "restarts keeps its ports (its clients reconnect there), so nothing was "
                    f"started. Free port {port}, or stop these brokers "
                    f"(`{self.state.command} down`) and start them again with "
                    f"`{self.state.command} up`, which moves off taken ports."
                )
