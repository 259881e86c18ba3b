"""``hexbus dlq list|replay SUBSCRIPTION``: inspect and replay a subscription's dead letters.

``replay`` sends dead letters back to the one subscription that failed (the others of
the same event do not run again), from attempt 1: ``--limit N`` at most N,
``--event-type T`` only dead letters of wire type T, ``--dry-run`` changes nothing and
prints what would be replayed. A dead letter whose event type is not registered in the
CLI's process is refused and kept (a replay could only dead-letter it again); the CLI
knows your event classes through ``--app``. Exit status: 0 when nothing was refused,
1 when some dead letter was refused (with ``--dry-run`` too: it would be), so a script
notices what is left.

SUBSCRIPTION is the durable subscription name (what ``hexbus check`` lists, by default the
handler's ``module.qualname``); the service part comes from ``HEXBUS_SERVICE_NAME``. The
adapter says where that is (``SubscriptionAdmin.subscription_address``): on RabbitMQ the
queue ``{service}.{SUBSCRIPTION}`` (dead letters in its ``.dlq`` queue), on Kafka the
consumer group ``{service}.{SUBSCRIPTION}`` (dead letters in its ``.dlq`` topic, replayed
through its ``.replay`` topic, which only that group reads).

Why the capability protocols: an adapter that keeps dead letters implements
``DeadLetterReader`` (``list``), one that can send them back to the one subscription
that failed implements ``DeadLetterReplayer`` (``replay``); the command asks
``isinstance`` and otherwise exits 2 saying what the adapter cannot do and what to do
instead. The CLI never imports a broker client nor looks inside an adapter.

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
    EXIT_ERROR,
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
    ReplayReport,
    SubscriptionAdmin,
)

__all__ = [
    "MEMORY_DLQ",
    "describe_dead_letter",
    "describe_replay",
    "dlq_app",
    "list_dead_letters",
    "print_dead_letters",
    "print_replay",
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
#: Why an adapter that lacks ``DeadLetterReplayer`` lacks it, where there is more to say
#: than "it cannot" (consulted only once the capability was found missing). Every
#: adapter hexbus ships can replay; a third-party one may add its reason here.
_NO_REPLAY_REASONS: Mapping[str, str] = {}

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


def describe_replay(report: ReplayReport) -> dict[str, Any]:
    """A ``ReplayReport`` as JSON-ready data: what was (would be) replayed, what was
    refused and why."""
    return {
        "dry_run": report.dry_run,
        "replayed": [describe_dead_letter(d) for d in report.replayed],
        "refused": [{**describe_dead_letter(d), "why": why} for d, why in report.refused],
    }


def print_replay(
    subscription: str,
    location: str,
    report: ReplayReport,
    *,
    as_json: bool = False,
    app_given: bool = True,
) -> None:
    """The replay's outcome: the dead letters replayed (or, dry run, that would be), the
    refused ones with the reason, and a one-line summary."""
    if as_json:
        print(json.dumps({"subscription": subscription, **describe_replay(report)}, indent=2))
        return
    console = out_console()
    if report.replayed:
        title = f"{'Would be replayed' if report.dry_run else 'Replayed'} to {location}"
        table = Table(title=title, title_justify="left")
        for column in ("#", "event type", "event id", "error", "dead-lettered"):
            table.add_column(column, overflow="fold")
        for number, dead in enumerate(report.replayed, 1):
            table.add_row(
                str(number),
                dead.event_type or "?",
                dead.event_id or "?",
                dead.error or dead.reason or "",
                dead.failed_at or dead.position or "",
            )
        console.print(table)
    if report.refused:  # a list, not a table: the reasons are sentences
        console.print("Refused (kept in the dead letters):", soft_wrap=True)
        for number, (dead, why) in enumerate(report.refused, 1):
            what = f"{dead.event_type or '? (undecodable)'} {dead.event_id or '?'}"
            console.print(f"  {number}. {what}: {why}", soft_wrap=True)
    verb = "would replay" if report.dry_run else "replayed"
    summary = f"{verb} {report.count} dead letter(s) of {subscription} to {location}"
    if report.refused:
        summary += f"; refused {len(report.refused)} (kept)"
    if report.dry_run:
        summary += "; dry run: nothing was changed"
    console.print(summary, soft_wrap=True)
    if report.refused and not app_given:
        console.print(
            "hint: without --app this process may not know your event classes; name your "
            "service's container (--app module:attribute) so that they are imported",
            soft_wrap=True,
        )


@dlq_app.command("replay")
def replay_command(
    subscription: Annotated[
        str, typer.Argument(help="Durable subscription name (see `hexbus check`).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Replay at most this many (default: all).")
    ] = None,
    event_type: Annotated[
        str | None,
        typer.Option(
            "--event-type",
            help="Only dead letters of this event type (wire name, e.g. user.created).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Change nothing; print what would be replayed."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON object on stdout.")] = False,
    app: AppOption = None,
) -> None:
    """Send SUBSCRIPTION's dead letters back to it (only it), from attempt 1.

    Prints what was replayed and what was refused (kept) and why, e.g. a dead letter
    whose event type is not registered (pass --app so the CLI knows your event
    classes). Exit 0 when nothing was refused, 1 when some dead letter was.
    """
    settings = broker_settings(MEMORY_DLQ, settings_of(app))
    bus = build_bus_or_fail(settings)
    replayer = replayer_or_fail(bus, settings.adapter)  # before connecting
    location = where(bus, subscription)

    async def replay(_: EventBus) -> ReplayReport:
        return await replayer.replay_dead_letters(
            subscription, limit, event_type=event_type, dry_run=dry_run
        )

    report = run_on_bus(settings, replay, bus=bus)
    print_replay(subscription, location, report, as_json=as_json, app_given=bool(app))
    if report.refused:
        raise typer.Exit(EXIT_ERROR)
