"""``hexbus lag [SUBSCRIPTION...]``: how far behind each subscription's consumers are.

What "behind" means is the broker's (``LagReporter``, ``hexbus.domain.ports``): on Kafka
the records of the group's topics it has not committed yet (end offset minus committed
offset, per ``topic[partition]``, its replay topic included); on RabbitMQ the ready
messages of the subscription's queue, with its retry tiers and dead-letter queue beside
it (AMQP does not report delivered-but-unacknowledged messages without the management
plugin, so "in flight" stays empty there).

Which subscriptions: the names given, else those of the app (``--app``: its routers and
handlers, as ``hexbus check`` lists them). The command only reads: it joins no consumer
group, consumes nothing and creates nothing. Exit 0 with the report, 1 when the broker
cannot be reached, 2 when the adapter cannot report lag (the memory adapter has no
backlog outside its own process) or there is nothing to report on.
"""

from __future__ import annotations

import json
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
from hexbus.cli.app import HOW_TO, AppOption, load_app_or_none
from hexbus.domain.errors import HexbusError
from hexbus.domain.ports import EventBus, LagReporter, SubscriptionLag

__all__ = ["MEMORY_LAG", "describe_lag", "lag_command", "print_lag"]

MEMORY_LAG = (
    "the memory adapter hands every event to its handlers while it is published, inside "
    "the publishing process: nothing waits anywhere a `hexbus lag` process could look. "
    "Ask that process (`await bus.lag()`), or use a broker adapter (HEXBUS_ADAPTER=rabbitmq "
    "or kafka)"
)


def describe_lag(lag: SubscriptionLag) -> dict[str, Any]:
    """One ``SubscriptionLag`` as JSON-ready data."""
    return {
        "subscription": lag.subscription,
        "address": lag.address,
        "waiting": lag.waiting,
        "in_flight": lag.in_flight,
        "detail": dict(lag.detail),
    }


def print_lag(rows: list[SubscriptionLag], *, as_json: bool = False) -> None:
    """``rows`` as a JSON array or a table (detail: the non-zero counts only)."""
    if as_json:
        print(json.dumps([describe_lag(row) for row in rows], indent=2))
        return
    # "in flight" only where the broker says (RabbitMQ over AMQP and Kafka do not).
    in_flight = any(row.in_flight is not None for row in rows)
    columns = ["subscription", "where", "waiting", *(["in flight"] if in_flight else []), "detail"]
    table = Table(title="Consumer lag", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = [row.subscription, row.address]
        cells.append("unknown" if row.waiting is None else str(row.waiting))
        if in_flight:
            cells.append("?" if row.in_flight is None else str(row.in_flight))
        cells.append(", ".join(f"{name}={n}" for name, n in row.detail.items() if n))
        table.add_row(*cells)
    console = out_console()
    console.print(table)
    total = sum(row.waiting or 0 for row in rows)
    console.print(f"{total} event(s) waiting in {len(rows)} subscription(s)", soft_wrap=True)
    unknown = [row.subscription for row in rows if row.waiting is None]
    if unknown:
        console.print(
            f"unknown ({', '.join(unknown)}): the broker has nothing to measure, no queue or "
            "no committed offsets (a subscription that never consumed; see `hexbus check`)",
            soft_wrap=True,
        )


def lag_command(
    subscriptions: Annotated[
        list[str] | None,
        typer.Argument(
            help="Durable subscription names (default: every subscription of --app).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array on stdout.")] = False,
    app: AppOption = None,
) -> None:
    """Show how many events wait for each subscription (Kafka: committed vs end offsets;
    RabbitMQ: ready messages, plus retry tiers and dead letters)."""
    loaded = load_app_or_none(app)
    settings = broker_settings(MEMORY_LAG, loaded.settings() if loaded else None)
    names = list(subscriptions or ())
    if not names and loaded is not None:
        try:
            names = loaded.subscriptions().names()
        except HexbusError as exc:
            fail(f"--app {app!r}: its subscriptions cannot be wired: {exc}")
        if not names:
            fail(f"--app {app!r} has no subscriptions; name the ones to report", EXIT_UNAVAILABLE)
    if not names:
        fail(
            f"name the subscriptions to report (see `hexbus check`), or {HOW_TO}",
            EXIT_UNAVAILABLE,
        )
    bus = build_bus_or_fail(settings)
    if not isinstance(bus, LagReporter):
        fail(
            f"the {settings.adapter} adapter ({type(bus).__name__}) cannot report consumer lag "
            "(it does not implement hexbus.domain.ports.LagReporter); use the tools of its "
            "transport",
            EXIT_UNAVAILABLE,
        )
    reporter: LagReporter = bus

    async def measure(_: EventBus) -> list[SubscriptionLag]:
        return await reporter.lag(names)

    print_lag(run_on_bus(settings, measure, bus=bus), as_json=as_json)
