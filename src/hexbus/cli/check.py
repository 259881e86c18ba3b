"""``hexbus check``: is this configuration usable? Config, adapter, broker, wiring.

Two probes: a TCP connect per broker endpoint (separates a typo or a firewall from a
protocol problem, needs no client library), then, when that worked, a real session:
the adapter the registry builds (``build_bus``) is started and stopped, which proves the
credentials and the protocol. Whether the adapter is usable at all (its extra
installed) is the registry's ``availability``, asked without importing the adapter or its
client, so ``check`` says what is missing precisely when an extra is not installed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table
from rich.text import Text

from hexbus.application.wiring import handler_name, is_async_handler
from hexbus.cli._common import EXIT_ERROR, err_console, fail, out_console, redact
from hexbus.cli.app import AppOption, load_app
from hexbus.demo.container import DemoContainer
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.adapters import availability, build_bus
from hexbus.infrastructure.settings import HexbusSettings, load_settings

__all__ = [
    "SESSION_OK",
    "BrokerProbe",
    "SubscriptionInfo",
    "broker_endpoints",
    "check_command",
    "demo_subscriptions",
    "probe",
    "session_probe",
]

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    host: str
    port: int
    reachable: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    target: str
    name: str
    handler: str
    kind: str  # "async" or "def (thread)"


def broker_endpoints(settings: HexbusSettings) -> list[tuple[str, int]]:
    """host:port pairs the selected adapter would connect to (none for memory)."""
    if settings.adapter == "rabbitmq":
        parts = urlsplit(settings.rabbitmq_url)
        default = 5671 if parts.scheme == "amqps" else 5672
        return [(parts.hostname or "localhost", parts.port or default)]
    if settings.adapter == "kafka":
        out = []
        for server in settings.kafka_bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host:  # "localhost" without a port
                host, port = port, "9092"
            out.append((host.strip("[]"), int(port)))
        return out
    return []


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> BrokerProbe:
    """TCP connect, nothing more."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return BrokerProbe(host, port, True)
    except OSError as exc:
        return BrokerProbe(host, port, False, str(exc) or type(exc).__name__)


def demo_subscriptions() -> list[SubscriptionInfo]:
    """What the demo service's container subscribes (without starting any bus)."""
    container = DemoContainer()
    out = []
    for router in container.routers():
        for target, handler, name in router:
            routing = target if isinstance(target, str) else target.event_type
            out.append(
                SubscriptionInfo(
                    target=routing,
                    name=name or handler_name(handler),
                    handler=handler_name(handler),
                    kind="async" if is_async_handler(handler) else "def (thread)",
                )
            )
    return out


SESSION_OK = "ok (connected, authenticated, started and stopped the adapter)"


def session_probe(settings: HexbusSettings, *, timeout: float) -> str:
    """Start and stop the adapter the registry builds: ``SESSION_OK`` or the error."""

    async def run() -> None:
        bus = build_bus(settings)
        try:
            async with asyncio.timeout(timeout):
                await bus.start()
        finally:
            await bus.stop()

    try:
        asyncio.run(run())
    except TimeoutError:
        return f"no session within {timeout:.0f}s"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a diagnosis
        return redact(settings, f"{type(exc).__name__}: {exc}")
    return SESSION_OK


def check_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each broker TCP connect.")
    ] = PROBE_TIMEOUT,
    app: AppOption = None,
) -> None:
    """Show the effective configuration, the adapter, broker reachability and wiring."""
    try:
        settings = load_app(app).settings() if app else load_settings()
    except ConfigurationError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        fail(str(exc))
    usable, detail = availability(settings.adapter)
    probes = [probe(h, p, timeout) for h, p in broker_endpoints(settings)]
    session: str | None = None
    if usable and probes and all(p.reachable for p in probes):
        session = session_probe(settings, timeout=max(timeout, 10.0))
    subs = demo_subscriptions()
    ok = usable and all(p.reachable for p in probes) and session in (None, SESSION_OK)
    if as_json:
        report: dict[str, Any] = {
            "ok": ok,
            "config": settings.safe_dump(),
            "adapter": {"name": settings.adapter, "available": usable, "detail": detail},
            "brokers": [asdict(p) for p in probes],
            "session": session,
            "subscriptions": [asdict(s) for s in subs],
        }
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(settings, usable, detail, probes, subs)
        if session is not None:
            style = "green" if session == SESSION_OK else "red"
            out_console().print(Text.assemble("session: ", (session, style)))
    if not ok:
        problems = [] if usable else [detail]
        problems += [
            f"{p.host}:{p.port} unreachable ({p.error})" for p in probes if not p.reachable
        ]
        if session not in (None, SESSION_OK):
            problems.append(f"session: {session}")
        if not as_json:
            err_console().print(Text("check failed: " + "; ".join(problems), style="bold red"))
        raise typer.Exit(EXIT_ERROR)


def _print_report(
    settings: HexbusSettings,
    usable: bool,
    detail: str,
    probes: list[BrokerProbe],
    subs: list[SubscriptionInfo],
) -> None:
    console = out_console()
    config = Table(title="Effective configuration (HEXBUS_*)", title_justify="left")
    config.add_column("variable", style="bold")
    config.add_column("value")
    for key, value in settings.safe_dump().items():
        config.add_row(f"HEXBUS_{key.upper()}", "" if value is None else str(value))
    console.print(config)
    mark = ("ok", "green") if usable else ("unavailable", "red")
    console.print(
        Text.assemble("adapter: ", (settings.adapter, "bold"), " — ", mark, f" ({detail})")
    )
    if not probes:
        console.print(Text("broker: none needed (in-process)", style="dim"))
    for p in probes:
        status = ("ok", "green") if p.reachable else (f"unreachable: {p.error}", "red")
        console.print(Text.assemble(f"broker {p.host}:{p.port}: ", status))
    wiring = Table(title="Handler wiring (demo service)", title_justify="left")
    wiring.add_column("subscription (durable name)", overflow="fold")
    wiring.add_column("event types / patterns", style="cyan", overflow="fold")
    wiring.add_column("kind", style="dim", no_wrap=True)
    grouped: dict[str, list[SubscriptionInfo]] = {}
    for s in subs:
        grouped.setdefault(s.name, []).append(s)
    for name, group in grouped.items():
        targets = ", ".join(s.target for s in group)
        wiring.add_row(name, targets, group[0].kind)
    console.print(wiring)
