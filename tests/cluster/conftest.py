"""Fixtures of the cluster tests: a 3-node RabbitMQ and Kafka set (scripts/brokers.py).

Where the cluster comes from, once per session:

1. ``HEXBUS_CLUSTER_STATE_DIR``: the state directory of a 3-node set someone started
   (``python3 scripts/brokers.py --state-dir DIR up --nodes 3``); used, left running.
2. ``HEXBUS_BROKERS_STATE_DIR`` when that state's 3-node layout runs: ``make
   test-cluster`` runs pytest under ``brokers.py --state-dir .cache/cluster run --nodes 3``,
   which sets it (and stops the set afterwards).
3. Otherwise a set of its own in a temporary state directory, started on first use with
   only the broker kind a test asks for (``rabbitmq_cluster`` / ``kafka_cluster``), and
   stopped at the end of the session.

Never the single-node brokers of the default state (other test runs use them): each
state directory is a broker set of its own, on ports of its own (see scripts/harness).
After every test each node of a kind in use runs again (``nodes_back_up``). Without a
cluster the tests fail when ``CI=true`` and are skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clusters import (
    NODE_TIMEOUT,
    SCRIPT,
    SIZE,
    Cluster,
    Layout,
    State,
    brokers,
    unavailable,
)

CLUSTER_ENV = "HEXBUS_CLUSTER_STATE_DIR"
STATE_ENV = "HEXBUS_BROKERS_STATE_DIR"


def _own_state_dir() -> Path:
    # World-traversable: as root, the harness runs RabbitMQ as its own user, which must
    # reach its node directories.
    path = Path(tempfile.mkdtemp(prefix="hexbus-cluster-"))
    path.chmod(0o755)
    return path


def _running_three_node(state_dir: Path) -> bool:
    layout = Layout(State.from_options(str(state_dir)), SIZE)
    return any(n.is_running() for n in layout.nodes)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's 3-node broker set (see the module docstring for where it comes from)."""
    named = os.environ.get(CLUSTER_ENV, "").strip()
    if named:
        yield Cluster(Path(named).expanduser().resolve(), owned=False)
        return
    inherited = os.environ.get(STATE_ENV, "").strip()
    if inherited and _running_three_node(Path(inherited)):
        yield Cluster(Path(inherited).expanduser().resolve(), owned=False)
        return
    if not SCRIPT.is_file():
        unavailable(f"{SCRIPT} not found: cannot start a 3-node cluster")
    own = Cluster(_own_state_dir(), owned=True)
    try:
        yield own
    finally:
        result = brokers(own.state_dir, "down", timeout=NODE_TIMEOUT * 2)
        if result.returncode == 0:
            shutil.rmtree(own.state_dir, ignore_errors=True)
        else:
            print(
                f"could not stop the 3-node brokers of {own.state_dir}:\n{result.stderr}",
                file=sys.stderr,
            )


@pytest.fixture(scope="session")
def rabbitmq_cluster(cluster: Cluster) -> Cluster:
    """The cluster, with its three RabbitMQ nodes running."""
    cluster.up("rabbitmq")
    return cluster


@pytest.fixture(scope="session")
def kafka_cluster(cluster: Cluster) -> Cluster:
    """The cluster, with its three Kafka nodes running."""
    cluster.up("kafka")
    return cluster


@pytest.fixture(autouse=True)
async def nodes_back_up(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After each test, every node of the kinds in use runs again (and the test fails if
    one had to be started here: a test restarts what it stops)."""
    yield
    call_failed: bool | None = getattr(request.node, "rep_call_failed", None)
    if call_failed is None or "cluster" not in request.fixturenames:
        return  # the test did not run (set-up failed or skipped): it stopped nothing
    handle: Cluster = request.getfixturevalue("cluster")
    restarted = await asyncio.to_thread(handle.restore)
    if restarted and not call_failed:
        pytest.fail(f"the test left {', '.join(restarted)} stopped (started again now)")


#: What the tests measured (durations, failed publishes), shown after the run.
MEASURED: list[str] = []


@pytest.fixture
def measured() -> Callable[[str], None]:
    """Record a measurement line; all of them are printed at the end of the run."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURED:
        terminalreporter.section("cluster measurements")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Record on the item whether its test ran and failed (for ``nodes_back_up``)."""
    report = yield
    if report.when == "call":
        item.rep_call_failed = report.failed  # type: ignore[attr-defined]
    return report
