"""``hexbus dlq list|replay SUBSCRIPTION``: inspect and replay a subscription's dead letters.

SUBSCRIPTION is the durable subscription name (what ``hexbus check`` lists, by default the
handler's ``module.qualname``); the service part comes from ``HEXBUS_SERVICE_NAME``. So on
RabbitMQ the queue read is ``{service}.{SUBSCRIPTION}.dlq``, on Kafka the topic
``{prefix}{service}.{SUBSCRIPTION}.dlq``.

Why ``replay`` is RabbitMQ-only: there a dead letter is moved back into the queue of the
one subscription that failed (other subscriptions never see it again) and leaves the DLQ
only once that is confirmed. A Kafka topic is shared by every consumer group that reads
it and is append-only, so re-publishing a dead letter to its original topic would re-run
*every* subscription of that topic (against the adapter's "one failing handler never
re-runs the others" guarantee), and the record would stay in the dead-letter topic, so a
second replay would send it again. On Kafka ``dlq list`` works and ``dlq replay`` explains
this and exits 2.

Why duck typing: the CLI never imports a broker client (an import-linter contract); the
bus comes from ``build_bus(settings)`` and its ``dead_letters`` / ``replay_dead_letters``
methods are looked up by name.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.table import Table

from hexbus.cli._common import EXIT_ERROR, EXIT_UNAVAILABLE, fail, out_console
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.container import build_bus
from hexbus.infrastructure.settings import HexbusSettings, load_settings

__all__ = [
    "broker_settings",
    "build_bus_or_fail",
    "describe_dead_letter",
    "dlq_app",
    "redact",
    "run_on_bus",
]

T = TypeVar("T")

#: Bounds connecting + starting the adapter (a broker that accepts TCP but never answers).
START_TIMEOUT = 30.0

MEMORY_DLQ = (
    "dead letters exist only on broker adapters (HEXBUS_ADAPTER=rabbitmq or kafka); the "
    "memory adapter logs and counts handler failures, it keeps no dead letters"
)
KAFKA_REPLAY = (
    "`hexbus dlq replay` is RabbitMQ-only. A Kafka dead letter cannot be sent back to one "
    "subscription: re-publishing it to its original topic would re-run every consumer group "
    "of that topic, and the dead-letter topic is append-only (a second replay would send it "
    "again). Use `hexbus dlq list --json` to see the records (original topic, partition, "
    "offset) and re-publish the events you want with `hexbus publish`."
)

dlq_app = typer.Typer(
    name="dlq",
    help="List and replay dead letters of a subscription (broker adapters only).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- shared with ``tail`` ------------------------------------------------------------------
def redact(settings: HexbusSettings, text: str) -> str:
    """``text`` with the broker password (if any) replaced by ``***``."""
    try:
        password = urlsplit(settings.rabbitmq_url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def broker_settings(memory_message: str) -> HexbusSettings:
    """Settings of a broker adapter, or exit: 1 for bad config, 2 for the memory adapter."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        fail(str(exc))
    if settings.adapter == "memory":
        fail(memory_message, EXIT_UNAVAILABLE)
    return settings


def _is_not_found(exc: BaseException) -> bool:
    """RabbitMQ's 404 NOT_FOUND (a passive declare of a missing queue), by name only."""
    return "NotFound" in type(exc).__name__ or "NOT_FOUND" in str(exc)


def run_on_bus(
    settings: HexbusSettings,
    action: Callable[[EventBus], Awaitable[T]],
    *,
    bus: EventBus | None = None,
    missing: str | None = None,
) -> T:
    """Start the configured bus, run ``action(bus)``, stop it; every failure → ``fail``.

    ``missing``: the message for a RabbitMQ NOT_FOUND (an unknown subscription).
    """

    async def run() -> T:
        the_bus = bus if bus is not None else build_bus(settings)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await the_bus.start()
            return await action(the_bus)
        finally:
            await the_bus.stop()

    try:
        return asyncio.run(run())
    except TimeoutError:
        fail(f"no answer from the {settings.adapter} broker within {START_TIMEOUT:.0f}s")
    except ConfigurationError as exc:  # unreachable broker, bad credentials, missing extra
        fail(redact(settings, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported without a traceback, password masked
        if missing is not None and _is_not_found(exc):
            fail(missing)
        fail(redact(settings, f"{type(exc).__name__}: {exc}"))


# -- dead letters as plain data -----------------------------------------------------------
def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def describe_dead_letter(dead: Any) -> dict[str, Any]:
    """A RabbitMQ or Kafka ``DeadLetter`` as JSON-ready data (the same keys for both)."""
    event_type = getattr(dead, "event_type", None)
    header = getattr(dead, "header", None)
    if event_type is None and callable(header):
        event_type = header("ce_type")  # Kafka: the CloudEvents type header
    body = getattr(dead, "body", None)
    if body is None:
        body = getattr(dead, "value", None)
    origin: str | None = getattr(dead, "original_routing_key", None)
    original_topic = getattr(dead, "original_topic", None)
    if original_topic is not None:
        origin = (
            f"{original_topic}[{getattr(dead, 'original_partition', '?')}]"
            f"@{getattr(dead, 'original_offset', '?')}"
        )
    out: dict[str, Any] = {
        "event_type": _text(event_type),
        "event_id": _text(getattr(dead, "event_id", None)),
        "error": _text(getattr(dead, "error", None)),
        "attempts": getattr(dead, "attempts", None),
        "handler": _text(getattr(dead, "handler", None)),
        "failed_at": _text(getattr(dead, "failed_at", None)),
        "origin": origin,
        "body": _text(body),
    }
    if getattr(dead, "offset", None) is not None:  # Kafka: where it sits in the DLQ topic
        out["dlq_position"] = f"{getattr(dead, 'topic', '?')}[{dead.partition}]@{dead.offset}"
    return out


def _where(bus: Any, subscription: str) -> str:
    if callable(getattr(bus, "dlq_name", None)):
        return f"queue {bus.dlq_name(subscription)!r}"
    if callable(getattr(bus, "dlq_topic", None)):
        return f"topic {bus.dlq_topic(subscription)!r}"
    return "its dead-letter queue"


def _print_table(subscription: str, where: str, rows: list[dict[str, Any]]) -> None:
    console = out_console()
    if not rows:
        console.print(
            f"no dead letters for {subscription} ({where} is empty or does not exist)",
            soft_wrap=True,
        )
        return
    table = Table(title=f"Dead letters of {subscription} ({where})", title_justify="left")
    for column in ("#", "event type", "event id", "error", "attempts", "handler", "when"):
        table.add_column(column, overflow="fold")
    for number, row in enumerate(rows, 1):
        table.add_row(
            str(number),
            row["event_type"] or "? (undecodable)",
            row["event_id"] or "?",
            row["error"] or "",
            "" if row["attempts"] is None else str(row["attempts"]),
            row["handler"] or "",
            row["failed_at"] or row.get("dlq_position") or "",
        )
    console.print(table)
    console.print(f"{len(rows)} dead letter(s)", soft_wrap=True)


# -- commands -------------------------------------------------------------------------------
@dlq_app.command("list")
def list_command(
    subscription: Annotated[
        str, typer.Argument(help="Durable subscription name (see `hexbus check`).")
    ],
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array on stdout.")] = False,
) -> None:
    """Show the dead letters of SUBSCRIPTION (left in place): type, id, error, attempts."""
    settings = broker_settings(MEMORY_DLQ)
    bus = build_bus_or_fail(settings)
    if not callable(getattr(bus, "dead_letters", None)):
        fail(f"the {settings.adapter} adapter cannot list dead letters", EXIT_UNAVAILABLE)
    where = _where(bus, subscription)

    async def read(b: Any) -> list[Any]:
        found: list[Any] = await b.dead_letters(subscription, limit)
        return found

    missing = f"no dead-letter {where} for subscription {subscription!r} " + (
        f"(service {settings.service_name!r}): unknown subscription? `hexbus check` lists them"
    )
    dead = run_on_bus(settings, read, bus=bus, missing=missing)
    rows = [describe_dead_letter(d) for d in dead]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(subscription, where, rows)


@dlq_app.command("replay")
def replay_command(
    subscription: Annotated[
        str, typer.Argument(help="Durable subscription name (see `hexbus check`).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Replay at most this many (default: all).")
    ] = None,
) -> None:
    """Move SUBSCRIPTION's dead letters back to its queue (RabbitMQ) and print how many."""
    settings = broker_settings(MEMORY_DLQ)
    bus = build_bus_or_fail(settings)
    if not callable(getattr(bus, "replay_dead_letters", None)):
        message = KAFKA_REPLAY if settings.adapter == "kafka" else (
            f"the {settings.adapter} adapter cannot replay dead letters"
        )
        fail(message, EXIT_UNAVAILABLE)
    where = _where(bus, subscription)

    async def replay(b: Any) -> int:
        count: int = await b.replay_dead_letters(subscription, limit)
        return count

    missing = f"no dead-letter {where} for subscription {subscription!r} " + (
        f"(service {settings.service_name!r}): unknown subscription? `hexbus check` lists them"
    )
    count = run_on_bus(settings, replay, bus=bus, missing=missing)
    out_console().print(
        f"replayed {count} dead letter(s) of {subscription} to its queue", soft_wrap=True
    )


def build_bus_or_fail(settings: HexbusSettings) -> EventBus:
    try:
        return build_bus(settings)
    except ConfigurationError as exc:  # the broker extra is not installed
        fail(redact(settings, str(exc)), EXIT_ERROR)
