"""``hexbus check``: is this configuration usable, and is this app wired correctly?

Config, adapter, broker: two probes, a TCP connect per broker endpoint (separates a typo
or a firewall from a protocol problem, needs no client library), then, when that worked,
a real session: the adapter the registry builds (``build_bus``) is started and stopped,
which proves the credentials and the protocol. Whether the adapter is usable at all (its
extra installed) is the registry's ``availability``, asked without importing the adapter
or its client, so ``check`` says what is missing precisely when an extra is not installed.

Wiring (with ``--app``): every subscription of the user's container (its routers and its
``EventHandler`` objects) is checked on its own, the way ``subscribe`` would check it, so
one bad handler does not hide the others, and the command exits 1 after printing them
all; ``--skip-brokers`` leaves the broker out, so the wiring check can run as a CI step
of the user's repository without any broker.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from dependency_injector import providers
from rich.table import Table
from rich.text import Text

from hexbus.application.handlers import SubscriptionTable, handler_subscriptions
from hexbus.application.patterns import compile_pattern
from hexbus.application.wiring import handler_name, is_async_handler
from hexbus.cli._common import EXIT_ERROR, err_console, fail, out_console, redact
from hexbus.cli.app import HOW_TO, AppOption, LoadedApp, load_app
from hexbus.cli.outbox import outbox_configured, outbox_status, print_outbox_status
from hexbus.domain.errors import (
    ConfigurationError,
    DuplicateEventTypeError,
    HexbusError,
    InvalidHandlerError,
    InvalidPatternError,
)
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.adapters import availability, build_bus
from hexbus.infrastructure.security import (
    SecurityError,
    SecurityMode,
    probe_tls,
    security_mode,
    settings_tls,
)
from hexbus.infrastructure.settings import HexbusSettings, load_settings, split_urls

__all__ = [
    "SESSION_OK",
    "BrokerProbe",
    "SecurityReport",
    "SubscriptionCheck",
    "WiringReport",
    "broker_endpoints",
    "check_command",
    "check_wiring",
    "probe",
    "security_report",
    "session_probe",
]

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    host: str
    port: int
    reachable: bool
    error: str | None = None


@dataclass(slots=True)
class SubscriptionCheck:
    """One (target, handler, durable name) of the app and what the check found."""

    #: The durable subscription name (one queue / consumer group).
    name: str
    #: ``module.qualname`` of the handler.
    handler: str
    kind: str  # "async" or "def (thread)"
    #: The event class's wire name, or the pattern string.
    target: str
    target_kind: str  # "event" (a DomainEvent class) or "pattern" (a string)
    #: Where the app declares it: ``routers[i]`` or ``handlers[i]``.
    source: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(slots=True)
class WiringReport:
    """Every subscription of an app, and every wiring error and warning, in order."""

    app: str
    subscriptions: list[SubscriptionCheck] = field(default_factory=list)
    #: All errors: those of single subscriptions and those of no single one (a router
    #: that could not be built, an object that is not a handler).
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The wire names of the app's event catalogue (what patterns are matched against).
    catalogue: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": True,
            "ok": self.ok,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "catalogue": list(self.catalogue),
            "hint": None,
        }


def broker_endpoints(settings: HexbusSettings) -> list[tuple[str, int]]:
    """host:port pairs the selected adapter would connect to (none for memory)."""
    if settings.adapter == "rabbitmq":  # every node of a cluster URL list
        out: list[tuple[str, int]] = []
        for url in split_urls(settings.rabbitmq_url):
            parts = urlsplit(url)
            default = 5671 if parts.scheme == "amqps" else 5672
            out.append((parts.hostname or "localhost", parts.port or default))
        return out
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


SESSION_OK = "ok (connected, authenticated, started and stopped the adapter)"


def session_probe(settings: HexbusSettings, *, timeout: float) -> str:
    """Start and stop the adapter the registry builds: ``SESSION_OK`` or the error."""
    return _session(settings, timeout=timeout)[0]


def _session(settings: HexbusSettings, *, timeout: float) -> tuple[str, BaseException | None]:
    """``session_probe``'s text, and the exception behind it (``None`` when it worked)."""

    async def run() -> None:
        bus = build_bus(settings)
        try:
            async with asyncio.timeout(timeout):
                await bus.start()
        finally:
            await bus.stop()

    try:
        asyncio.run(run())
    except TimeoutError as exc:
        return f"no session within {timeout:.0f}s", exc
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a diagnosis
        return redact(settings, f"{type(exc).__name__}: {exc}"), exc
    return SESSION_OK, None


# --------------------------------------------------------------------------- security


@dataclass(slots=True)
class SecurityReport:
    """How the adapter secures its connections, and what the broker made of it.

    ``chain`` / ``credentials``: ``accepted``, ``rejected``, ``not used`` (plaintext; no
    SASL) or ``not checked`` (brokers not contacted, or an earlier step failed).
    """

    mode: SecurityMode
    chain: str = "not checked"
    chain_detail: str = ""
    credentials: str = "not checked"
    credentials_detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.mode.as_dict(),
            "summary": self.mode.text,
            "certificate_chain": {"status": self.chain, "detail": self.chain_detail},
            "credentials": {"status": self.credentials, "detail": self.credentials_detail},
        }


_CHAIN_PROBLEMS = frozenset({"certificate", "hostname", "client-certificate", "file"})
_CREDENTIAL_PROBLEMS = frozenset({"credentials", "mechanism"})


def _masked(settings: HexbusSettings, text: str) -> str:
    for secret in settings.secret_values():
        text = text.replace(secret, "***")
    return text


def security_report(
    settings: HexbusSettings,
    *,
    endpoint: tuple[str, int] | None,
    session: str | None,
    error: BaseException | None,
    timeout: float = PROBE_TIMEOUT,
) -> SecurityReport | None:
    """The security mode of ``settings`` and, after a session probe (``session`` and its
    ``error``), whether the broker accepted the certificate chain and the credentials.

    The chain is judged by one TLS handshake with ``endpoint`` (which also shows the
    broker's certificate), the credentials by the session: its ``SecurityError`` says
    which part was refused. ``None`` for the memory adapter.
    """
    mode = security_mode(settings)
    if mode is None:
        return None
    report = SecurityReport(mode)
    if mode.tls is None:
        report.chain, report.chain_detail = "not used", "plaintext connection"
    if mode.mechanism is None:
        report.credentials, report.credentials_detail = "not used", "no SASL authentication"
    if session is None or endpoint is None:
        return report
    problem = error.problem if isinstance(error, SecurityError) else None
    if mode.tls is not None:
        if problem in _CHAIN_PROBLEMS:
            report.chain, report.chain_detail = "rejected", str(error)
        else:
            report.chain, report.chain_detail = _handshake(settings, endpoint, timeout)
    if mode.mechanism is None:
        return report
    who = f"{mode.mechanism} as {mode.user!r}" if mode.user else mode.mechanism
    if session == SESSION_OK:
        report.credentials, report.credentials_detail = "accepted", who
    elif problem in _CREDENTIAL_PROBLEMS:
        report.credentials, report.credentials_detail = "rejected", str(error)
    elif report.chain == "rejected":
        report.credentials_detail = "TLS failed first"
    else:
        report.credentials_detail = f"the session failed before ({session})"
    return report


def _handshake(
    settings: HexbusSettings, endpoint: tuple[str, int], timeout: float
) -> tuple[str, str]:
    """(``accepted``/``rejected``, detail) of one TLS handshake with ``endpoint``."""
    try:
        tls = settings_tls(settings)
    except SecurityError as exc:
        return "rejected", str(exc)
    if tls is None:
        return "not used", "plaintext connection"
    host, port = endpoint
    result = asyncio.run(probe_tls(host, port, tls[1], timeout=max(timeout, 5.0)))
    if result.ok:
        return "accepted", result.detail
    return "rejected", _masked(settings, result.detail)


# --------------------------------------------------------------------------- wiring


def _describe_provider(provider: Any) -> str:
    provides = getattr(provider, "provides", None)
    if callable(provides):
        return handler_name(provides)
    return type(provider).__name__


def _provided(loaded: LoadedApp, attribute: str) -> tuple[list[tuple[int, Any]], list[str]]:
    """The items of the container's ``routers`` / ``handlers`` list, with their index.

    Why item by item when the whole list fails: a router built by a factory runs the
    annotation check as it adds each handler, so one bad handler makes its provider
    raise; building the other items on their own still lets ``check`` report theirs.
    """
    try:
        items = loaded.routers() if attribute == "routers" else loaded.handler_objects()
        return list(enumerate(items)), []
    except Exception as whole:  # noqa: BLE001 - the user's providers raised: a finding
        first = whole
    parts = getattr(getattr(loaded.container, attribute, None), "args", None)
    if not parts:
        return [], [
            f"building the app's {attribute} raised {type(first).__name__}: {first}; "
            f"check needs the container's {attribute} to build without a running bus"
        ]
    found: list[tuple[int, Any]] = []
    errors: list[str] = []
    for index, part in enumerate(parts):
        try:
            found.append((index, part() if isinstance(part, providers.Provider) else part))
        except Exception as exc:  # noqa: BLE001 - reported per item, the others still checked
            hint = (
                ""
                if isinstance(exc, HexbusError)
                else f"; check needs the container's {attribute} to build without a running bus"
            )
            errors.append(
                f"building {attribute}[{index}] of the app ({_describe_provider(part)}) "
                f"raised {type(exc).__name__}: {exc}{hint}"
            )
    return found, errors


def _target_text(target: Any) -> tuple[str, str]:
    if isinstance(target, str):
        return target, "pattern"
    if isinstance(target, type) and issubclass(target, DomainEvent):
        return target.event_type, "event"
    return repr(target), "invalid"


def _check_entry(source: str, target: Any, handler: Any, name: str | None) -> SubscriptionCheck:
    """The subscription ``subscribe(target, handler, name)`` would make, checked alone.

    A fresh ``SubscriptionTable`` per entry runs exactly the checks the bus runs
    (target normalisation, ``check_handler`` against the event registry as it is now,
    with every event class of the app imported), without one entry's error stopping
    the others.
    """
    text, kind = _target_text(target)
    check = SubscriptionCheck(
        name=name or handler_name(handler),
        handler=handler_name(handler),
        kind="async" if is_async_handler(handler) else "def (thread)",
        target=text,
        target_kind=kind,
        source=source,
    )
    try:
        SubscriptionTable().add(target, handler, name)
    except HexbusError as exc:
        check.errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a diagnosis, not a crash of the CI step
        check.errors.append(
            f"checking handler {check.handler} for {text!r} raised {type(exc).__name__}: {exc}"
        )
    return check


def _equal(a: Any, b: Any) -> bool:
    """``a == b`` as the subscription table compares targets and handlers."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an exotic __eq__: treat as different
        return False


def _flag_shared_names(
    report: WiringReport, handlers: dict[int, Any], rows: list[SubscriptionCheck]
) -> None:
    """Error on every subscription whose durable name another handler uses too."""
    by_name: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_name.setdefault(row.name, []).append(i)
    for name, indices in by_name.items():
        distinct: list[int] = []
        for i in indices:
            if not any(_equal(handlers[i], handlers[j]) for j in distinct):
                distinct.append(i)
        if len(distinct) < 2:
            continue
        names = [rows[i].handler for i in distinct]
        same_class = len(set(names)) < len(names)
        message = (
            f"durable name {name!r} is used by {len(distinct)} different handlers "
            f"({', '.join(names)}); each handler needs its own durable queue / consumer "
            "group: give each a distinct name= (@router.on / subscribe) or "
            "subscription_name (EventHandler)"
            + ("; two objects of the same handler class: register it once" if same_class else "")
        )
        report.errors.append(message)
        for i in indices:
            rows[i].errors.append(message)


def _catalogue(loaded: LoadedApp, classes: list[Any]) -> list[str]:
    """The app's event types (``LoadedApp.catalogue``), plus every class it subscribes."""
    try:
        names = {cls.event_type for cls in loaded.catalogue()}
    except Exception:  # noqa: BLE001 - the providers raised (reported already)
        names = set()
    names.update(cls.event_type for cls in classes)
    return sorted(names)


def _closest(pattern: str, names: list[str], count: int = 3) -> list[str]:
    """The event types most like ``pattern`` (for a typo: what it probably meant)."""
    return sorted(names, key=lambda n: -difflib.SequenceMatcher(None, pattern, n).ratio())[:count]


def _flag_unmatched_patterns(report: WiringReport) -> None:
    """Warn about patterns that match none of the app's event types (a typo, usually).

    A warning, not an error: a service may subscribe ahead of the events it will get.
    """
    known = report.catalogue
    for row in report.subscriptions:
        if row.target_kind != "pattern" or row.errors:
            continue
        regex = compile_pattern(row.target)
        if any(regex.match(name) for name in known):
            continue
        closest = _closest(row.target, known)
        nearest = f" (closest: {', '.join(closest)})" if closest else " (it has none)"
        message = (
            f"subscription {row.name!r} (handler {row.handler}) subscribes to pattern "
            f"{row.target!r}, which matches none of the app's event types{nearest}; "
            "check the pattern for a typo, or import the event classes it is meant to "
            "receive (an event whose class is not imported cannot be decoded)"
        )
        row.warnings.append(message)
        report.warnings.append(message)


def check_wiring(loaded: LoadedApp) -> WiringReport:
    """Every subscription of the app, each checked on its own; all errors collected."""
    report = WiringReport(app=loaded.path)
    entries: list[tuple[str, Any, Any, str | None]] = []
    routers, errors = _provided(loaded, "routers")
    report.errors.extend(errors)
    for index, router in routers:
        try:
            router_entries = list(router)
        except Exception as exc:  # noqa: BLE001 - not a router: reported, the rest checked
            report.errors.append(
                f"routers[{index}] of the app is a {type(router).__name__}, not an "
                f"EventRouter ({type(exc).__name__}: {exc}); list EventRouter objects in "
                "the container's routers"
            )
            continue
        for target, handler, name in router_entries:
            entries.append((f"routers[{index}]", target, handler, name))
    objects, errors = _provided(loaded, "handlers")
    report.errors.extend(errors)
    for index, obj in objects:
        try:
            subs = handler_subscriptions(obj)
        except Exception as exc:  # noqa: BLE001 - reported, the other objects still checked
            report.errors.append(f"handlers[{index}] of the app: {exc}")
            continue
        for target, handler, name in subs:
            entries.append((f"handlers[{index}]", target, handler, name))

    seen: list[tuple[Any, Any]] = []
    handlers: dict[int, Any] = {}
    for source, target, handler, name in entries:
        if any(_equal(target, t) and _equal(handler, h) for t, h in seen):
            continue  # subscribing the same handler to the same target twice is a no-op
        seen.append((target, handler))
        row = _check_entry(source, target, handler, name)
        handlers[len(report.subscriptions)] = handler
        report.subscriptions.append(row)
        report.errors.extend(m for m in row.errors if m not in report.errors)
    _flag_shared_names(report, handlers, report.subscriptions)
    classes = [t for t, _ in seen if isinstance(t, type) and issubclass(t, DomainEvent)]
    report.catalogue = _catalogue(loaded, classes)
    _flag_unmatched_patterns(report)
    if report.ok:
        try:  # belt and braces: the table the bus would build must accept it all too
            table = loaded.subscriptions()
        except Exception as exc:  # noqa: BLE001 - a finding, reported
            report.errors.append(f"the bus would refuse this wiring: {type(exc).__name__}: {exc}")
        else:
            idempotent = table.idempotent_names()
            if idempotent and not outbox_configured(loaded.settings(), loaded):
                report.errors.append(
                    f"subscription(s) {', '.join(idempotent)} are idempotent but no inbox "
                    "database is configured: set HEXBUS_OUTBOX_URL (the bus would refuse to "
                    "start)"
                )
    return report


_WIRING_ERRORS = (InvalidHandlerError, InvalidPatternError, DuplicateEventTypeError)


def _import_failure(path: str) -> str | None:
    """Why the app's module cannot be imported, when hexbus itself refused it.

    Why before ``load_app``: an ``EventRouter`` decorator checks its handler when the
    module is imported, so a handler annotated for the wrong event stops the import;
    that is a wiring error (exit 1, reported like the others, also in ``--json``), not
    an unusable ``--app`` (exit 2). Other import failures are left to ``load_app``.
    """
    module_name = path.partition(":")[0]
    if ":" not in path or not module_name:
        return None
    if os.getcwd() not in sys.path:  # the project's root, as load_app does
        sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(module_name)
    except HexbusError as exc:
        message = f"--app {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        if isinstance(exc, _WIRING_ERRORS):
            message += (
                "; hexbus checks a router's handler when its decorator runs, so the module "
                "cannot be imported, and no other handler of the app checked, until this "
                "is fixed"
            )
        return message
    except Exception:  # noqa: BLE001 - load_app reports it (exit 2)
        return None
    return None


# --------------------------------------------------------------------------- command


def check_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each broker TCP connect.")
    ] = PROBE_TIMEOUT,
    skip_brokers: Annotated[
        bool,
        typer.Option(
            "--skip-brokers",
            "--offline",
            help=(
                "Do not contact the brokers (no reachability or session probe): check "
                "the configuration and the app's wiring only, e.g. as a CI step."
            ),
        ),
    ] = False,
    app: AppOption = None,
) -> None:
    """Check the configuration, the adapter, the brokers and the app's handler wiring.

    With --app (or HEXBUS_APP), every subscription of the app is listed with its
    handler, event type or pattern, durable name and the annotation check; any wiring
    error exits 1 (after everything is printed).
    """
    loaded: LoadedApp | None = None
    if app:
        failure = _import_failure(app)
        if failure is not None:
            if as_json:
                print(json.dumps({"ok": False, "app": app, "error": failure}, indent=2))
            fail(failure)
        loaded = load_app(app)
    try:
        settings = loaded.settings() if loaded else load_settings()
    except ConfigurationError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        fail(str(exc))
    usable, detail = availability(settings.adapter)
    probes: list[BrokerProbe] = []
    session: str | None = None
    session_error: BaseException | None = None
    if not skip_brokers:
        probes = [probe(h, p, timeout) for h, p in broker_endpoints(settings)]
        if usable and probes and all(p.reachable for p in probes):
            session, session_error = _session(settings, timeout=max(timeout, 10.0))
    endpoint = (probes[0].host, probes[0].port) if probes else None
    security = security_report(
        settings, endpoint=endpoint, session=session, error=session_error, timeout=timeout
    )
    wiring = check_wiring(loaded) if loaded else None
    outbox = outbox_status(settings, loaded, contact=not skip_brokers)
    config_ok = usable and all(p.reachable for p in probes) and session in (None, SESSION_OK)
    ok = config_ok and (wiring is None or wiring.ok) and (outbox is None or outbox["ok"])
    if as_json:
        report: dict[str, Any] = {
            "ok": ok,
            "app": app or None,
            "config": settings.safe_dump(),
            "adapter": {"name": settings.adapter, "available": usable, "detail": detail},
            "brokers_skipped": skip_brokers,
            "brokers": [asdict(p) for p in probes],
            "session": session,
            "security": security.as_dict() if security else None,
            "subscriptions": [s.as_dict() for s in wiring.subscriptions] if wiring else [],
            "wiring": wiring.as_dict() if wiring else _unchecked_wiring(),
            "outbox": outbox,
        }
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(settings, usable, detail, probes, skip_brokers=skip_brokers)
        if session is not None:
            style = "green" if session == SESSION_OK else "red"
            out_console().print(Text.assemble("session: ", (session, style)))
        _print_security(security)
        _print_wiring(wiring)
        print_outbox_status(outbox)
    if not ok:
        problems = [] if usable else [detail]
        problems += [
            f"{p.host}:{p.port} unreachable ({p.error})" for p in probes if not p.reachable
        ]
        if session not in (None, SESSION_OK):
            problems.append(f"session: {session}")
        if outbox is not None and not outbox["ok"]:
            problems.append(f"outbox: {outbox['error']}")
        if wiring is not None and not wiring.ok:
            count = len(wiring.errors)
            problems.append(f"{count} wiring error{'s' if count != 1 else ''} in {wiring.app}")
        if not as_json:
            err_console().print(Text("check failed: " + "; ".join(problems), style="bold red"))
        raise typer.Exit(EXIT_ERROR)


def _unchecked_wiring() -> dict[str, Any]:
    return {
        "checked": False,
        "ok": True,
        "errors": [],
        "warnings": [],
        "catalogue": [],
        "hint": f"wiring not checked: {HOW_TO}",
    }


def _print_report(
    settings: HexbusSettings,
    usable: bool,
    detail: str,
    probes: list[BrokerProbe],
    *,
    skip_brokers: bool,
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
    if skip_brokers:
        endpoints = broker_endpoints(settings)
        where = ", ".join(f"{h}:{p}" for h, p in endpoints) or "none needed (in-process)"
        console.print(Text(f"broker: not contacted (--skip-brokers): {where}", style="dim"))
        return
    if not probes:
        console.print(Text("broker: none needed (in-process)", style="dim"))
    for p in probes:
        status = ("ok", "green") if p.reachable else (f"unreachable: {p.error}", "red")
        console.print(Text.assemble(f"broker {p.host}:{p.port}: ", status))


_STATUS_STYLE = {"accepted": "green", "rejected": "red", "not used": "dim", "not checked": "yellow"}


def _print_security(report: SecurityReport | None) -> None:
    """``security: <mode>`` and, under it, the verdicts on the chain and credentials."""
    if report is None:
        return
    console = out_console()
    console.print(Text.assemble("security: ", (report.mode.text, "bold")))
    for what, status, detail in (
        ("certificate chain", report.chain, report.chain_detail),
        ("credentials", report.credentials, report.credentials_detail),
    ):
        tail = f" ({detail})" if detail else ""
        console.print(
            Text.assemble(f"  {what}: ", (status, _STATUS_STYLE.get(status, "")), tail)
        )


def _print_wiring(wiring: WiringReport | None) -> None:
    console = out_console()
    if wiring is None:
        console.print(Text.assemble(("wiring: not checked", "yellow"), f" — {HOW_TO}"))
        return
    table = Table(title=f"Handler wiring of {wiring.app}", title_justify="left")
    table.add_column("durable name", overflow="fold")
    table.add_column("handler", overflow="fold")
    table.add_column("subscribes to", style="cyan", overflow="fold")
    table.add_column("check", no_wrap=True)
    numbers = {message: f"E{i}" for i, message in enumerate(wiring.errors, 1)}
    numbers.update({message: f"W{i}" for i, message in enumerate(wiring.warnings, 1)})
    previous: SubscriptionCheck | None = None
    for row in wiring.subscriptions:
        target = row.target if row.target_kind == "event" else f"{row.target} ({row.target_kind})"
        # One durable name with several targets: name and handler shown once.
        same_name = previous is not None and previous.name == row.name
        same_handler = same_name and previous is not None and previous.handler == row.handler
        previous = row
        if row.errors:
            status = Text("error " + " ".join(numbers[m] for m in row.errors), style="red")
        elif row.warnings:
            status = Text("ok, " + " ".join(numbers[m] for m in row.warnings), style="yellow")
        else:
            status = Text("ok", style="green")
        table.add_row(
            "" if same_name else row.name,
            "" if same_handler else f"{row.handler} ({row.kind})",
            target,
            status,
        )
    console.print(table)
    for message in wiring.errors:
        console.print(Text.assemble((f"{numbers[message]} error: ", "bold red"), message))
    for message in wiring.warnings:
        console.print(Text.assemble((f"{numbers[message]} warning: ", "yellow"), message))
    count = len(wiring.subscriptions)
    summary = (
        f"wiring: {count} subscription{'s' if count != 1 else ''}, "
        f"{len(wiring.errors)} error{'s' if len(wiring.errors) != 1 else ''}, "
        f"{len(wiring.warnings)} warning{'s' if len(wiring.warnings) != 1 else ''}"
    )
    console.print(Text(summary, style="green" if wiring.ok else "bold red"))
