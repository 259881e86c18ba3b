"""Orchestration: starting, stopping and addressing the nodes of a state's layouts.

Broker-specific work is behind :data:`BROKERS` (one :class:`Broker` per kind): RabbitMQ,
Kafka, and PostgreSQL (the outbox's database; single-node sets only, and not in secure sets).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import install, kafka, postgres, rabbitmq, tls
from .nodes import KINDS, Layout, Node
from .processes import BrokerError, log, port_answers, signal_group
from .state import State


def _install_kafka(state: State) -> None:
    install.java_bin()
    install.ensure_kafka_libs(state)


@dataclass(frozen=True)
class Broker:
    """What orchestration needs of one broker kind."""

    install: Callable[[State], None]
    launch: Callable[[Node, Layout], None]
    wait: Callable[[Node, float], None]
    stop: Callable[[Node], None]
    env_line: Callable[[Sequence[Node]], str]
    #: SIGTERM every node of the kind at once before stopping each (a Kafka quorum that
    #: loses its voters one by one stalls each remaining node's shutdown).
    stop_together: bool = False


BROKERS: dict[str, Broker] = {
    "rabbitmq": Broker(
        install.ensure_rabbitmq, rabbitmq.launch, rabbitmq.wait, rabbitmq.stop, rabbitmq.env_line
    ),
    "kafka": Broker(
        _install_kafka, kafka.launch, kafka.wait, kafka.stop, kafka.env_line, stop_together=True
    ),
    "postgres": Broker(
        install.ensure_postgres, postgres.launch, postgres.wait, postgres.stop, postgres.env_line
    ),
}


#: Kinds a secure set (``up --secure``) does not start: their tests need no TLS.
UNSECURED = frozenset({"postgres"})


def layouts(state: State) -> list[Layout]:
    return [Layout(state, size) for size in (1, 3)]


def running_size(state: State) -> int | None:
    """The size of the layout that runs (at most one does), if any."""
    for lay in layouts(state):
        if lay.running():
            return lay.size
    return None


def _claim_name(state: State) -> None:
    """Record the state's node name; refuse to rename nodes that run under another."""
    recorded = state.recorded_name()
    if (
        recorded
        and recorded != state.name
        and any(n.is_running() for lay in layouts(state) for n in lay.of_kind("rabbitmq"))
    ):
        raise BrokerError(
            f"this state's RabbitMQ nodes run as {recorded}; stop them "
            f"(`{state.command} down`) before renaming them to {state.name}"
        )
    state.record_name()


def start_nodes(
    layout: Layout, nodes: Sequence[Node], timeout: float, *, may_move: bool
) -> list[Node]:
    """Start the stopped ones among *nodes* (launch all, then wait for all); return those.

    *may_move*: whether kinds with no running node may move off recorded ports that got
    taken (``up``/``run``); ``restart``/``start`` never move (see nodes.py).
    """
    to_start: list[Node] = []
    for n in nodes:
        running = n.running_pid()
        if running is not None:
            if port_answers(n.port):
                log(f"{n.name}: already running (pid {running[0]}), reusing")
                continue
            log(f"{n.name}: pid alive but port {n.port} does not answer; restarting it")
            stop_nodes([n])
        to_start.append(n)
    if not to_start:
        return []
    kinds = [k for k in KINDS if any(n.kind == k for n in to_start)]
    cold = {k for k in kinds if may_move and not any(m.is_running() for m in layout.of_kind(k))}

    def owned(key: str, port: int) -> bool:
        return key == "epmd_port" and rabbitmq.epmd_owns(layout.dir, port)

    _claim_name(layout.state)
    layout.plan_ports(kinds, cold, owned)
    layout.check_ports(to_start, owned)
    for k in kinds:
        BROKERS[k].install(layout.state)
    deadline = time.monotonic() + timeout
    started: list[Node] = []
    try:
        for n in to_start:
            BROKERS[n.kind].launch(n, layout)
            started.append(n)
        for n in to_start:
            BROKERS[n.kind].wait(n, deadline)
            log(f"{n.name}: ready")
        rabbits = layout.of_kind("rabbitmq")
        if len(rabbits) > 1 and "rabbitmq" in kinds:
            rabbitmq.join(rabbits, deadline + 60)
    except BaseException:
        if started:
            log("start-up failed; stopping what this command started")
            with contextlib.suppress(BaseException):
                stop_and_clean(layout.state, started)
        raise
    return started


def stop_nodes(nodes: Sequence[Node]) -> None:
    """Stop nodes: Kafka all at once, then RabbitMQ in reverse order (node 1 stops last)."""
    errors: list[str] = []
    for kind in reversed(KINDS):
        mine = [n for n in nodes if n.kind == kind]
        broker = BROKERS[kind]
        if broker.stop_together:
            for n in mine:
                running = n.running_pid()
                if running:
                    signal_group(running[0], signal.SIGTERM)
        for n in sorted(mine, key=lambda n: -n.index):
            try:
                broker.stop(n)
            except BrokerError as e:
                errors.append(str(e))
    for n in nodes:
        if not n.is_running():
            n.pidfile.unlink(missing_ok=True)
    if errors:
        raise BrokerError("; ".join(errors))


def env_lines(layout: Layout) -> list[str]:
    """``HEXBUS_*=...`` for the running nodes of *layout* (the addresses they really use)."""
    lines = []
    for kind in KINDS:
        nodes = [n for n in layout.of_kind(kind) if n.is_running()]
        if nodes:
            lines.append(BROKERS[kind].env_line(nodes))
    return lines


def resolve(state: State, name: str, size_hint: int | None) -> tuple[Layout, list[Node]]:
    """Map NAME (rabbitmq, kafka, kafka-2, rabbitmq-1, ...) to the nodes of a layout."""
    kind, _, idx = name.partition("-")
    if kind not in KINDS or (idx and not idx.isdigit()):
        raise BrokerError(
            f"unknown broker name {name!r}; use rabbitmq, kafka, postgres, rabbitmq-N or kafka-N"
        )
    size = size_hint or running_size(state) or (3 if idx and int(idx) > 1 else 1)
    if idx and int(idx) > size:
        size = 3
    layout = Layout(state, size)
    nodes = layout.select(kind, int(idx) if idx else None)
    if not nodes:
        raise BrokerError(f"no node {name!r} in the {size}-node layout")
    return layout, nodes


def up(
    state: State, size: int, only: str | None, timeout: float
) -> tuple[Layout, list[Node], float]:
    """Start the *size*-node layout (or its *only* kind); reuse what already runs."""
    other = Layout(state, 3 if size == 1 else 1)
    if other.running():
        raise BrokerError(f"the {other.size}-node brokers are running; run `down` first")
    if only is not None and not Layout(state, size).of_kind(only):
        raise BrokerError(f"the {size}-node sets have no {only}; it runs in single-node sets")
    secure = tls.load(state) is not None
    if only in UNSECURED and secure:
        raise BrokerError(f"secure sets have no {only}; use a state directory of its own")
    t0 = time.monotonic()
    with state.lock():
        layout = Layout(state, size)
        wanted = [
            n
            for n in layout.nodes
            if (only is None or n.kind == only) and not (secure and n.kind in UNSECURED)
        ]
        started = start_nodes(layout, wanted, timeout, may_move=True)
    return layout, started, time.monotonic() - t0


def stop_and_clean(state: State, nodes: Sequence[Node]) -> None:
    """Stop *nodes*, then the state's epmds if nothing needs them any more (lock held)."""
    try:
        stop_nodes(nodes)
    finally:
        rabbitmq.stop_idle_epmds(state, layouts(state))


def down(state: State) -> None:
    with state.lock():
        stop_and_clean(state, [n for lay in layouts(state) for n in lay.nodes])
