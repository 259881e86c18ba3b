"""The scripted story ``hexbus demo`` tells, rendered with rich as it happens.

Why a script and not a server: it shows, in a few seconds and with no set-up, every
path through the library — injection, metadata, pattern subscriptions, a plain ``def``
handler, fail-open handlers, correlation ids — and ends with numbers one can check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hexbus.demo.activity import Action, ActivityLog, EventSeen
from hexbus.demo.container import DemoContainer
from hexbus.demo.model import User
from hexbus.demo.ports import StorageError
from hexbus.demo.use_cases import Request

__all__ = ["DemoReport", "render_entries", "run_demo", "short_id"]

ANN = Request(ip_address="198.51.100.23", user_agent="Firefox/128.0")
BOB = Request(ip_address="198.51.100.42", user_agent="Safari/17.5")
MALLORY = Request(ip_address="203.0.113.7", user_agent="curl/8.5.0")
ADMIN = Request(ip_address="10.0.0.5", user_agent="hexbus-admin/1.0")


@dataclass
class DemoReport:
    """The final numbers (also what the tests check)."""

    adapter: str
    events_published: int
    handler_runs: int
    handler_failures: int
    alerts_sent: int
    mails_sent: int
    cache_invalidations: int
    audit_lines: int
    audit_path: Path
    event_counts: dict[str, int] = field(default_factory=dict)


#: Display names for common metadata keys (keeps an event on one 80-column line).
_SHORT_KEYS = {"ip_address": "ip", "user_agent": "ua"}


def short_id(value: object) -> str:
    """The last 8 hex digits: UUIDv7s share their leading (timestamp) digits."""
    return str(value)[-8:]


def render_entries(console: Console, entries: Sequence[EventSeen | Action]) -> None:
    """One line per event (type, id, correlation, metadata), its handlers' actions under it."""
    for entry in entries:
        if isinstance(entry, EventSeen):
            event = entry.event
            line = Text.assemble(
                ("● ", "bold green"),
                (f"{event.event_type:<17}", "bold cyan"),
                f" #{short_id(event.event_id)}",
                (f" corr={short_id(event.correlation_id)}", "magenta"),
            )
            if event.causation_id is not None:
                line.append(f" cause={short_id(event.causation_id)}", "magenta")
            for key, value in sorted(entry.metadata.items()):
                line.append(f" {_SHORT_KEYS.get(key, key)}={value}", "dim")
            console.print(line)
        else:
            style = "bold red" if "ALERT" in entry.text else "yellow"
            indent = "    ↳ " if entry.event_id is not None else "  · "
            console.print(Text.assemble(indent, (f"{entry.actor}: ", style), entry.text))


async def _step(
    console: Console, activity: ActivityLog, title: str, action: Callable[[], Awaitable[object]]
) -> None:
    console.print(Text(f"\n▶ {title}", style="bold"))
    try:
        await action()
    except StorageError as exc:
        activity.record("scenario", f"use case failed: {exc} (reported as system.error)")
    render_entries(console, activity.take_new())


async def run_demo(container: DemoContainer, console: Console) -> DemoReport:
    """Start the bus, play the story, stop the bus (flushing the audit log), sum up."""
    settings = container.settings()
    console.rule(f"hexbus demo — adapter: {settings.adapter}")
    await container.init_resources()  # type: ignore[misc]
    try:
        await _play(container, console)
    finally:
        await container.shutdown_resources()  # type: ignore[misc]
    report = _report(container, settings.adapter)
    _print_summary(console, report)
    return report


async def _play(c: DemoContainer, console: Console) -> None:
    activity: ActivityLog = c.activity()
    register, log_in, get_user = c.register_user(), c.log_in(), c.get_user()
    users: dict[str, User] = {}

    async def sign_up() -> None:
        users["ann"] = await register("ann@example.com", "Ann", "correct horse", ANN)
        users["bob"] = await register("bob@example.com", "Bob", "hunter2", BOB)

    await _step(console, activity, "Two people sign up", sign_up)
    ann, bob = users["ann"].user_id, users["bob"].user_id

    async def ann_logs_in() -> None:
        await log_in("ann@example.com", "correct horse", ANN)
        await get_user(ann, ANN)  # fills the cache
        activity.record("scenario", "Ann's profile is now cached")

    await _step(console, activity, "Ann logs in and views her profile", ann_logs_in)

    async def brute_force() -> None:
        for guess in ("123456", "password", "qwerty"):
            await log_in("bob@example.com", guess, MALLORY)

    await _step(console, activity, "Someone guesses Bob's password, three times", brute_force)

    async def rename() -> None:
        await c.update_profile()(ann, name="Ann Lovelace", request=ANN)
        profile = await get_user(ann, ANN)
        activity.record("scenario", f"profile re-read from the repository: {profile['name']}")

    await _step(console, activity, "Ann renames herself (the cache must forget)", rename)

    async def items() -> None:
        item = await c.create_item()(ann, "Difference Engine", 120_000, ANN)
        await c.update_item()(item.item_id, price_cents=99_000, request=ANN)
        await c.delete_item()(item.item_id, ANN)

    await _step(console, activity, "Ann lists an item, cuts its price, withdraws it", items)

    async def outage() -> None:
        c.items().fail_next("database connection lost")
        await c.create_item()(ann, "Analytical Engine", 250_000, ANN)

    await _step(console, activity, "The item store goes down mid-request", outage)

    async def admin_deletes_bob() -> None:
        await c.delete_user()(bob, actor="admin@example.com", reason="compromised", request=ADMIN)

    await _step(console, activity, "An admin deletes Bob's compromised account", admin_deletes_bob)
    await _step(console, activity, "Ann logs out", lambda: c.log_out()(ann, ANN))


def _report(c: DemoContainer, adapter: str) -> DemoReport:
    bus = c.event_bus()
    stats = getattr(bus, "stats", None)
    notifier = c.notifier()
    activity = c.activity()
    audit = c.audit_log()
    return DemoReport(
        adapter=adapter,
        events_published=stats.published if stats else len(activity.events()),
        handler_runs=stats.handled if stats else -1,
        handler_failures=stats.failed if stats else -1,
        alerts_sent=len(notifier.on("security")) + len(notifier.on("admin")),
        mails_sent=len(notifier.on("mail")),
        cache_invalidations=len(activity.actions("cache-invalidation")),
        audit_lines=audit.written,
        audit_path=audit.path,
        event_counts=dict(sorted(c.counter().counts.items())),
    )


def _print_summary(console: Console, report: DemoReport) -> None:
    console.print()
    table = Table(title="Summary", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("events published", str(report.events_published))
    table.add_row("handler runs", str(report.handler_runs))
    table.add_row("handler failures", str(report.handler_failures))
    table.add_row("alerts sent (security + admin)", str(report.alerts_sent))
    table.add_row("welcome mails sent", str(report.mails_sent))
    table.add_row("cache invalidations", str(report.cache_invalidations))
    table.add_row("audit log lines written", str(report.audit_lines))
    console.print(table)
    counts = ", ".join(f"{name} x{n}" for name, n in report.event_counts.items())
    console.print(Text(f"audit counter (plain def handler): {counts}", style="dim"))
    console.print(Text(f"audit log: {report.audit_path}", style="dim"))
