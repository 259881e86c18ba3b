"""``hexbus dlq list|replay SUBSCRIPTION``: inspect and replay a subscription's dead letters.

SUBSCRIPTION is the durable subscription name (what ``hexbus check`` lists, by default the
handler's ``module.qualname``); the service part comes from ``HEXBUS_SERVICE_NAME``. The
adapter says where that is (``SubscriptionAdmin.subscription_address``): on RabbitMQ the
queue ``{service}.{SUBSCRIPTION}`` (dead letters in its ``.dlq`` queue), on Kafka the
consumer group ``{service}.{SUBSCRIPTION}`` (dead letters in its ``.dlq`` topic).

Why the capability protocols: an adapter that keeps dead letters implements
``DeadLetterReader`` (``list``), one that can send them back to the one subscription
that failed implements ``DeadLetterReplayer`` (``replay``); the command asks
``isinstance`` and otherwise exits 2 saying what the adapter cannot do and what to do
instead. The CLI never imports a broker client nor looks inside an adapter.

Why Kafka cannot replay: a topic is shared by every consumer group that reads it and is
append-only, so re-publishing a dead letter to its original topic would re-run *every*
subscription of that topic (against "one failing handler never re-runs the others"), and
the record would stay in the dead-letter topic, so a second replay would send it again.

The memory adapter keeps dead letters too (opt-in), but only in the process whose
handlers failed; a ``hexbus dlq`` process would always find none, so it exits 2 and says
how to reach them. The functions below work on any bus, memory included.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from hexbus.cli._common import (
    EXIT_UNAVAILABLE,
    broker_settings,
    build_bus_or_fail,
    fail,
    out_console,
    run_on_bus,
)
from hexbus.cli.app import AppOption, settings_of
from hexbus.domain.ports import (
    DeadLetter,
    DeadLetterReader,
    DeadLetterReplayer,
    EventBus,
    SubscriptionAdmin,
)

__all__ = [
    "KAFKA_REPLAY",
    "MEMORY_DLQ",
    "describe_dead_letter",
    "dlq_app",
    "list_dead_letters",
    "print_dead_letters",
    "reader_or_fail",
    "replayer_or_fail",
    "where",
]

MEMORY_DLQ = (
    "the memory adapter keeps dead letters only inside the process whose handlers failed "
    "(with HEXBUS_MEMORY_RETRIES=true), and `hexbus dlq` runs in a process of its own, so "
    "it would always find none. Read and replay them in that process (`await "
    "bus.dead_letters(name)`, `await bus.replay_dead_letters(name)`), or use a broker "
    "adapter (HEXBUS_ADAPTER=rabbitmq or kafka), whose dead letters outlive the process"
)
KAFKA_REPLAY = (
    "`hexbus dlq replay` is RabbitMQ-only among the broker adapters. A Kafka dead letter "
    "cannot be sent back to one subscription: re-publishing it to its original topic would "
    "re-run every consumer group of that topic, and the dead-letter topic is append-only (a "
    "second replay would send it again). Use `hexbus dlq list --json` to see the records "
    "(original topic, partition, offset) and re-publish the events you want with "
    "`hexbus publish`."
)
#: Why an adapter that lacks ``DeadLetterReplayer`` lacks it, where there is more to say
#: than "it cannot" (consulted only once the capability was found missing).
_NO_REPLAY_REASONS: Mapping[str, str] = {"kafka": KAFKA_REPLAY}

dlq_app = typer.Typer(
    name="dlq",
    help="List and replay dead letters of a subscription (broker adapters only).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- capabilities ---------------------------------------------------------------------------
def _adapter(bus: EventBus, adapter: str) -> str:
    return f"the {adapter} adapter ({type(bus).__name__})"


def reader_or_fail(bus: EventBus, adapter: str) -> DeadLetterReader:
    """``bus`` as a ``DeadLetterReader``, or exit 2 saying it keeps no readable dead letters."""
    if not isinstance(bus, DeadLetterReader):
        fail(
            f"{_adapter(bus, adapter)} cannot list dead letters (it does not implement "
            "hexbus.domain.ports.DeadLetterReader); inspect them with the tools of its "
            "transport, or use an adapter that keeps them (HEXBUS_ADAPTER)",
            EXIT_UNAVAILABLE,
        )
    return bus


def replayer_or_fail(bus: EventBus, adapter: str) -> DeadLetterReplayer:
    """``bus`` as a ``DeadLetterReplayer``, or exit 2 saying why not and what to do."""
    if not isinstance(bus, DeadLetterReplayer):
        reason = _NO_REPLAY_REASONS.get(adapter)
        if reason is None:
            listing = (
                "`hexbus dlq list --json` shows them; " if isinstance(bus, DeadLetterReader) else ""
            )
            reason = (
                f"{_adapter(bus, adapter)} cannot replay dead letters (it does not "
                f"implement hexbus.domain.ports.DeadLetterReplayer); {listing}re-publish "
                "the events you want with `hexbus publish`"
            )
        fail(reason, EXIT_UNAVAILABLE)
    return bus


def where(bus: EventBus, subscription: str) -> str:
    """Where ``subscription``'s events wait, in the adapter's words (for messages)."""
    if isinstance(bus, SubscriptionAdmin):
        return bus.subscription_address(subscription)
    return f"subscription {subscription!r}"


# -- dead letters as plain data -------------------------------------------------------------
def describe_dead_letter(dead: DeadLetter) -> dict[str, Any]:
    """One ``DeadLetter`` (whatever the adapter) as JSON-ready data, the body as text."""
    return {
        "event_type": dead.event_type,
        "event_id": dead.event_id,
        "error": dead.error,
        "reason": dead.reason,
        "attempts": dead.attempts,
        "handler": dead.handler,
        "failed_at": dead.failed_at,
        "origin": dead.origin,
        "position": dead.position,
        "body": dead.body.decode(errors="replace"),
    }


async def list_dead_letters(
    reader: DeadLetterReader, subscription: str, limit: int = 100
) -> list[dict[str, Any]]:
    """Up to ``limit`` dead letters of ``subscription`` on a started bus, described."""
    return [describe_dead_letter(d) for d in await reader.dead_letters(subscription, limit)]


def print_dead_letters(
    subscription: str,
    location: str,
    rows: list[dict[str, Any]],
    *,
    as_json: bool = False,
    service: str | None = None,
) -> None:
    """``rows`` as a JSON array or a table on stdout.

    No rows is either a subscription without dead letters or one that does not exist
    (adapters answer both with ``[]``), so the message offers both readings.
    """
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = out_console()
    if not rows:
        of_service = f" of service {service!r}" if service else ""
        console.print(
            f"no dead letters for {subscription} ({location}){of_service}; an unknown "
            "subscription has none either: `hexbus check` lists the subscriptions",
            soft_wrap=True,
        )
        return
    table = Table(title=f"Dead letters of {subscription} ({location})", title_justify="left")
    for column in ("#", "event type", "event id", "error", "attempts", "handler", "when"):
        table.add_column(column, overflow="fold")
    for number, row in enumerate(rows, 1):
        table.add_row(
            str(number),
            row["event_type"] or "? (undecodable)",
            row["event_id"] or "?",
            row["error"] or row["reason"] or "",
            "" if row["attempts"] is None else str(row["attempts"]),
            row["handler"] or "",
            row["failed_at"] or row["position"] or "",
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
    app: AppOption = None,
) -> None:
    """Show the dead letters of SUBSCRIPTION (left in place): type, id, error, attempts."""
    settings = broker_settings(MEMORY_DLQ, settings_of(app))
    bus = build_bus_or_fail(settings)
    reader = reader_or_fail(bus, settings.adapter)  # before connecting
    location = where(bus, subscription)

    async def read(_: EventBus) -> list[dict[str, Any]]:
        return await list_dead_letters(reader, subscription, limit)

    rows = run_on_bus(settings, read, bus=bus)
    print_dead_letters(subscription, location, rows, as_json=as_json, service=settings.service_name)


@dlq_app.command("replay")
def replay_command(
    subscription: Annotated[
        str, typer.Argument(help="Durable subscription name (see `hexbus check`).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Replay at most this many (default: all).")
    ] = None,
    app: AppOption = None,
) -> None:
    """Send SUBSCRIPTION's dead letters back to it (only it) and print how many."""
    settings = broker_settings(MEMORY_DLQ, settings_of(app))
    bus = build_bus_or_fail(settings)
    replayer = replayer_or_fail(bus, settings.adapter)  # before connecting
    location = where(bus, subscription)

    async def replay(_: EventBus) -> int:
        return (await replayer.replay_dead_letters(subscription, limit)).count

    count = run_on_bus(settings, replay, bus=bus)
    out_console().print(
        f"replayed {count} dead letter(s) of {subscription} to {location}", soft_wrap=True
    )
