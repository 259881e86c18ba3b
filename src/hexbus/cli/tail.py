"""``hexbus tail [PATTERN]``: print the events published on the configured broker, live.

How: the configured bus gets one handler for PATTERN (AMQP topic syntax, ``#`` = all)
under a throw-away subscription name ``tail.<random>``, so tail is a subscriber like any
other and never takes events away from the real subscriptions.

What it shows: only events published after it printed ``tailing ...`` (on stderr). The
bus is built by the adapter registry with the adapter's ``live_only`` options (Kafka: a
fresh consumer group starts at the ``latest`` offsets instead of the topics' history),
and when the adapter applies subscriptions asynchronously (``Readiness``) tail prints
``tailing`` only once ``wait_ready`` says the subscription is live (Kafka: the group owns
its partitions and knows its start offsets). On Kafka, topics created after tail started
are found within ``metadata_max_age_ms`` (10 s); events on such a new topic before that
are not shown.

When tail exits (count, timeout, Ctrl-C, SIGTERM) it deletes its subscription through
``SubscriptionAdmin.delete_subscription`` (RabbitMQ: its queues; Kafka: its dead-letter
topic) and prints whatever the adapter could not delete, to remove by hand. A ``kill -9``
leaves them. The memory adapter delivers events only inside the publishing process: tail
exits 2.

Events are decoded with the event classes this process knows (the demo catalogue, as
``hexbus publish``). A message of another type cannot be decoded: the adapter moves it to
tail's own (throw-away) dead letters, and tail reports how many it skipped (from the
bus's ``stats``).

The CLI never imports a broker client nor looks inside an adapter: it uses the
``EventBus`` port and the capability protocols of ``hexbus.domain.ports``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from typing import Annotated, Any

import typer
from rich.text import Text

from hexbus.application.observing import TRACEPARENT, TRACESTATE, trace_id_of
from hexbus.cli._common import (
    START_TIMEOUT,
    broker_settings,
    build_bus_or_fail,
    err_console,
    fail,
    out_console,
    redact,
)
from hexbus.cli.app import AppOption, load_app_or_none
from hexbus.domain.context import current_context
from hexbus.domain.errors import ConfigurationError, HexbusError
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import EventBus, Readiness, StatsReporter, SubscriptionAdmin
from hexbus.infrastructure.adapters import adapter_info
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["MEMORY_TAIL", "event_line", "event_record", "tail_command"]

MEMORY_TAIL = (
    "`hexbus tail` needs a broker adapter (HEXBUS_ADAPTER=rabbitmq or kafka): the memory "
    "adapter delivers events only inside the process that publishes them, so a separate "
    "tail process can never see them"
)
_ENVELOPE = frozenset(DomainEvent.model_fields)
_TRACE_KEYS = frozenset({TRACEPARENT, TRACESTATE})
#: How long clean-up may take before tail gives up and names what is left.
CLEANUP_TIMEOUT = 15.0


def event_record(event: DomainEvent, metadata: Any = None) -> dict[str, Any]:
    """One event as the ``--json`` line: envelope, trace id, metadata and the event's fields.

    ``trace_id`` is the trace of the event's creation context (its ``traceparent``), to
    find the producer's and consumers' spans; ``None`` when the producer did not trace.
    """
    data = event.to_dict()
    return {
        "event_type": event.event_type,
        "event_version": event.event_version,
        "event_id": str(event.event_id),
        "occurred_at": data.get("occurred_at"),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "source": event.source,
        "trace_id": trace_id_of(metadata),
        "metadata": dict(metadata or {}),
        "data": {k: v for k, v in data.items() if k not in _ENVELOPE},
    }


def event_line(record: dict[str, Any]) -> Text:
    """One event as a human line: time, type, id, correlation id, trace, metadata, fields."""
    trace_id = record.get("trace_id")
    meta = " ".join(
        f"{k}={v}"
        for k, v in record["metadata"].items()
        if not (trace_id and k in _TRACE_KEYS)  # shown as trace=
    )
    return Text.assemble(
        (f"{record['occurred_at']} ", "dim"),
        (record["event_type"], "bold cyan"),
        f" id={record['event_id']} corr={record['correlation_id']}",
        (f" trace={trace_id}" if trace_id else "", "green"),
        (f" meta[{meta}]" if meta else "", "magenta"),
        " ",
        json.dumps(record["data"], ensure_ascii=False, default=str),
    )


def tail_command(
    pattern: Annotated[
        str, typer.Argument(help="Event type or pattern: user.created, 'user.*', '#' (all).")
    ] = "#",
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after N events.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    app: AppOption = None,
) -> None:
    """Print events as they are published (broker adapters; only events from now on).

    Stops after --count events, after --timeout seconds, or on Ctrl-C (exit 0).

    The temporary subscription (queue / consumer group) is removed on exit.
    """
    loaded = load_app_or_none(app)  # imports the app's events: tail can decode them
    settings = broker_settings(MEMORY_TAIL, loaded.settings() if loaded else None)
    # live_only: what a throw-away subscription needs to see only events from now on.
    bus = build_bus_or_fail(settings, **adapter_info(settings.adapter).live_only)
    name = f"tail.{uuid.uuid4().hex[:12]}"
    tail = Tail(bus, settings, pattern, name, count=count, as_json=as_json)
    try:
        bus.subscribe(pattern, tail.show, name=name)
    except HexbusError as exc:  # InvalidPatternError and the like
        raise typer.BadParameter(str(exc), param_hint="PATTERN") from None
    try:
        asyncio.run(tail.run(timeout))
    except KeyboardInterrupt:  # before the signal handler was installed
        pass
    except TimeoutError:
        fail(f"no answer from the {settings.adapter} broker within {START_TIMEOUT:.0f}s")
    except ConfigurationError as exc:
        fail(redact(settings, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported without a traceback, password masked
        fail(redact(settings, f"{type(exc).__name__}: {exc}"))
    tail.summary()


class Tail:
    """One tail session: the handler that prints, the run loop, clean-up and summary."""

    def __init__(
        self,
        bus: EventBus,
        settings: HexbusSettings,
        pattern: str,
        name: str,
        *,
        count: int | None,
        as_json: bool,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.pattern = pattern
        self.name = name
        self.count = count
        self.as_json = as_json
        self.shown = 0
        self.skipped = 0
        self.done: asyncio.Event | None = None
        self.console = out_console()

    @property
    def address(self) -> str:
        """Where the temporary subscription's events wait, in the adapter's words."""
        bus = self.bus
        if isinstance(bus, SubscriptionAdmin):
            return bus.subscription_address(self.name)
        return f"subscription {self.name!r}"

    async def show(self, event: DomainEvent) -> None:
        done = self.done
        if done is not None and done.is_set():
            return  # past --count: the queue/group is thrown away anyway
        record = event_record(event, current_context().metadata)
        if self.as_json:
            print(json.dumps(record, ensure_ascii=False, default=str), flush=True)
        else:
            self.console.print(event_line(record), soft_wrap=True, markup=False)
        self.shown += 1
        if self.count is not None and self.shown >= self.count and done is not None:
            done.set()

    async def run(self, timeout: float | None) -> None:  # noqa: ASYNC109
        self.done = done = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, done.set)
                signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not on this platform
                pass
        bus = self.bus
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await bus.start()
            try:
                await self.wait_until_live()
                err_console().print(self.ready_line(), soft_wrap=True, markup=False)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await done.wait()
            finally:
                if isinstance(bus, StatsReporter):
                    self.skipped = bus.stats.dead_lettered
                await self.remove_subscription()
        finally:
            try:
                await bus.stop()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

    def ready_line(self) -> str:
        return (
            f"tailing {self.pattern!r} on {self.settings.adapter} (temporary {self.address}); "
            "only events published from now on; Ctrl-C to stop"
        )

    async def wait_until_live(self) -> None:
        """Return once the adapter says the subscription is live (``Readiness``).

        An adapter without ``Readiness`` applies a subscription within ``start()``.
        """
        bus = self.bus
        if not isinstance(bus, Readiness):
            return
        try:
            await bus.wait_ready(START_TIMEOUT)
        except TimeoutError as exc:
            reason = str(exc) or f"not ready within {START_TIMEOUT:.0f}s"
            err_console().print(
                f"warning: {reason}; events may be missed until it is",
                soft_wrap=True,
                markup=False,
            )

    async def remove_subscription(self) -> None:
        """Delete the subscription and what it declared on the broker; name what is left."""
        bus = self.bus
        leftovers: list[str] = [self.address]
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                if isinstance(bus, SubscriptionAdmin):
                    leftovers = await bus.delete_subscription(self.name)
                else:  # the adapter cannot delete it: stop consuming, say what stays
                    bus.unsubscribe(self.pattern, self.show)
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, and says so
            problem = (
                f"not done within {CLEANUP_TIMEOUT:.0f}s"
                if isinstance(exc, TimeoutError)
                else redact(self.settings, f"{type(exc).__name__}: {exc}")
            )
            err_console().print(
                f"warning: could not remove tail's temporary subscription ({problem})",
                soft_wrap=True,
                markup=False,
            )
        if leftovers:
            err_console().print(
                "warning: left on the broker, delete by hand: " + ", ".join(leftovers),
                soft_wrap=True,
                markup=False,
            )

    def summary(self) -> None:
        text = f"tail: {self.shown} event(s) shown"
        if self.skipped:
            text += (
                f"; {self.skipped} message(s) of event types this process does not know "
                "were skipped"
            )
        err_console().print(text, soft_wrap=True, markup=False)
