"""One consumer in a process of its own: the fault suite SIGKILLs it, restarts brokers under it.

Why a separate process: "a consumer crashed" must mean the OS took its sockets and memory
away mid-delivery, with no ``finally`` block, no ack and no commit. Cancelling tasks in
the test's own event loop would let the adapter clean up and prove nothing. The same
child also rides out broker restarts, so what it handled is recorded outside of it.

The child (``python -m hexbus.testing.processes``) builds its bus exactly as a service
does: ``build_bus(load_settings(), **overrides)`` from the adapter registry, settings from
``HEXBUS_*`` environment variables, so it works for every registered adapter with no
adapter code here. It subscribes one recording handler that appends each event id, one
line per id, to a file *before the handler returns*, i.e. before the ack / offset commit:
a crash can repeat an id (at-least-once), never lose one. Once the bus is started (and
ready, for a ``Readiness`` adapter) it creates ``<ids file>.ready``; SIGTERM stops the bus
cleanly (drain) and exits 0.

The parent side is ``ConsumerProcess`` (one child) and ``ConsumerProcesses`` (spawns the
children of one test, all with the same settings, and kills whatever is left at the
end)::

    with ConsumerProcesses(tmp_path, env={"HEXBUS_ADAPTER": "kafka", ...}) as spawner:
        consumer = await spawner.spawn("first", MyEvent, subscription="recorder")
        ...
        consumer.kill()                      # SIGKILL, nothing acked or committed
        assert expected <= set(consumer.handled())
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import Readiness
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import load_settings
from hexbus.testing.waiting import eventually

__all__ = [
    "ChildProcess",
    "ConsumerProcess",
    "ConsumerProcesses",
    "event_reference",
    "main",
    "read_ids",
]

#: The child's module (run with ``python -m``).
CHILD_MODULE = "hexbus.testing.processes"
#: How long a child gets to start its bus and become ready.
READY_TIMEOUT = 90.0
#: How long a SIGTERMed child gets to drain before it is killed.
STOP_TIMEOUT = 60.0

logger = logging.getLogger("hexbus.testing")


def read_ids(path: Path) -> list[str]:
    """The event ids a consumer process recorded, in handling order.

    One id per line; the part after the last newline is ignored: a SIGKILL can tear the
    last write, and a torn id is one the handler never finished with.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.split("\n")[:-1] if line]


def event_reference(event_type: type[DomainEvent] | str) -> str:
    """``module:QualName`` of an event class, which the child process imports.

    Why not the wire name: the child must *import* the class to register it; a class
    defined in ``__main__`` or inside a function cannot be found by another process.
    """
    if isinstance(event_type, str):
        if ":" not in event_type:
            raise ValueError(
                f"event {event_type!r}: give the class or 'module:QualName', not a wire name"
            )
        return event_type
    module, qualname = event_type.__module__, event_type.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise ValueError(
            f"{qualname} cannot be imported by a consumer process (defined in "
            f"{module!r}{' inside a function' if '<locals>' in qualname else ''}); "
            "define the event class at module level of an importable module"
        )
    return f"{module}:{qualname}"


class ChildProcess:
    """A child Python process of a test that a fault scenario may SIGKILL.

    It gets the parent's import path (so a test module's classes import in it), the
    parent's environment without its ``HEXBUS_*`` variables plus ``env`` (so a
    developer's settings never leak in), ``cwd`` as working directory (no ``.env`` of
    the developer's), and its output in ``log``. ``start`` returns once it created
    ``ready_file``, its sign of life; ``kill`` is SIGKILL (no ``finally``, no ack, no
    commit), ``stop`` SIGTERM (the child's graceful stop). ``ConsumerProcess`` and the
    outbox tests' service processes are children of this kind.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str],
        log: Path,
        ready_file: Path,
        cwd: Path,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.args = list(args)
        self.name = name
        self.env = dict(env)
        self.log = log
        self.ready_file = ready_file
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def _child_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HEXBUS_")}
        # The parent's import path, so an event class of a test module imports in the child.
        path = [p for p in sys.path if p]
        if base.get("PYTHONPATH"):
            path.append(base["PYTHONPATH"])
        return {**base, **self.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)}

    async def start(self) -> Self:
        """Start the child; return once it created ``ready_file`` (``AssertionError`` if
        it exits or takes longer than ``ready_timeout``)."""
        if self.proc is not None:
            raise RuntimeError(f"{self} was started already; spawn a new one")
        self.ready_file.unlink(missing_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            # A plain Popen (returns at once) so kill() and close() work outside the loop.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=self.cwd,
            )
        try:
            await eventually(
                lambda: self.ready_file.exists() or not self.alive(),
                timeout=self.ready_timeout,
                interval=0.05,
                message=lambda: f"{self.name} (pid {self.pid}) ready: {self.output()}",
            )
        except AssertionError:
            self.kill()
            raise
        if not self.ready_file.exists():
            raise AssertionError(
                f"{self.name} exited with {self.returncode} before it was ready:\n"
                f"{self.output()}"
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, limit: int = 4000) -> str:
        """The tail of the child's stdout and stderr (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process dies mid-delivery, nothing in flight is acked or committed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)  # reaping a SIGKILLed child takes milliseconds

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:  # noqa: ASYNC109
        """SIGTERM: the child stops cleanly; killed if it takes over ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %s) ignored SIGTERM for %ss", self.name, proc.pid, timeout)
                self.kill()
        return proc.poll()


class ConsumerProcess(ChildProcess):
    """One consumer child process recording the ids it handled in ``ids``.

    ``env`` holds the ``HEXBUS_*`` settings of the child (nothing else of the parent's
    ``HEXBUS_*`` environment leaks in); ``overrides`` are adapter config fields that have
    no setting (``reconnect_interval``, ``session_timeout_ms`` ...), passed to
    ``build_bus``. ``delay`` seconds are slept in the handler before recording, to keep
    deliveries in flight when the process is killed.
    """

    def __init__(
        self,
        ids: Path,
        *,
        event: type[DomainEvent] | str,
        env: Mapping[str, str],
        subscription: str = "recorder",
        delay: float = 0.0,
        overrides: Mapping[str, Any] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        unknown = sorted(name for name in env if not name.startswith("HEXBUS_"))
        if unknown:
            raise ValueError(f"env takes HEXBUS_* settings only, not {unknown}")
        self.ids = ids
        args = [
            sys.executable,
            "-m",
            CHILD_MODULE,
            "--ids",
            str(ids),
            "--event",
            event_reference(event),
            "--subscription",
            subscription,
            "--delay",
            str(delay),
            "--overrides",
            json.dumps(dict(overrides or {})),
            "--ready-timeout",
            str(ready_timeout),
        ]
        # cwd: the test's directory, so a developer's .env never configures the child.
        super().__init__(
            args,
            name="consumer process",
            env=env,
            log=ids.with_name(ids.name + ".log"),
            ready_file=ids.with_name(ids.name + ".ready"),
            cwd=ids.parent,
            ready_timeout=ready_timeout,
        )

    def handled(self) -> list[str]:
        """Ids recorded so far, in order (repeats possible after a crash)."""
        return read_ids(self.ids)

    def __repr__(self) -> str:
        state = "new" if self.proc is None else ("alive" if self.alive() else "exited")
        return f"<ConsumerProcess {self.ids.name} pid={self.pid} {state}>"


class ConsumerProcesses:
    """Spawns the consumer processes of one test; kills any still running on close.

    Every child gets the same ``env`` (``HEXBUS_*`` settings of the test's namespace) and
    ``overrides``; each records into ``directory/<label>.ids``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        env: Mapping[str, str],
        overrides: Mapping[str, Any] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.env = dict(env)
        self.overrides = dict(overrides or {})
        self.ready_timeout = ready_timeout
        self.spawned: list[ConsumerProcess] = []

    async def spawn(
        self,
        label: str,
        event: type[DomainEvent] | str,
        *,
        subscription: str = "recorder",
        delay: float = 0.0,
    ) -> ConsumerProcess:
        """Start a consumer of ``event`` on ``subscription``; return once it is ready."""
        ids = self.directory / f"{label}.ids"
        if any(p.ids == ids for p in self.spawned):
            raise ValueError(f"a consumer labelled {label!r} was spawned already in this test")
        process = ConsumerProcess(
            ids,
            event=event,
            env=self.env,
            subscription=subscription,
            delay=delay,
            overrides=self.overrides,
            ready_timeout=self.ready_timeout,
        )
        self.spawned.append(process)
        return await process.start()

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every child still running, SIGKILL those not gone after ``grace`` s."""
        running = [p for p in self.spawned if p.alive() and p.proc is not None]
        for process in running:
            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            assert process.proc is not None
            try:
                process.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the child ---------------------------------------------------------------------------


def _import_event(reference: str) -> type[DomainEvent]:
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, DomainEvent)):
        raise SystemExit(f"--event {reference!r} is not a DomainEvent subclass")
    return target


async def _consume(args: argparse.Namespace) -> None:
    event_type = _import_event(args.event)
    overrides: dict[str, Any] = json.loads(args.overrides)
    bus = build_bus(load_settings(), **overrides)
    fd = os.open(args.ids, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    delay: float = args.delay

    async def record(event: DomainEvent) -> None:
        if delay:
            await asyncio.sleep(delay)
        # One write(2) per id on an O_APPEND file: lines never interleave or tear, except
        # the last one when the process is killed mid-write.
        os.write(fd, f"{event.event_id}\n".encode())

    bus.subscribe(event_type, record, name=args.subscription)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with bus:
            if isinstance(bus, Readiness):
                await bus.wait_ready(args.ready_timeout)
            ready = Path(args.ids + ".ready")
            partial = ready.with_name(ready.name + ".tmp")
            partial.write_text(f"{os.getpid()}\n")
            partial.replace(ready)  # appears complete or not at all
            await stop.wait()
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """The child process: consume until SIGTERM, recording handled event ids."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {CHILD_MODULE}",
        description="A hexbus consumer for fault tests; settings from HEXBUS_* variables.",
    )
    parser.add_argument("--ids", required=True, help="file to append handled event ids to")
    parser.add_argument("--event", required=True, help="module:QualName of the event class")
    parser.add_argument("--subscription", default="recorder")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per delivery")
    parser.add_argument("--overrides", default="{}", help="JSON object of config overrides")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_consume(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
