"""A 3-node broker set of scripts/brokers.py, as the cluster tests see it (``Cluster``).

The fixtures that provide one are in conftest.py (which says where the set comes from).

Tests stop and start nodes with ``Cluster.stop`` / ``Cluster.start`` (the harness's
``stop NAME`` / ``start NAME``, which keep each node's ports); after every test each node
of a kind in use runs again (``nodes_back_up``), so a test that failed half-way leaves
no node down for the next one. Without a cluster the tests fail when ``CI=true`` and
are skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "brokers.py"
sys.path.insert(0, str(SCRIPT.parent))

from harness import rabbitmq as harness_rabbitmq  # noqa: E402 - scripts/harness, just added
from harness.nodes import Layout, Node  # noqa: E402
from harness.state import State  # noqa: E402

from hexbus.testing import ConsumerProcess, eventually  # noqa: E402

SIZE = 3
KINDS = ("rabbitmq", "kafka")
#: Start-up deadline of a whole set (a cold start fetches nothing: the harness caches).
START_TIMEOUT = 600.0
#: One node's stop or start (a Kafka node that lost its quorum takes the longest).
NODE_TIMEOUT = 240.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Fail in CI (a cluster test that silently skipped would prove nothing), else skip."""
    if _in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def brokers(state_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``brokers.py --state-dir STATE ARGS`` (its progress is on stderr)."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass
class Cluster:
    """One 3-node state of scripts/brokers.py: addresses, nodes, leaders, stop and start."""

    state_dir: Path
    #: Whether this session started the set (then it stops it, and may start more kinds).
    owned: bool
    #: Kinds the session's tests use: their nodes are brought back up after each test.
    in_use: set[str] = field(default_factory=set)

    @property
    def state(self) -> State:
        return State.from_options(str(self.state_dir))

    def layout(self) -> Layout:
        """Read afresh each time: ports are recorded when nodes start."""
        return Layout(self.state, SIZE)

    def nodes(self, kind: str) -> list[Node]:
        return self.layout().of_kind(kind)

    def node(self, name: str) -> Node:
        kind, _, index = name.partition("-")
        (node,) = self.layout().select(kind, int(index))
        return node

    def port(self, name: str) -> int:
        return self.node(name).port

    def running(self, name: str) -> bool:
        return self.node(name).is_healthy()

    # -- addresses -----------------------------------------------------------------------
    def rabbitmq_url_of(self, name: str, password: str = "guest") -> str:
        return f"amqp://guest:{password}@127.0.0.1:{self.port(name)}/"

    def rabbitmq_urls(self, first: str | None = None) -> list[str]:
        """Every node's URL, ``first`` (a node name) leading when given."""
        names = [n.name for n in self.nodes("rabbitmq")]
        if first is not None:
            names.remove(first)
            names.insert(0, first)
        return [self.rabbitmq_url_of(name) for name in names]

    @property
    def kafka_bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes("kafka"))

    # -- starting and stopping nodes -------------------------------------------------------
    def up(self, kind: str) -> None:
        """Make sure every node of ``kind`` runs (start the kind if this session owns it)."""
        self.in_use.add(kind)
        nodes = self.nodes(kind)
        if all(n.is_healthy() for n in nodes):
            return
        if not self.owned:
            down = [n.name for n in nodes if not n.is_healthy()]
            unavailable(
                f"the 3-node brokers of {self.state_dir} do not run {', '.join(down)}; start "
                f"them: python3 scripts/brokers.py --state-dir {self.state_dir} up --nodes 3"
            )
        began = time.monotonic()
        result = brokers(
            self.state_dir, "up", "--nodes", str(SIZE), "--only", kind, timeout=START_TIMEOUT
        )
        if result.returncode != 0:
            unavailable(
                f"could not start a 3-node {kind} cluster in {self.state_dir} "
                f"(exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        print(f"3-node {kind} started in {time.monotonic() - began:.1f}s", file=sys.stderr)

    async def _node_command(self, command: str, name: str) -> float:
        """``brokers.py stop|start NAME``; returns the seconds it took."""
        began = time.monotonic()
        result = await asyncio.to_thread(
            brokers, self.state_dir, command, "--nodes", str(SIZE), name, timeout=NODE_TIMEOUT
        )
        if result.returncode != 0:
            raise AssertionError(
                f"`brokers.py {command} {name}` failed ({result.returncode}):\n"
                f"{result.stderr[-2000:]}"
            )
        return time.monotonic() - began

    async def stop(self, *names: str) -> float:
        """Stop the nodes in order (the harness stops gracefully); seconds it took."""
        return sum([await self._node_command("stop", name) for name in names])

    async def start(self, *names: str) -> float:
        """Start the nodes in order, each once it answers; seconds it took."""
        return sum([await self._node_command("start", name) for name in names])

    def restore(self) -> list[str]:
        """Start every node of a kind in use that does not run; returns their names."""
        down = [n.name for kind in sorted(self.in_use) for n in self.nodes(kind)]
        down = [name for name in down if not self.running(name)]
        for name in down:
            result = brokers(
                self.state_dir, "start", "--nodes", str(SIZE), name, timeout=NODE_TIMEOUT
            )
            if result.returncode != 0:
                raise AssertionError(
                    f"could not bring {name} back after the test:\n{result.stderr[-2000:]}"
                )
        return down

    # -- who leads -----------------------------------------------------------------------
    def _ctl_node(self) -> Node:
        for node in self.nodes("rabbitmq"):
            if node.is_healthy():
                return node
        raise AssertionError("no RabbitMQ node of the cluster runs")

    async def rabbitmq_queue(self, queue: str) -> dict[str, Any]:
        """``{"leader": node name, "members": [node names], "online": [...]}`` of a quorum
        queue of the default vhost, from ``rabbitmqctl list_queues``."""
        node = self._ctl_node()
        result = await asyncio.to_thread(
            harness_rabbitmq.rabbitmqctl,
            node,
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
            timeout=60.0,
        )
        assert result.returncode == 0, f"rabbitmqctl list_queues failed: {result.stderr}"
        rows = [row for row in json.loads(result.stdout or "[]") if row.get("name") == queue]
        assert rows, f"queue {queue!r} not found by rabbitmqctl on {node.name}"
        row = rows[0]
        assert row.get("type") == "quorum", row
        by_erl = {n.launched_as(): n.name for n in self.nodes("rabbitmq")}
        by_erl.update({n.erl_node: n.name for n in self.nodes("rabbitmq")})

        def names(values: Any) -> list[str]:
            return sorted(by_erl.get(str(v), str(v)) for v in values or [])

        return {
            "leader": by_erl.get(str(row.get("leader")), str(row.get("leader"))),
            "members": names(row.get("members")),
            "online": names(row.get("online")),
        }

    async def kafka_topic(self, topic: str) -> dict[int, dict[str, Any]]:
        """Per partition of ``topic``: ``{"leader": "kafka-N", "replicas": [...], "isr":
        [...]}`` (node ids are the harness's node indexes)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap_servers)
        await asyncio.wait_for(admin.start(), 30)
        try:
            described = await asyncio.wait_for(admin.describe_topics([topic]), 30)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        (entry,) = [e for e in described if e.get("topic") == topic]
        assert entry.get("error_code", 0) == 0, entry
        return {
            int(p["partition"]): {
                "leader": f"kafka-{p['leader']}",
                "replicas": sorted(f"kafka-{r}" for r in p.get("replicas") or ()),
                "isr": sorted(f"kafka-{r}" for r in p.get("isr") or ()),
            }
            for p in entry.get("partitions") or ()
        }

    async def kafka_topic_config(self, topic: str) -> dict[str, str]:
        """The topic-level settings (only those set on the topic, not broker defaults)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap_servers)
        await asyncio.wait_for(admin.start(), 30)
        try:
            responses = await asyncio.wait_for(
                admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]), 30
            )
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        found: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                # (error_code, error_message, type, name, config entries)
                for entry in resource[4]:
                    name, value, _read_only = entry[0], entry[1], entry[2]
                    is_default = entry[3] if response.API_VERSION == 0 else None
                    source = entry[3] if response.API_VERSION > 0 else None
                    topic_level = source == 1 if source is not None else not is_default
                    if topic_level and value is not None:
                        found[name] = value
        return found


async def all_acknowledged_handled(
    consumer: ConsumerProcess, acked: set[str], handled_at_stop: int, *, timeout: float
) -> list[str]:
    """Wait until the consumer process handled every acknowledged event (it must stay
    alive), check it went on after the node stop, and return what it handled, in order.

    Both failover tests end this way: "0 acknowledged events lost, the consumer keeps
    going" is the promise under test.
    """

    def missing() -> set[str]:
        return acked - set(consumer.handled())

    def all_handled() -> bool:
        assert consumer.alive(), f"the consumer died:\n{consumer.output()}"
        return not missing()

    await eventually(
        all_handled,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{len(missing())} of {len(acked)} acknowledged events never handled",
    )
    handled = consumer.handled()
    assert len(set(handled)) > handled_at_stop, "the consumer did not go on after the stop"
    return handled
