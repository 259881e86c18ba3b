"""The fault suite: what happens to events when things break, the same for every broker.

Why a shared suite (Watermill's universal tests again, for failures this time): design.md
promises that nothing ``publish`` acknowledged is lost by a broker restart, a consumer
crash or ``stop()``, that one failing handler never blocks the others, and that bytes
nobody can decode are dead-lettered while the consumer keeps going, on every broker. The
only honest check of "every broker" is one set of scenarios run against each::

    from hexbus.testing import EventBusFaultSuite, FaultCapabilities

    class TestMyBrokerFaults(EventBusFaultSuite):
        capabilities = FaultCapabilities(
            broker_restart=True, durable=True, consumer_processes=True,
            undecodable=True, dead_letter=True, replay=True, concurrent_deliveries=True,
        )

        @pytest.fixture
        def bus_factory(self, namespace) -> FaultBusFactory: ...   # fresh, not started
        @pytest.fixture
        def consumer_process(self, namespace, tmp_path): ...       # a ConsumerProcesses
        async def restart_broker(self) -> None: ...                  # e.g. restart_test_broker
        async def inject_undecodable(self, bus, subscription): ...  # raw client bytes

Hooks (what an adapter's subclass provides):

- ``bus_factory`` (fixture): an async callable building a fresh, *not started* bus; all
  buses of one test share one namespace (exchange / topic prefix) and service name that
  no other test uses, configured with ``capabilities.max_attempts`` attempts and short
  retry delays. It takes ``drain_timeout`` / ``publish_timeout`` overrides.
- ``consumer_process`` (fixture): a ``hexbus.testing.processes.ConsumerProcesses`` whose
  children build the same bus as ``bus_factory`` (same ``HEXBUS_*`` settings).
- ``restart_broker()``: stop and start the broker the buses use; return once it answers.
- ``inject_undecodable(bus, subscription)``: write records ``subscription`` receives but
  no decoder can turn into an event, with the broker's *raw* client (garbage bytes, an
  unknown type, invalid data), and say what each should become (``Undecodable``).
- ``check_dead_letter(letter, event)`` (optional): transport-specific checks of a dead
  letter (origin format, CloudEvents headers of the binding).

Differences between transports are declared in ``FaultCapabilities``; a scenario whose
capability is not declared is skipped with a reason naming it, never silently passed.
Assertions are on *sets of event ids* ("every acknowledged id was handled at least
once"): at-least-once delivery may repeat an id, never lose one. Every wait has a
deadline (``eventually``), nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol

import pytest

from hexbus.domain.context import current_context
from hexbus.domain.errors import PublishError
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import (
    DeadLetter,
    DeadLetterReader,
    DeadLetterReplayer,
    EventBus,
    Readiness,
    Stats,
    StatsReporter,
)
from hexbus.testing.brokers import (
    ContainerBroker,
    ContainerStartError,
    amqp_answers,
    container_broker,
    kafka_answers,
)
from hexbus.testing.declared import DeclaredSuite
from hexbus.testing.processes import ConsumerProcess, ConsumerProcesses
from hexbus.testing.waiting import eventually

__all__ = [
    "FAULT_SUBSCRIPTIONS",
    "EventBusFaultSuite",
    "FaultBusFactory",
    "FaultCapabilities",
    "FaultEvent",
    "OtherFaultEvent",
    "Undecodable",
    "broker_outage",
    "native_broker_running",
    "publish_until_acked",
    "require_native_broker",
    "require_restartable_broker",
    "restart_native_broker",
    "restart_test_broker",
    "start_test_broker",
    "stop_test_broker",
]

#: Every subscription name the suite's scenarios use (for an adapter's clean-up).
FAULT_SUBSCRIPTIONS: tuple[str, ...] = (
    "recorder",
    "poison",
    "healthy",
    "other",
    "undecodable",
    "drained",
    "stuck",
)


# -- events used by the suite ------------------------------------------------------------
# Module level: the event registry is process-wide, and consumer processes import them by
# ``module:QualName``. The ``faults.`` prefix keeps the wire names away from any
# application's events.


class FaultEvent(DomainEvent, event_type="faults.event"):
    """The event of the fault scenarios; ``seq`` orders, ``key`` names an aggregate."""

    seq: int
    key: str = ""


class OtherFaultEvent(DomainEvent, event_type="faults.other"):
    """A second type, flowing while ``FaultEvent``'s poison handler fails."""

    seq: int


@dataclass(frozen=True, slots=True)
class Undecodable:
    """One raw record ``inject_undecodable`` wrote, and the dead letter it must become.

    ``reason`` is the expected ``DecodeError`` reason (``malformed``, ``unknown_type``,
    ``invalid_data`` ...); ``body`` the exact bytes written (dead letters keep them, so
    they identify the record); ``event_id`` the id the dead letter reports, when the
    record carries one; ``error_contains`` a text the error must mention (e.g. the
    unknown type's name).
    """

    body: bytes
    reason: str
    event_id: str | None = None
    error_contains: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultCapabilities:
    """What an adapter promises under faults; the suite asserts exactly this.

    - ``broker_restart``: ``restart_broker()`` works here; publishers and consumers ride
      out a restart without losing an acknowledged event.
    - ``durable``: a named subscription outlives its consumer: what one consumer did not
      finish (``stop()``, a crash) goes to the next consumer of that name.
    - ``consumer_processes``: ``consumer_process`` spawns consumers in processes of their
      own (crash scenarios: SIGKILL); needs ``durable``.
    - ``undecodable``: ``inject_undecodable`` can write raw records; each is dead-lettered
      with its reason and the consumer keeps going.
    - ``dead_letter``: after ``max_attempts`` failures an event is in the subscription's
      dead letters (``hexbus.domain.ports.DeadLetterReader``).
    - ``replay``: dead letters can be sent back to their subscription
      (``DeadLetterReplayer``).
    - ``concurrent_deliveries``: one subscription runs several deliveries with the same
      key at once (RabbitMQ, up to the prefetch); ``False``: one at a time per key (a
      Kafka partition), so a stuck handler holds the events behind it.
    - ``acked_on_stop``: what a handler finished by the time ``stop()`` returns is
      acknowledged on the broker, so the next consumer never gets it again (Kafka commits
      offsets before leaving the group). ``False``: such an event may be delivered once
      more (RabbitMQ quorum queues can apply acks sent just before a channel closes after
      the close, and requeue) - a duplicate at-least-once allows, never a loss.
    - ``counts``: the bus is a ``StatsReporter`` whose counters (failed, retried,
      dead_lettered, requeued) the scenarios check.
    - ``max_attempts``: the handler attempts ``bus_factory``'s buses are built with.
    """

    broker_restart: bool
    durable: bool
    consumer_processes: bool
    undecodable: bool
    dead_letter: bool
    replay: bool
    concurrent_deliveries: bool
    acked_on_stop: bool = True
    counts: bool = True
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("FaultCapabilities.max_attempts must be at least 1")
        if self.replay and not self.dead_letter:
            raise ValueError("FaultCapabilities(replay=True) needs dead_letter=True")
        if self.consumer_processes and not self.durable:
            raise ValueError(
                "FaultCapabilities(consumer_processes=True) needs durable=True: the crash "
                "scenarios hand a killed consumer's work to its replacement"
            )
        if self.broker_restart and not self.consumer_processes:
            raise ValueError(
                "FaultCapabilities(broker_restart=True) needs consumer_processes=True: the "
                "restart scenario records what a consumer process handled"
            )


class FaultBusFactory(Protocol):
    """Builds a fresh, not started bus of the test's namespace (see the module docstring).

    ``drain_timeout`` / ``publish_timeout``: seconds, overriding the defaults of the
    factory (the ``HEXBUS_DRAIN_TIMEOUT`` / ``HEXBUS_PUBLISH_TIMEOUT`` settings).
    """

    def __call__(
        self, *, drain_timeout: float | None = None, publish_timeout: float | None = None
    ) -> Awaitable[EventBus]: ...


# -- helpers for suites and adapters ---------------------------------------------------


async def publish_until_acked(
    bus: EventBus,
    events: Iterable[DomainEvent],
    acked: set[str],
    *,
    window: int = 200,
    pause: float = 0.0,
    deadline: float = 180.0,
) -> int:
    """Publish every event until the broker acknowledged it, resending after failures.

    ``publish`` returning is the acknowledgement (RabbitMQ confirm, Kafka ``acks=all``);
    a ``PublishError`` means "not acknowledged, send it again" (a duplicate is fine:
    delivery is at-least-once). Ids are added to ``acked`` as they come, so a caller can
    watch the stream progress. ``window`` publishes run concurrently; ``pause`` seconds
    between windows pace the stream (so that it spans a restart). Any other exception is
    raised: a transport failure must surface as ``PublishError``. Returns how many
    publishes failed and were sent again.
    """
    pending = list(events)
    failures = 0
    give_up = time.monotonic() + deadline
    while pending:
        if time.monotonic() > give_up:
            raise AssertionError(
                f"{len(pending)} events still not acknowledged after {deadline:g}s "
                f"({failures} publishes failed so far)"
            )
        batch, pending = pending[:window], pending[window:]
        results = await asyncio.gather(*(bus.publish(e) for e in batch), return_exceptions=True)
        for event, result in zip(batch, results, strict=True):
            if result is None:
                acked.add(str(event.event_id))
            elif isinstance(result, PublishError):
                failures += 1
                pending.append(event)
            else:
                raise result
        if pause:
            await asyncio.sleep(pause)
    return failures


def _brokers_script(start: Path | None = None) -> Path | None:
    """``scripts/brokers.py`` of the project under test (cwd upwards, then this file's)."""
    here = (start or Path.cwd()).resolve()
    for base in (here, *here.parents, *Path(__file__).resolve().parents):
        script = base / "scripts" / "brokers.py"
        if script.is_file():
            return script
    return None


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def native_broker_running(kind: str, port: int, *, script: Path | None = None) -> bool:
    """Whether ``scripts/brokers.py`` runs the single-node ``kind`` broker on ``port``.

    Why ask: ``restart_native_broker`` can only restart a broker that script started;
    the broker under test may also be a container or someone else's server.
    """
    script = script or _brokers_script()
    if script is None:
        return False
    status = subprocess.run(
        [sys.executable, str(script), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    ).stdout
    one_node = status.split("3-node layout", 1)[0]
    for line in one_node.splitlines():
        words = line.split()
        if words[:2] == [f"{kind}-1", "running"] and f"port={port}" in words:
            return True
    return False


async def require_native_broker(kind: str, port: int, *, script: Path | None = None) -> Path:
    """``scripts/brokers.py`` when it runs the ``kind`` broker on ``port``; else skip.

    Skipped locally, failed with ``CI=true``: a restart scenario that silently restarted
    nothing would prove nothing, and CI must run it.
    """
    script = script or _brokers_script()
    if script is not None and await asyncio.to_thread(
        native_broker_running, kind, port, script=script
    ):
        return script
    message = (
        f"restarting {kind} needs the native broker of scripts/brokers.py on port {port} "
        f"(start it with `python3 scripts/brokers.py up --only {kind}`)"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


async def restart_native_broker(
    kind: str,
    port: int,
    *,
    script: Path | None = None,
    timeout: float = 240.0,  # noqa: ASYNC109 - the restart command's own deadline
) -> None:
    """``scripts/brokers.py restart <kind>``; returns once the broker answers again.

    Fails the test when the restart command fails, and starts the broker again wherever
    it is left down (brokers are shared by every test of the session). Skips like
    ``require_native_broker`` when that script does not run the broker on ``port``.
    """
    script = await require_native_broker(kind, port, script=script)
    try:
        await _native_broker_command("restart", kind, script, timeout)
    finally:
        if not await asyncio.to_thread(_answers, port):
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(script), "start", kind],
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )


async def require_restartable_broker(
    kind: str, port: int, *, script: Path | None = None
) -> None:
    """Return when this run can restart the ``kind`` broker on ``port``; else skip (fail
    with ``CI=true``).

    Restartable are the container this session's fixture started on that port and the
    native broker of ``scripts/brokers.py`` (``require_native_broker``); anything else
    (a broker of someone else's, given by ``HEXBUS_*``) is not ours to restart.
    """
    if container_broker(kind, port) is None:
        await require_native_broker(kind, port, script=script)


async def restart_test_broker(
    kind: str,
    port: int,
    *,
    script: Path | None = None,
    timeout: float = 240.0,  # noqa: ASYNC109 - the restart's own deadline
) -> None:
    """Restart the ``kind`` broker the tests use on ``port``; return once it answers again.

    Why one hook for both paths: the broker under test is a container of this session
    (``hexbus.testing.brokers``, restarted in place with ``docker restart``: same address,
    same data) or a native broker (``restart_native_broker``). Restarting the native one
    while the buses talk to a container would restart nothing they use, and the scenario
    would prove nothing.
    """
    container = container_broker(kind, port)
    if container is None:
        await restart_native_broker(kind, port, script=script, timeout=timeout)
        return
    try:
        await asyncio.to_thread(container.restart, timeout)
    except ContainerStartError as exc:
        raise AssertionError(f"restarting the {kind} container failed: {exc}") from None


async def _native_broker_command(
    command: str, kind: str, script: Path, timeout: float  # noqa: ASYNC109
) -> None:
    """``scripts/brokers.py <command> <kind>``; ``AssertionError`` when it fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        command,
        kind,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"`brokers.py {command} {kind}` took over {timeout:g}s") from None
    if process.returncode != 0:
        raise AssertionError(
            f"`brokers.py {command} {kind}` failed ({process.returncode}):\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )


def _broker_answers(kind: str, port: int) -> bool:
    return amqp_answers(port) if kind == "rabbitmq" else kafka_answers(port)


def _docker_client() -> Any:
    """The Docker SDK's client (testcontainers' dependency: only the container path)."""
    return importlib.import_module("docker").from_env()


def _container_stop(container: ContainerBroker) -> None:
    _docker_client().containers.get(container.container_id).stop(timeout=30)


def _container_start(container: ContainerBroker, kind: str, timeout: float) -> None:
    _docker_client().containers.get(container.container_id).start()
    deadline = time.monotonic() + timeout
    while not _broker_answers(kind, container.port):
        if time.monotonic() > deadline:
            raise AssertionError(f"{container!r} does not answer {timeout:g}s after its start")
        time.sleep(0.2)


def _container_freeze(container: ContainerBroker, freeze: bool) -> None:
    wrapped = _docker_client().containers.get(container.container_id)
    if freeze:
        wrapped.pause()
    else:
        wrapped.reload()
        if wrapped.status == "paused":
            wrapped.unpause()


async def stop_test_broker(
    kind: str,
    port: int,
    *,
    script: Path | None = None,
    timeout: float = 240.0,  # noqa: ASYNC109 - the stop command's own deadline
) -> None:
    """Stop the ``kind`` broker the tests use on ``port`` (its data is kept).

    The same two paths as ``restart_test_broker``: this session's container (``docker
    stop``: same port binding, same data) or the native broker of ``scripts/brokers.py``
    (skipped locally, failed with ``CI=true``, when neither runs on ``port``). Always
    pair it with ``start_test_broker`` (``broker_outage`` does): the brokers are shared
    by every test of the session.
    """
    container = container_broker(kind, port)
    if container is not None:
        await asyncio.to_thread(_container_stop, container)
        return
    script = await require_native_broker(kind, port, script=script)
    await _native_broker_command("stop", kind, script, timeout)


async def start_test_broker(
    kind: str,
    port: int,
    *,
    script: Path | None = None,
    timeout: float = 240.0,  # noqa: ASYNC109 - the start's own deadline
) -> None:
    """Start the ``kind`` broker ``stop_test_broker`` stopped; return once it answers."""
    container = container_broker(kind, port)
    if container is not None:
        await asyncio.to_thread(_container_start, container, kind, timeout)
        return
    script = script or _brokers_script()
    if script is None:
        raise AssertionError(f"cannot start {kind} again: scripts/brokers.py not found")
    await _native_broker_command("start", kind, script, timeout)
    if not await asyncio.to_thread(_broker_answers, kind, port):
        raise AssertionError(f"{kind} does not answer on port {port} after its start")


@asynccontextmanager
async def broker_outage(
    kind: str,
    port: int,
    *,
    at_least: float = 0.0,
    script: Path | None = None,
    timeout: float = 240.0,  # noqa: ASYNC109 - each command's own deadline
) -> AsyncIterator[float]:
    """The ``kind`` broker on ``port`` is down inside the block; it is started again on
    leaving (also when the block fails), and the block is left once it answers.

    Why a block: what a test does *during* an outage (write events, watch a relay fail
    and back off) is the point, and the broker must come back whatever happens, since
    other tests of the session share it. ``at_least``: the outage lasts at least that
    many seconds from the stop (a deliberate duration, e.g. longer than the clients'
    timeouts, not a wait for something to happen). Yields the ``time.monotonic()`` of
    the stop.
    """
    if container_broker(kind, port) is None:  # skip (or fail in CI) before stopping anything
        script = await require_native_broker(kind, port, script=script)
    try:
        await stop_test_broker(kind, port, script=script, timeout=timeout)
        stopped = time.monotonic()
        yield stopped
        left = at_least - (time.monotonic() - stopped)
        if left > 0:
            await asyncio.sleep(left)
    finally:
        await start_test_broker(kind, port, script=script, timeout=timeout)


#: The suite's scenarios are coroutines; marking them for pytest-asyncio explicitly makes
#: them run in projects using its ``strict`` mode too (in ``auto`` mode it is a no-op).
_SUITE_MARKS: list[pytest.MarkDecorator] = []
if importlib.util.find_spec("pytest_asyncio") is not None:
    _SUITE_MARKS.append(pytest.mark.asyncio)


@asynccontextmanager
async def broker_stall(
    kind: str,
    port: int,
    *,
    script: Path | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 - each command's own deadline
) -> AsyncIterator[float]:
    """The ``kind`` broker on ``port`` is frozen inside the block, and thawed on leaving
    (also when the block fails). Yields the ``time.monotonic()`` of the freeze.

    Why a freeze and not ``broker_outage``: a stopped broker closes its connections, so
    clients fail fast; a frozen one (a long GC pause, a full disk, a hung host) keeps
    them open and answers nothing, and only the client's own deadline ends the wait.
    That is the case ``publish_timeout`` is for. The process is stopped with SIGSTOP
    (``scripts/brokers.py pause``; this session's container: ``docker pause``), so
    TCP connects still succeed through the kernel's backlog.
    """
    container = container_broker(kind, port)
    if container is None:  # skip (or fail in CI) before freezing anything
        script = await require_native_broker(kind, port, script=script)

    async def freeze(on: bool) -> None:
        if container is not None:
            await asyncio.to_thread(_container_freeze, container, on)
        else:
            assert script is not None
            await _native_broker_command("pause" if on else "resume", kind, script, timeout)

    try:
        await freeze(True)
        yield time.monotonic()
    finally:
        await freeze(False)


class EventBusFaultSuite(DeclaredSuite[FaultCapabilities]):
    """Subclass as ``Test<Adapter>Faults``; set ``capabilities``; provide the hooks.

    Tunables (class attributes): ``timeout`` bounds waits for normal deliveries,
    ``recovery_timeout`` waits that span a crash or restart; ``restart_events`` (10,000)
    and ``crash_events`` size the streams; ``restart_publish_timeout`` is the publish
    timeout of the publisher that rides out the restart.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = _SUITE_MARKS

    capabilities: ClassVar[FaultCapabilities]
    capabilities_type = FaultCapabilities
    timeout: ClassVar[float] = 30.0
    recovery_timeout: ClassVar[float] = 120.0
    restart_events: ClassVar[int] = 10_000
    crash_events: ClassVar[int] = 3_000
    restart_publish_timeout: ClassVar[float] = 5.0

    # -- hooks ---------------------------------------------------------------------------
    @pytest.fixture
    def bus_factory(self) -> FaultBusFactory:
        """Override me: an async callable building a fresh, not started bus."""
        pytest.fail(
            f"{type(self).__qualname__} must define a `bus_factory` fixture returning an "
            "async callable (drain_timeout=None, publish_timeout=None) -> EventBus, not "
            "started, in a namespace of the test's own",
            pytrace=False,
        )

    @pytest.fixture
    def consumer_process(self) -> ConsumerProcesses:
        """Override me (``consumer_processes``): spawns consumer processes of the namespace."""
        if not self.caps.consumer_processes:
            self.unsupported("consumer_processes")
        pytest.fail(
            f"{type(self).__qualname__} declares consumer_processes but defines no "
            "`consumer_process` fixture; return a hexbus.testing.ConsumerProcesses whose "
            "HEXBUS_* env builds the same bus as bus_factory",
            pytrace=False,
        )

    async def prepare_restart(self) -> None:
        """Optional (``broker_restart``): called before the restart scenario sets anything
        up; skip (or fail, in CI) here when this run cannot restart the broker."""

    async def restart_broker(self) -> None:
        """Override me (``broker_restart``): restart the broker; return once it answers."""
        pytest.fail(
            f"{type(self).__qualname__} declares broker_restart but does not override "
            "restart_broker() (see hexbus.testing.faults.restart_test_broker)",
            pytrace=False,
        )

    async def inject_undecodable(self, bus: EventBus, subscription: str) -> Sequence[Undecodable]:
        """Override me (``undecodable``): write raw records ``subscription`` will receive."""
        pytest.fail(
            f"{type(self).__qualname__} declares undecodable but does not override "
            "inject_undecodable(bus, subscription)",
            pytrace=False,
        )

    def check_dead_letter(self, letter: DeadLetter, event: FaultEvent) -> None:
        """Override to check transport details of a handler-failure dead letter."""

    def original_body(self, event: DomainEvent) -> bytes:
        """The bytes a dead letter of ``event`` must keep: by default the CloudEvents
        binary-mode data (the event's own fields as compact JSON), as both brokers send."""
        own = set(DomainEvent.model_fields)
        return event.model_dump_json(exclude=own, by_alias=True, round_trip=True).encode()

    # -- helpers -------------------------------------------------------------------------
    def missing_port(self, bus: EventBus, port: str, capability: str) -> NoReturn:
        """Fail: ``capability`` is declared but ``bus`` lacks the protocol behind it."""
        pytest.fail(
            f"{self.adapter} declares {capability} but {type(bus).__name__} does not "
            f"implement hexbus.domain.ports.{port}",
            pytrace=False,
        )

    def counters(self, bus: EventBus) -> Stats | None:
        """The bus's counters when ``counts`` is declared (``None`` otherwise)."""
        if not self.caps.counts:
            return None
        if not isinstance(bus, StatsReporter):
            self.missing_port(bus, "StatsReporter", "counts")
        return bus.stats

    async def make_bus(
        self,
        bus_factory: FaultBusFactory,
        *,
        drain_timeout: float | None = None,
        publish_timeout: float | None = None,
    ) -> EventBus:
        bus = await bus_factory(drain_timeout=drain_timeout, publish_timeout=publish_timeout)
        assert isinstance(bus, EventBus), f"bus_factory returned {bus!r}, not an EventBus"
        return bus

    @asynccontextmanager
    async def running(self, bus: EventBus) -> AsyncIterator[EventBus]:
        """Start ``bus`` (and wait until it is ready); always stop it."""
        await bus.start()
        try:
            await self.ready(bus)
            yield bus
        finally:
            await asyncio.wait_for(bus.stop(), self.recovery_timeout)

    async def ready(self, bus: EventBus) -> None:
        """Wait until a ``Readiness`` bus's consumers are live (Kafka groups own partitions)."""
        if isinstance(bus, Readiness):
            await bus.wait_ready(self.timeout)

    async def letters(self, bus: EventBus, subscription: str) -> list[DeadLetter]:
        if not isinstance(bus, DeadLetterReader):
            self.missing_port(bus, "DeadLetterReader", "dead_letter")
        return await bus.dead_letters(subscription, limit=1000)

    async def wait_handled(
        self,
        expected: set[str],
        consumers: Sequence[ConsumerProcess],
        *,
        survivors: Sequence[ConsumerProcess] = (),
    ) -> None:
        """Until every id of ``expected`` was recorded by one of ``consumers``; fails at
        once when one of ``survivors`` (who must keep running) dies."""

        def missing() -> set[str]:
            handled: set[str] = set()
            for consumer in consumers:
                handled.update(consumer.handled())
            return expected - handled

        def done() -> bool:
            for consumer in survivors:
                assert consumer.alive(), f"{consumer!r} died:\n{consumer.output()}"
            return not missing()

        await eventually(
            done,
            timeout=self.recovery_timeout,
            interval=0.2,
            message=lambda: (
                f"{len(missing())} of {len(expected)} acknowledged events never "
                f"handled; consumers: {consumers}"
            ),
        )

    # -- broker restart ----------------------------------------------------------------
    async def test_broker_restart_mid_stream_loses_no_acknowledged_event(
        self, bus_factory: FaultBusFactory, consumer_process: ConsumerProcesses
    ) -> None:
        """10,000 events stream to a consumer process while the broker restarts: every
        event the broker acknowledged to the publisher is handled."""
        caps = self.caps
        if not caps.broker_restart:
            self.unsupported("broker_restart")
        await self.prepare_restart()
        # The consumer declares its subscription before anything is published.
        consumer = await consumer_process.spawn("restart", FaultEvent)
        publisher = await self.make_bus(bus_factory, publish_timeout=self.restart_publish_timeout)
        events = [FaultEvent(seq=i) for i in range(self.restart_events)]
        restart_at = min(2_000, len(events) // 5)
        acked: set[str] = set()
        async with self.running(publisher):
            # Paced (~2,000/s) so that publishing spans the restart.
            publishing = asyncio.create_task(
                publish_until_acked(publisher, events, acked, window=100, pause=0.05, deadline=180)
            )
            try:
                await eventually(
                    lambda: len(acked) >= restart_at or publishing.done(),
                    timeout=self.recovery_timeout,
                    message=lambda: f"{restart_at} acknowledged before the restart",
                )
                assert not publishing.done(), "publishing finished before the restart"
                await self.restart_broker()
                restart_seen_at = len(acked)
                failures = await asyncio.wait_for(asyncio.shield(publishing), 300)
            finally:
                if not publishing.done():
                    publishing.cancel()
                    await asyncio.gather(publishing, return_exceptions=True)
        assert acked == {str(e.event_id) for e in events}
        # The restart really hit the stream (not before or after it).
        assert restart_seen_at < len(events), (restart_seen_at, failures)
        await self.wait_handled(acked, [consumer], survivors=[consumer])
        # Not asserted (timing): publishes that failed during the restart and were sent
        # again; shown with -rP.
        print(f"{self.adapter}: publishes failed and resent during the restart: {failures}")

    # -- consumer crash ----------------------------------------------------------------
    async def test_consumer_killed_mid_stream_loses_nothing(
        self, bus_factory: FaultBusFactory, consumer_process: ConsumerProcesses
    ) -> None:
        """A consumer SIGKILLed mid-stream; its replacement handles all it had not acked."""
        if not self.caps.consumer_processes:
            self.unsupported("consumer_processes")
        first = await consumer_process.spawn("first", FaultEvent, delay=0.01)
        publisher = await self.make_bus(bus_factory)
        events = [FaultEvent(seq=i) for i in range(self.crash_events)]
        acked: set[str] = set()
        async with self.running(publisher):
            await publish_until_acked(publisher, events, acked, window=500)
        assert len(acked) == len(events)
        await eventually(
            lambda: len(first.handled()) >= len(events) // 10 or not first.alive(),
            timeout=self.recovery_timeout,
            message=lambda: f"the first consumer at work: {len(first.handled())} handled",
        )
        assert first.alive(), first.output()
        first.kill()
        before = set(first.handled())
        assert len(before) < len(acked), "the consumer finished before it was killed"
        second = await consumer_process.spawn("second", FaultEvent)
        await self.wait_handled(acked, [first, second], survivors=[second])
        assert set(first.handled()) == before, "the killed consumer kept handling"
        # Everything the first one had not recorded reached the second.
        assert acked - before <= set(second.handled())

    async def test_killed_member_work_is_taken_over(
        self, bus_factory: FaultBusFactory, consumer_process: ConsumerProcesses
    ) -> None:
        """Two consumer processes share one subscription; one is SIGKILLed mid-stream; the
        other takes over its share (queue redelivery / partition rebalance), nothing lost."""
        if not self.caps.consumer_processes:
            self.unsupported("consumer_processes")
        member_a = await consumer_process.spawn("member-a", FaultEvent, delay=0.002)
        member_b = await consumer_process.spawn("member-b", FaultEvent, delay=0.002)
        publisher = await self.make_bus(bus_factory)
        events = [FaultEvent(seq=i) for i in range(self.crash_events)]
        acked: set[str] = set()
        async with self.running(publisher):
            publishing = asyncio.create_task(
                publish_until_acked(publisher, events, acked, window=50, pause=0.05)
            )
            try:
                await eventually(
                    lambda: len(member_a.handled()) >= 50 and len(member_b.handled()) >= 50,
                    timeout=self.recovery_timeout,
                    message=lambda: (
                        f"both members at work: a={len(member_a.handled())} "
                        f"b={len(member_b.handled())}"
                    ),
                )
                member_a.kill()
                killed_after = set(member_a.handled())
                await asyncio.wait_for(asyncio.shield(publishing), self.recovery_timeout)
            finally:
                if not publishing.done():
                    publishing.cancel()
                    await asyncio.gather(publishing, return_exceptions=True)
        assert len(acked) == len(events)
        await self.wait_handled(acked, [member_a, member_b], survivors=[member_b])
        assert set(member_a.handled()) == killed_after, "a kept handling after SIGKILL"
        # b handled everything a had not: a's share was taken over, not lost.
        assert acked - killed_after <= set(member_b.handled())
        assert len(set(member_b.handled())) > len(events) - len(killed_after) - 1

    # -- poison ------------------------------------------------------------------------
    async def test_poison_handler_is_dead_lettered_while_others_flow(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """A handler that always fails: after ``max_attempts`` its events are dead letters
        with the original bytes and the failure; another subscription of the same events
        and other event types flow on; replayed after the fix, only it runs again."""
        caps = self.caps
        if not caps.dead_letter:
            self.unsupported("dead_letter")
        attempts = caps.max_attempts
        fixed = False
        poison_calls: dict[str, list[int]] = {}
        healthy: list[str] = []
        other: list[str] = []

        async def poison(event: FaultEvent) -> None:
            poison_calls.setdefault(str(event.event_id), []).append(current_context().attempt)
            if not fixed:
                raise ValueError(f"poisoned seq {event.seq}")

        async def good(event: FaultEvent) -> None:
            healthy.append(str(event.event_id))

        async def others(event: OtherFaultEvent) -> None:
            other.append(str(event.event_id))

        bus = await self.make_bus(bus_factory)
        bus.subscribe(FaultEvent, poison, name="poison")
        bus.subscribe(FaultEvent, good, name="healthy")
        bus.subscribe(OtherFaultEvent, others, name="other")
        faults = [FaultEvent(seq=i) for i in range(5)]
        others_sent = [OtherFaultEvent(seq=i) for i in range(5)]
        fault_ids = {str(e.event_id) for e in faults}
        letters: list[DeadLetter] = []

        async def all_dead_lettered() -> bool:
            letters[:] = await self.letters(bus, "poison")
            return {x.event_id for x in letters} == fault_ids

        async with self.running(bus):
            for fault, another in zip(faults, others_sent, strict=True):
                await bus.publish(fault)
                await bus.publish(another)
            await eventually(
                all_dead_lettered,
                timeout=self.recovery_timeout,
                interval=0.2,
                message=lambda: f"5 dead letters of 'poison': {letters}",
            )
            await eventually(
                lambda: (
                    set(healthy) == fault_ids
                    and set(other) == {str(e.event_id) for e in others_sent}
                ),
                timeout=self.timeout,
                message=lambda: f"healthy={len(healthy)} other={len(other)}",
            )
            assert sorted(healthy) == sorted(fault_ids), "a retry re-ran the healthy handler"
            expected_attempts = list(range(1, attempts + 1))
            assert all(c == expected_attempts for c in poison_calls.values()), poison_calls
            assert len(letters) == len(faults), f"an event was dead-lettered twice: {letters}"
            by_id = {x.event_id: x for x in letters}
            for fault in faults:
                letter = by_id[str(fault.event_id)]
                assert letter.subscription == "poison"
                assert letter.event_type == FaultEvent.event_type
                assert letter.body == self.original_body(fault), "not the original bytes"
                assert letter.error == f"ValueError: poisoned seq {fault.seq}"
                assert letter.reason == "handler_failed"
                assert letter.attempts == attempts
                assert letter.handler == "poison"
                assert letter.failed_at is not None
                assert datetime.fromisoformat(letter.failed_at).tzinfo is not None
                assert letter.origin, "a dead letter must say where it was delivered"
                self.check_dead_letter(letter, fault)
            stats = self.counters(bus)
            if stats is not None:
                assert stats.dead_lettered == len(faults)
                assert stats.retried == len(faults) * (attempts - 1)
                assert stats.failed == len(faults) * attempts
            assert await self.letters(bus, "healthy") == []
            assert await self.letters(bus, "other") == []

            if not caps.replay:
                return
            # Replay after the fix: back to the poison subscription only, at attempt 1.
            if not isinstance(bus, DeadLetterReplayer):
                self.missing_port(bus, "DeadLetterReplayer", "replay")
            fixed = True
            poison_calls.clear()
            assert (await bus.replay_dead_letters("poison")).count == len(faults)
            await eventually(
                lambda: set(poison_calls) == fault_ids,
                timeout=self.timeout,
                message=lambda: f"replayed: {poison_calls}",
            )
            assert all(c == [1] for c in poison_calls.values()), poison_calls
            assert await self.letters(bus, "poison") == []
            assert sorted(healthy) == sorted(fault_ids), "the replay reached another handler"

    # -- undecodable -------------------------------------------------------------------
    async def test_undecodable_records_are_dead_lettered_and_consumer_keeps_going(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """Garbage bytes, an unknown type and invalid data, written by the raw client: each
        is a dead letter with its reason and the exact bytes; the consumer handles the
        events before and after them, in order."""
        if not self.caps.undecodable:
            self.unsupported("undecodable")
        handled: list[FaultEvent] = []

        async def record(event: FaultEvent) -> None:
            handled.append(event)

        bus = await self.make_bus(bus_factory)
        bus.subscribe(FaultEvent, record, name="undecodable")
        before, after = FaultEvent(seq=1, key="k"), FaultEvent(seq=2, key="k")
        letters: list[DeadLetter] = []
        async with self.running(bus):
            await bus.publish(before, key="k")
            injected = list(await self.inject_undecodable(bus, "undecodable"))
            assert injected, "inject_undecodable wrote nothing"
            bodies = [raw.body for raw in injected]
            assert len(set(bodies)) == len(bodies), "injected records need distinct bodies"
            await bus.publish(after, key="k")
            await eventually(
                lambda: [e.event_id for e in handled] == [before.event_id, after.event_id],
                timeout=self.timeout,
                message=lambda: f"the good events around the bad ones: {handled}",
            )

            async def all_dead_lettered() -> bool:
                letters[:] = await self.letters(bus, "undecodable")
                return len(letters) >= len(injected)

            await eventually(
                all_dead_lettered,
                timeout=self.timeout,
                interval=0.2,
                message=lambda: f"{len(injected)} dead letters: {letters}",
            )
            by_body = {x.body: x for x in letters}
            assert len(letters) == len(injected), letters
            for raw in injected:
                letter = by_body.get(raw.body)
                assert letter is not None, f"no dead letter keeps the bytes {raw.body!r}"
                assert letter.reason == raw.reason, letter
                assert letter.error is not None
                assert letter.error.startswith(f"DecodeError({raw.reason})"), letter.error
                if raw.error_contains is not None:
                    assert raw.error_contains in letter.error, letter.error
                if raw.event_id is not None:
                    assert letter.event_id == raw.event_id, letter
                assert letter.attempts == 1, letter
                assert letter.handler == "undecodable", letter
                assert letter.subscription == "undecodable", letter
                assert letter.event is None
            stats = self.counters(bus)
            if stats is not None:
                assert stats.dead_lettered == len(injected)
                assert stats.failed == 0

    # -- stop() ------------------------------------------------------------------------
    async def test_stop_drains_handlers_in_flight_and_the_next_consumer_gets_the_rest(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """``stop()`` mid-stream lets running handlers finish and acknowledges them; a new
        consumer of the subscription gets the rest: nothing lost, and (``acked_on_stop``)
        nothing the first one finished delivered again."""
        if not self.caps.durable:
            self.unsupported("durable")
        started: list[str] = []
        first: list[str] = []
        second: list[str] = []
        gate = asyncio.Event()
        free_run = 30

        async def slow(event: FaultEvent) -> None:
            started.append(str(event.event_id))
            if len(started) > free_run:
                await gate.wait()  # held until stop() has begun: in flight at the stop
            await asyncio.sleep(0.02)
            first.append(str(event.event_id))

        async def fast(event: FaultEvent) -> None:
            second.append(str(event.event_id))

        events = [FaultEvent(seq=i) for i in range(300)]
        sent = {str(e.event_id) for e in events}
        bus1 = await self.make_bus(bus_factory, drain_timeout=self.timeout)
        bus1.subscribe(FaultEvent, slow, name="drained")
        await bus1.start()
        stopping: asyncio.Task[None] | None = None
        try:
            await self.ready(bus1)
            await bus1.publish_many(events)
            await eventually(
                lambda: len(first) >= free_run and len(started) > free_run,
                timeout=self.timeout,
                message=lambda: f"{len(first)} handled, {len(started)} started",
            )
            stopping = asyncio.create_task(bus1.stop())
            await asyncio.sleep(0)  # let stop() begin; either order is correct
            gate.set()
            await asyncio.wait_for(asyncio.shield(stopping), self.recovery_timeout)
        finally:
            gate.set()
            if stopping is None:
                await bus1.stop()
            elif not stopping.done():
                await asyncio.wait({stopping}, timeout=self.recovery_timeout)
        assert set(first) == set(started), "stop() did not let running handlers finish"
        assert len(first) < len(events), "stop() came too late to test anything"
        bus2 = await self.make_bus(bus_factory)
        bus2.subscribe(FaultEvent, fast, name="drained")
        async with self.running(bus2):
            await eventually(
                lambda: set(first) | set(second) >= sent,
                timeout=self.recovery_timeout,
                message=lambda: f"{len(sent - set(first) - set(second))} never handled",
            )
        again = set(first) & set(second)
        if self.caps.acked_on_stop:
            # Everything the first bus finished was acknowledged before it went away.
            assert not again, f"{len(again)} finished before stop(), yet delivered again"
        else:
            print(f"{self.adapter}: {len(again)} finished events delivered again after stop()")

    async def test_stop_gives_up_on_stuck_handlers_after_the_drain_timeout(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """Handlers that never finish: ``stop()`` returns after the drain timeout and hands
        their events back (not failed, not retried, not dead-lettered, not an attempt); a
        new consumer gets every event, at attempt 1."""
        caps = self.caps
        if not caps.durable:
            self.unsupported("durable")
        started: list[str] = []
        never = asyncio.Event()

        async def stuck(event: FaultEvent) -> None:
            started.append(str(event.event_id))
            await never.wait()

        drain = 0.5
        events = [FaultEvent(seq=i, key="stuck") for i in range(5)]
        ids = {str(e.event_id) for e in events}
        in_flight = len(events) if caps.concurrent_deliveries else 1
        bus1 = await self.make_bus(bus_factory, drain_timeout=drain)
        bus1.subscribe(FaultEvent, stuck, name="stuck")
        await bus1.start()
        try:
            await self.ready(bus1)
            for event in events:
                await bus1.publish(event, key="stuck")
            await eventually(
                lambda: len(set(started)) == in_flight,
                timeout=self.timeout,
                message=lambda: f"{in_flight} handlers stuck, {len(started)} started",
            )
            began = time.monotonic()
            await asyncio.wait_for(bus1.stop(), self.timeout)
            took = time.monotonic() - began
        finally:
            never.set()
            await bus1.stop()
        assert took < 10, f"stop() took {took:.1f}s with a {drain}s drain timeout"
        assert len(set(started)) == in_flight, "a handler started after stop()"
        counted = self.counters(bus1)
        if counted is not None:
            assert counted.requeued == in_flight, f"requeued={counted.requeued}"
            assert counted.failed == counted.retried == counted.dead_lettered == 0, counted

        handled: dict[str, int] = {}

        async def worker(event: FaultEvent) -> None:
            handled[str(event.event_id)] = current_context().attempt

        bus2 = await self.make_bus(bus_factory)
        bus2.subscribe(FaultEvent, worker, name="stuck")
        async with self.running(bus2):
            await eventually(
                lambda: set(handled) == ids,
                timeout=self.recovery_timeout,
                message=lambda: f"{len(ids - set(handled))} of {len(ids)} never handled",
            )
            assert set(handled.values()) == {1}, f"stop() counted as an attempt: {handled}"
            if caps.dead_letter:
                assert await self.letters(bus2, "stuck") == []
