"""A small service process for the outbox fault tests (``test_outbox_faults.py``).

Why a process of its own: "the service crashed after its commit" must mean the OS took
the process away with no ``finally`` block, no relay round and no clean stop; only a
SIGKILLed child proves that. The child is built the way a service is: a ``Container``
from ``HEXBUS_*`` variables (``HEXBUS_ADAPTER``, ``HEXBUS_OUTBOX_URL``,
``HEXBUS_SERVICE_NAME``, ``HEXBUS_OUTBOX_RELAY`` ...), nothing adapter-specific here.

Modes (``python outbox_service.py MODE --state DIR/label ...``):

- ``write``: publish ``--count`` events into the outbox, ``--chunk`` per transaction
  (``publish_many(..., session=s)``), then create ``<state>.written`` and hang until
  killed (run it with ``HEXBUS_OUTBOX_RELAY=false``: the commit happened, no relay ran).
- ``relay``: only the relay, started by this module on the container's outbox (so its
  ``RelayStats`` can be written to ``<state>.stats`` every 0.1 s: pid, relay name,
  counters); SIGTERM stops the relay, then the container.
- ``serve``: the container's own relay (``HEXBUS_OUTBOX_RELAY=true``), nothing else;
  SIGTERM is ``container.shutdown_resources()``, the graceful stop a service does.
- ``consume``: an idempotent subscription (``SUBSCRIPTION``) whose handler inserts one
  row per event into ``side_effects`` through ``current_context().session``: the inbox
  row and the side effect commit together, so a duplicate delivery leaves no second
  row. Inbox counters go to ``<state>.stats``.

Every mode but ``write`` creates ``<state>.ready`` once its bus is started (and ready,
for a ``Readiness`` adapter); the test waits for that file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert

from hexbus import DomainEvent, current_context
from hexbus.domain.ports import Readiness
from hexbus.infrastructure.container import Container
from hexbus.infrastructure.outbox import Outbox

#: The idempotent subscription of ``consume``.
SUBSCRIPTION = "side-effects"

#: The handler's own table: NO unique constraint on ``event_id`` on purpose, so a
#: handler that ran twice for one event shows as two rows (the inbox must prevent it).
side_effects_metadata = MetaData()
side_effects = Table(
    "side_effects",
    side_effects_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("pid", Integer, nullable=False),
)


class OutboxFaultEvent(DomainEvent, event_type="outbox.faults.event"):
    """The event of the outbox fault tests; ``seq`` numbers them 0..N-1 per test."""

    seq: int


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)  # appears complete or not at all


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _outbox(container: Container) -> Outbox:
    outbox = container.outbox()
    if outbox is None:
        raise SystemExit("HEXBUS_OUTBOX_URL is not set: the outbox service needs its database")
    return outbox


async def _start(container: Container) -> None:
    started = container.init_resources()  # the bus, the outbox, (serve) the relay
    if started is not None:
        await started


async def _shutdown(container: Container) -> None:
    stopped = container.shutdown_resources()
    if stopped is not None:
        await stopped


async def _ready(bus: Any, state: Path, timeout: float) -> None:
    if isinstance(bus, Readiness):
        await bus.wait_ready(timeout)
    _write_atomically(state.with_name(state.name + ".ready"), f"{os.getpid()}\n")


async def _write(args: argparse.Namespace, container: Container) -> None:
    await _start(container)
    bus = container.event_bus()
    outbox = _outbox(container)
    for start in range(args.first, args.first + args.count, args.chunk):
        stop = min(start + args.chunk, args.first + args.count)
        events = [OutboxFaultEvent(seq=seq) for seq in range(start, stop)]
        async with outbox.sessions() as session, session.begin():
            await bus.publish_many(events, session=session)
    _write_atomically(args.state.with_name(args.state.name + ".written"), f"{args.count}\n")
    if args.then == "exit":
        await _shutdown(container)
        return
    await asyncio.Event().wait()  # hang: the test SIGKILLs this process


async def _relay(args: argparse.Namespace, container: Container) -> None:
    stop = _stop_on_signals()
    await _start(container)
    bus = container.event_bus()
    relay = _outbox(container).relay(bus)
    stats_file = args.state.with_name(args.state.name + ".stats")

    def report() -> None:
        _write_atomically(
            stats_file,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "name": relay.name,
                    "running": relay.running,
                    "stats": asdict(relay.stats),
                }
            ),
        )

    await relay.start()
    try:
        await _ready(bus, args.state, args.ready_timeout)
        while not stop.is_set():
            report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    finally:
        await relay.stop()
        report()
        await _shutdown(container)


async def _serve(args: argparse.Namespace, container: Container) -> None:
    stop = _stop_on_signals()
    await _start(container)
    try:
        await _ready(container.event_bus(), args.state, args.ready_timeout)
        await stop.wait()
    finally:
        await _shutdown(container)


async def _consume(args: argparse.Namespace, container: Container) -> None:
    stop = _stop_on_signals()
    bus = container.event_bus()

    async def record(event: OutboxFaultEvent) -> None:
        session = current_context().session
        if session is None:
            raise RuntimeError("the idempotent handler ran without the inbox's session")
        await session.execute(
            insert(side_effects).values(
                event_id=str(event.event_id), seq=event.seq, pid=os.getpid()
            )
        )

    bus.subscribe(OutboxFaultEvent, record, name=SUBSCRIPTION, idempotent=True)
    await _start(container)
    inbox = _outbox(container).inbox
    stats_file = args.state.with_name(args.state.name + ".stats")
    try:
        await _ready(bus, args.state, args.ready_timeout)
        while not stop.is_set():
            _write_atomically(stats_file, json.dumps(asdict(inbox.stats)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await _shutdown(container)
        _write_atomically(stats_file, json.dumps(asdict(inbox.stats)))


MODES = {"write": _write, "relay": _relay, "serve": _serve, "consume": _consume}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--state", type=Path, required=True, help="path prefix of the files")
    parser.add_argument("--count", type=int, default=1, help="write: events to write")
    parser.add_argument("--first", type=int, default=0, help="write: seq of the first event")
    parser.add_argument("--chunk", type=int, default=1000, help="write: events per transaction")
    parser.add_argument("--then", choices=("hang", "exit"), default="hang")
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if os.environ.get("HEXBUS_OUTBOX_URL") is None:
        raise SystemExit("HEXBUS_OUTBOX_URL is not set: the outbox service needs its database")
    container = Container()
    # Only ``serve`` runs the container's relay; ``relay`` starts its own (to report its
    # counters), ``write`` must commit with no relay at all.
    container.config.from_dict({"outbox_relay": args.mode == "serve"})
    asyncio.run(MODES[args.mode](args, container))
    return 0


if __name__ == "__main__":
    sys.exit(main())
