"""``hexbus relay`` and ``hexbus outbox ddl|create|stats|dead-letters``.

Why a relay command: a service may write its outbox from many processes (web workers)
and relay from one (``HEXBUS_OUTBOX_RELAY=false`` in the workers); ``hexbus relay`` is
that one process: it builds the configured transport (``HEXBUS_ADAPTER``) and the
outbox (``HEXBUS_OUTBOX_URL``, or the ``database`` of ``--app``'s container), and sends
until interrupted; it never consumes. The ``outbox`` commands print the DDL (for
migrations), create the tables, and read the outbox's figures and dead letters.

Exit codes: 0 done, 1 the database or broker failed (message with the password
masked), 2 no outbox configured or the extra missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import signal
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from hexbus.cli._common import (
    EXIT_UNAVAILABLE,
    START_TIMEOUT,
    build_bus_or_fail,
    fail,
    out_console,
    redact,
)
from hexbus.cli.app import AppOption, load_app_or_none
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.container import build_outbox
from hexbus.infrastructure.settings import (
    HexbusSettings,
    load_settings,
    redact_url,
)

if TYPE_CHECKING:
    from hexbus.infrastructure.outbox import Outbox

__all__ = [
    "outbox_app",
    "outbox_bench",
    "outbox_configured",
    "outbox_status",
    "print_outbox_status",
    "relay_command",
]

NO_OUTBOX = (
    "no outbox is configured: set HEXBUS_OUTBOX_URL (e.g. sqlite+aiosqlite:///hexbus.db or "
    "postgresql+asyncpg://user:password@host/db), or give --app a container whose "
    "`database` provider is your engine"
)

outbox_app = typer.Typer(
    help="The transactional outbox: its DDL, tables, figures and dead letters.",
    no_args_is_help=True,
)


def _settings(app: str | None) -> tuple[HexbusSettings, Any]:
    loaded = load_app_or_none(app)
    try:
        settings = loaded.settings() if loaded is not None else load_settings()
    except ConfigurationError as exc:
        fail(str(exc))
    return settings, loaded


def _app_database(loaded: Any) -> Any:
    """The ``database`` of the app's container (its engine / session factory), if any."""
    provider = getattr(getattr(loaded, "container", None), "database", None)
    return provider() if callable(provider) else None


def _outbox(settings: HexbusSettings, loaded: Any) -> Outbox:
    try:
        box = build_outbox(settings, _app_database(loaded))
    except ImportError as exc:
        fail(f"the outbox needs its extra: pip install 'hexbus[outbox]' ({exc})", EXIT_UNAVAILABLE)
    except ConfigurationError as exc:
        fail(redact(settings, str(exc)))
    if box is None:
        fail(NO_OUTBOX, EXIT_UNAVAILABLE)
    return box


def _run(settings: HexbusSettings, coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except typer.Exit:
        raise
    except ConfigurationError as exc:
        fail(redact(settings, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported without a traceback, password masked
        fail(redact(settings, f"{type(exc).__name__}: {exc}"))


def relay_command(
    once: Annotated[
        bool, typer.Option("--once", help="Send what is in the outbox now, then exit.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="With --once: give up after this many seconds.")
    ] = 300.0,
    app: AppOption = None,
) -> None:
    """Run the outbox relay alone: send committed outbox rows through the configured
    transport until interrupted (Ctrl-C / SIGTERM drain the batch in hand)."""
    settings, loaded = _settings(app)
    box = _outbox(settings, loaded)
    bus = build_bus_or_fail(settings)
    # Imported here: the outbox package needs its extra, present once _outbox succeeded.
    from hexbus.infrastructure.outbox import EncodedSender  # noqa: PLC0415

    if not isinstance(bus, EncodedSender):
        fail(
            f"the {settings.adapter} adapter ({type(bus).__name__}) cannot send encoded "
            "events (no send_encoded): it cannot relay an outbox",
            EXIT_UNAVAILABLE,
        )
    sender: EncodedSender = bus
    console = out_console()

    async def run() -> None:
        try:
            await box.open()
            async with asyncio.timeout(START_TIMEOUT):
                await bus.start()
            relay = box.relay(sender)
            if once:
                await relay.drain(timeout=timeout)
                stats = await relay.stats_now()
                console.print(
                    f"relayed {stats.relay.sent} event(s) in {stats.relay.batches} batch(es); "
                    f"{stats.pending} pending, {stats.dead_letters} dead letter(s)"
                )
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(signum, stop.set)
            await relay.start()
            console.print(
                f"relaying {box.tables.outbox.name} to {settings.adapter} as {relay.name}; "
                "Ctrl-C to stop"
            )
            try:
                await stop.wait()
            finally:
                await relay.stop()
                console.print(f"stopped after {relay.stats.sent} event(s)")
        finally:
            await bus.stop()
            await box.close()

    _run(settings, run())


@outbox_app.command("ddl")
def ddl_command(
    dialect: Annotated[
        str | None,
        typer.Option(
            "--dialect",
            help="sqlite or postgresql (default: the database of HEXBUS_OUTBOX_URL).",
            show_default=False,
        ),
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="Table name prefix.")] = "hexbus_",
    app: AppOption = None,
) -> None:
    """Print the CREATE TABLE / CREATE INDEX statements of the outbox and inbox tables."""
    settings, _ = _settings(app)
    try:
        from hexbus.infrastructure.outbox.database import ddl, dialect_of  # noqa: PLC0415
        from hexbus.infrastructure.outbox.schema import outbox_tables  # noqa: PLC0415
    except ImportError as exc:
        fail(f"the outbox needs its extra: pip install 'hexbus[outbox]' ({exc})", EXIT_UNAVAILABLE)
    if dialect is None:
        if not settings.outbox_url:
            fail("give --dialect sqlite|postgresql, or set HEXBUS_OUTBOX_URL", EXIT_UNAVAILABLE)
        dialect = dialect_of(settings.outbox_url)
    if dialect not in ("sqlite", "postgresql"):
        fail(f"--dialect must be sqlite or postgresql, not {dialect!r}", EXIT_UNAVAILABLE)
    print(ddl(outbox_tables(prefix=prefix), dialect), end="")  # type: ignore[arg-type]


@outbox_app.command("create")
def create_command(app: AppOption = None) -> None:
    """Create the outbox and inbox tables that are missing in the configured database."""
    settings, loaded = _settings(app)
    box = _outbox(settings, loaded)

    async def run() -> None:
        try:
            box.create = True
            await box.open()
        finally:
            await box.close()

    _run(settings, run())
    out_console().print(f"outbox tables ready ({box.tables.outbox.name} and its neighbours)")


@outbox_app.command("stats")
def stats_command(
    as_json: Annotated[bool, typer.Option("--json", help="A JSON object on stdout.")] = False,
    app: AppOption = None,
) -> None:
    """Rows waiting in the outbox, the oldest one's age (the relay lag), dead letters."""
    settings, loaded = _settings(app)
    box = _outbox(settings, loaded)

    async def run() -> tuple[int, float | None, int]:
        try:
            await box.check()
            return await box.store.pending()
        finally:
            await box.close()

    pending, oldest, dead = _run(settings, run())
    age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
    if as_json:
        print(json.dumps({"pending": pending, "oldest_pending_age": age, "dead_letters": dead}))
        return
    out_console().print(
        f"{pending} event(s) pending, oldest {age:.1f}s old; {dead} dead letter(s)"
    )


@outbox_app.command("dead-letters")
def dead_letters_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array on stdout.")] = False,
    app: AppOption = None,
) -> None:
    """Outbox rows the relay could not read back, with the reason (oldest first)."""
    settings, loaded = _settings(app)
    box = _outbox(settings, loaded)

    async def run() -> list[dict[str, Any]]:
        try:
            await box.check()
            return await box.store.dead_letters(limit)
        finally:
            await box.close()

    rows = _run(settings, run())
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="Outbox dead letters", title_justify="left")
    for column in ("position", "event", "type", "reason", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["position"]), row["event_id"], row["event_type"], row["reason"], row["error"]
        )
    console = out_console()
    console.print(table)
    console.print(f"{len(rows)} dead letter(s)")


def outbox_configured(settings: HexbusSettings, loaded: Any) -> bool:
    """Is there an outbox: ``HEXBUS_OUTBOX_URL``, or a ``database`` in the app's container?"""
    return bool(settings.outbox_url) or _app_database(loaded) is not None


def outbox_status(settings: HexbusSettings, loaded: Any, *, contact: bool) -> dict[str, Any] | None:
    """For ``hexbus check``: the outbox database reachable? Its tables, pending rows and
    dead letters; ``None`` when no outbox is configured. ``contact=False`` (``--offline``)
    only reports the configuration."""
    if not outbox_configured(settings, loaded):
        return None
    status: dict[str, Any] = {
        "database": redact_url(settings.outbox_url) if settings.outbox_url else "the app's engine",
        "checked": contact,
        "ok": True,
        "error": None,
        "tables": None,
        "pending": None,
        "dead_letters": None,
        "relay_in_process": settings.outbox_relay,
    }
    if not contact:
        return status
    try:
        box = build_outbox(settings, _app_database(loaded))
        if box is None:  # configured a moment ago: only a racing environment gets here
            raise ConfigurationError(NO_OUTBOX)

        async def probe() -> None:
            try:
                await box.check()
                status["tables"] = await box.has_tables()
                if status["tables"]:
                    pending, _, dead = await box.store.pending()
                    status["pending"], status["dead_letters"] = pending, dead
            finally:
                await box.close()

        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - a finding, reported with the password masked
        status["ok"] = False
        status["error"] = redact(settings, str(exc) if isinstance(exc, ConfigurationError)
                                 else f"{type(exc).__name__}: {exc}")
    return status


def print_outbox_status(status: dict[str, Any] | None) -> None:
    console = out_console()
    if status is None:
        console.print("outbox: not configured (HEXBUS_OUTBOX_URL unset)")
        return
    if not status["checked"]:
        console.print(f"outbox: {status['database']} (not contacted)", soft_wrap=True)
        return
    if not status["ok"]:
        console.print(f"outbox: {status['database']}: [red]{status['error']}[/red]", soft_wrap=True)
        return
    tables = "tables present" if status["tables"] else "tables missing (created at start)"
    detail = (
        f"; {status['pending']} pending, {status['dead_letters']} dead letter(s)"
        if status["tables"]
        else ""
    )
    console.print(
        f"outbox: {status['database']}: [green]ok[/green], {tables}{detail}", soft_wrap=True
    )


def outbox_bench(
    settings: HexbusSettings, url: str, *, events: int, rounds: int, as_json: bool
) -> None:
    """``hexbus bench --outbox URL``: the outbox benchmark (``hexbus.bench.outbox``) on
    ``settings.adapter``, with fresh exchange / topic names for the run."""
    unique = f"hexbus-bench-outbox-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(
        update={
            "service_name": unique,
            "rabbitmq_exchange": f"{unique}.events",
            "kafka_topic_prefix": f"{unique}.",
            "outbox_url": url,  # so redact() masks its password too
        }
    )
    try:  # lazily, like the broker benchmarks: it needs the [outbox] extra
        bench = importlib.import_module("hexbus.bench.outbox")
    except (ImportError, ConfigurationError) as exc:
        fail(f"the outbox benchmark needs its extra: pip install 'hexbus[outbox]' ({exc})", 2)
    console = out_console()
    with console.status(f"outbox on {redact_url(url)}, {settings.adapter}") as status:
        try:
            figures = asyncio.run(
                bench.run_outbox_bench(
                    lambda: build_bus_or_fail(settings),
                    url,
                    adapter=settings.adapter,
                    events=events,
                    rounds=rounds,
                    progress=lambda text: status.update(f"outbox: {text}"),
                )
            )
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - reported without a traceback, masked
            fail(redact(settings, f"{type(exc).__name__}: {exc}"))
    summary = figures.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"Outbox on {summary['database']}, {summary['adapter']}")
    table.add_column("figure")
    table.add_column("median", justify="right")
    latency = f"{summary['commit_to_handler_p50_ms']} / {summary['commit_to_handler_p99_ms']}"
    rows = [
        ("relay, events/s", f"{summary['relay_events_per_s']:,}"),
        ("publish_many, events/s", f"{summary['publish_many_events_per_s']:,}"),
        ("relay / publish_many", f"{summary['relay_vs_publish_many']:.0%}"),
        ("transaction with one outbox write, µs", str(summary["transaction_with_outbox_write_us"])),
        ("the same transaction without it, µs", str(summary["transaction_without_us"])),
        ("publish_many of 100 into it, µs/event", str(summary["publish_many_100_per_event_us"])),
        ("commit → handler p50 / p99, ms", latency),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(
        f"{summary['events']:,} events per round, {rounds} interleaved rounds, batches of "
        f"{summary['batch']}; latency: events committed one at a time by a writer sharing "
        "only the database with the relay (NOTIFY / poll wakes it)."
    )
