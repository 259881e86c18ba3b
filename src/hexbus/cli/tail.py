"""``hexbus tail [PATTERN]``: print the events published on the configured broker, live.

How: the configured bus gets one handler for PATTERN (AMQP topic syntax, ``#`` = all)
under a throw-away subscription name ``tail.<random>``, so tail is a subscriber like any
other and never takes events away from the real subscriptions.

What it shows: only events published after it printed ``tailing ...`` (on stderr).

- RabbitMQ: the subscription is a durable quorum queue (plus its retry and DLQ queues),
  bound when tail starts. When tail exits (count, timeout, Ctrl-C, SIGTERM) it cancels its
  consumer and deletes every queue it declared (``declared_queues``); if that fails (the
  broker went away) it prints the names to delete by hand. A ``kill -9`` leaves them.
- Kafka: a fresh consumer group would start at ``earliest`` (the adapter's default, see
  ``KafkaConfig``) and dump the topics' whole history, so tail builds the bus with
  ``auto_offset_reset="latest"`` and prints ``tailing`` only once the group owns its
  partitions and knows its start offsets. Topics created after tail started are found
  within ``metadata_max_age_ms`` (10 s); events on such a new topic before that are not
  shown. On exit tail deletes the dead-letter topic its subscription created; the
  consumer group ``{service}.tail.<random>`` cannot be deleted through the adapter (its
  committed offsets expire with the broker's ``offsets.retention.minutes``).
- The memory adapter delivers events only inside the publishing process: tail exits 2.

Events are decoded with the event classes this process knows (the demo catalogue, as
``hexbus publish``). A message of another type cannot be decoded: the adapter moves it to
tail's own (throw-away) dead-letter queue/topic, and tail reports how many it skipped.

The CLI never imports a broker client: the bus comes from ``build_bus(settings)``, and the
clean-up reaches the adapter's connection / admin client by attribute name.
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

import hexbus.demo.events  # noqa: F401 - registers user.*, item.*, system.* by name
from hexbus.cli._common import err_console, fail, out_console
from hexbus.cli.dlq import START_TIMEOUT, broker_settings, build_bus_or_fail, redact
from hexbus.domain.context import current_context
from hexbus.domain.errors import ConfigurationError, HexbusError
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["MEMORY_TAIL", "event_line", "event_record", "tail_command"]

MEMORY_TAIL = (
    "`hexbus tail` needs a broker adapter (HEXBUS_ADAPTER=rabbitmq or kafka): the memory "
    "adapter delivers events only inside the process that publishes them, so a separate "
    "tail process can never see them"
)
_ENVELOPE = frozenset(DomainEvent.model_fields)
#: How long clean-up may take before tail gives up and names what is left.
_CLEANUP_TIMEOUT = 15.0


def event_record(event: DomainEvent, metadata: Any = None) -> dict[str, Any]:
    """One event as the ``--json`` line: envelope, metadata and the event's own fields."""
    data = event.to_dict()
    return {
        "event_type": event.event_type,
        "event_version": event.event_version,
        "event_id": str(event.event_id),
        "occurred_at": data.get("occurred_at"),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "source": event.source,
        "metadata": dict(metadata or {}),
        "data": {k: v for k, v in data.items() if k not in _ENVELOPE},
    }


def event_line(record: dict[str, Any]) -> Text:
    """One event as a human line: time, type, id, correlation id, metadata, fields."""
    meta = " ".join(f"{k}={v}" for k, v in record["metadata"].items())
    return Text.assemble(
        (f"{record['occurred_at']} ", "dim"),
        (record["event_type"], "bold cyan"),
        f" id={record['event_id']} corr={record['correlation_id']}",
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
) -> None:
    """Print events as they are published (broker adapters; only events from now on).

    Stops after --count events, after --timeout seconds, or on Ctrl-C (exit 0).

    The temporary subscription (queue / consumer group) is removed on exit.
    """
    settings = broker_settings(MEMORY_TAIL)
    bus = build_bus_or_fail(settings)
    from_settings = getattr(type(bus), "from_settings", None)
    if settings.adapter == "kafka" and callable(from_settings):
        bus = from_settings(settings, auto_offset_reset="latest")  # not the topics' history
    name = f"tail.{uuid.uuid4().hex[:12]}"
    tail = _Tail(bus, settings, pattern, name, count=count, as_json=as_json)
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


class _Tail:
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
                await self._wait_until_live()
                err_console().print(self._ready_line(), soft_wrap=True, markup=False)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await done.wait()
            finally:
                stats = getattr(bus, "stats", None)
                self.skipped = int(getattr(stats, "dead_lettered", 0) or 0)
                await self._remove_subscription()
        finally:
            try:
                await bus.stop()
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

    def _ready_line(self) -> str:
        bus: Any = self.bus
        if self.settings.adapter == "rabbitmq":
            where = (
                f"exchange {self.settings.rabbitmq_exchange!r}, temporary queue "
                f"{bus.queue_name(self.name)!r}"
            )
        else:
            where = f"temporary consumer group {bus.group_id(self.name)!r}, from the latest offsets"
        return (
            f"tailing {self.pattern!r} on {self.settings.adapter} ({where}); "
            "only events published from now on; Ctrl-C to stop"
        )

    async def _wait_until_live(self) -> None:
        """Kafka: return once the group owns partitions and resolved its start offsets."""
        bus: Any = self.bus
        wait_ready = getattr(bus, "wait_ready", None)
        if not callable(wait_ready):
            return  # RabbitMQ: the queue is bound once start() returned
        try:
            await wait_ready(START_TIMEOUT)
        except TimeoutError as exc:
            err_console().print(f"warning: {exc}; events may be missed until it does")
            return
        # "latest" is resolved lazily on the first fetch; ask for the positions now so an
        # event published right after the ready line is not skipped.
        for group in list(getattr(bus, "groups", {}).values()):
            consumer = getattr(group, "_consumer", None)
            position = getattr(consumer, "position", None)
            if not callable(position):
                continue
            for tp in list(getattr(group, "assigned", ())):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10.0):
                        await position(tp)

    async def _remove_subscription(self) -> None:
        """Unsubscribe, then delete what the subscription declared on the broker."""
        bus: Any = self.bus
        leftovers: list[str] = []
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT):
                if self.settings.adapter == "rabbitmq":
                    leftovers = sorted(getattr(bus, "declared_queues", ()))
                    bus.unsubscribe(self.pattern, self.show)  # cancels the consumer
                    settle = getattr(bus, "_settle_topology", None)
                    if callable(settle):
                        await settle()
                    leftovers = await _delete_queues(bus, leftovers)
                elif self.settings.adapter == "kafka":
                    leftovers = [f"topic {bus.dlq_topic(self.name)}"]
                    bus.unsubscribe(self.pattern, self.show)  # stops the group
                    await bus.wait_ready(_CLEANUP_TIMEOUT)
                    leftovers = await _delete_topics(bus, [bus.dlq_topic(self.name)])
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort, and says so
            err_console().print(
                "warning: could not remove tail's temporary subscription "
                f"({redact(self.settings, f'{type(exc).__name__}: {exc}')})",
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


async def _delete_queues(bus: Any, queues: list[str]) -> list[str]:
    """Delete ``queues`` on the bus's own connection; return those still there."""
    connection = getattr(bus, "_connection", None)
    if connection is None or not queues:
        return queues
    channel = await connection.channel()
    left = list(queues)
    try:
        for name in queues:
            await channel.queue_delete(name)
            left.remove(name)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return left


async def _delete_topics(bus: Any, topics: list[str]) -> list[str]:
    """Delete ``topics`` with the bus's admin client; return those still there."""
    admin = getattr(getattr(bus, "_topics", None), "_admin", None)
    delete = getattr(admin, "delete_topics", None)
    if not callable(delete):
        return [f"topic {t}" for t in topics]
    await delete(topics)
    return []
