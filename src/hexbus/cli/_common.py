"""What every command shares: the consoles, one way to fail, and running the configured bus.

Why the bus helpers live here: ``tail``, ``dlq`` and ``check`` all build the configured
bus through the adapter registry (``build_bus``) and talk to it only through the
``EventBus`` port and the capability protocols of ``hexbus.domain.ports``; the CLI never
imports a broker client nor reaches into an adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from hexbus.domain.errors import ConfigurationError
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import HexbusSettings, load_settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_UNAVAILABLE",
    "START_TIMEOUT",
    "broker_settings",
    "build_bus_or_fail",
    "err_console",
    "fail",
    "out_console",
    "redact",
    "run_on_bus",
]

T = TypeVar("T")

EXIT_ERROR = 1
#: The command exists but cannot run in this version/configuration (like a usage error).
EXIT_UNAVAILABLE = 2
#: Bounds connecting + starting the adapter (a broker that accepts TCP but never answers).
START_TIMEOUT = 30.0


def out_console() -> Console:
    """Built per call so CliRunner's captured stdout is the one written to."""
    return Console(highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (no traceback)."""
    err_console().print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def redact(settings: HexbusSettings, text: str) -> str:
    """``text`` with every secret of ``settings`` replaced by ``***``: the URL passwords,
    the Kafka SASL password, the client key's password.

    Why on the whole text and not only on URLs: client libraries quote the password in
    their own words (``authentication failed for ... s3cr3t``), not always inside a URL.
    """
    for secret in sorted(settings.secret_values(), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def broker_settings(memory_message: str, settings: HexbusSettings | None = None) -> HexbusSettings:
    """Settings of a broker adapter, or exit: 1 for bad config, 2 for the memory adapter.

    Why the memory adapter is refused by name: its events and dead letters live only in
    the process that published / handled them, and a CLI command is always a process of
    its own, so it would see nothing; ``memory_message`` says so and what to do instead.
    """
    if settings is None:
        try:
            settings = load_settings()
        except ConfigurationError as exc:
            fail(str(exc))
    if settings.adapter == "memory":
        fail(memory_message, EXIT_UNAVAILABLE)
    return settings


def build_bus_or_fail(settings: HexbusSettings, **overrides: Any) -> EventBus:
    """The (not started) bus of ``settings.adapter``, from the registry; exit 1 if the
    adapter cannot be built (its extra is not installed, an invalid override)."""
    try:
        return build_bus(settings, **overrides)
    except ConfigurationError as exc:
        fail(redact(settings, str(exc)), EXIT_ERROR)


def run_on_bus(
    settings: HexbusSettings,
    action: Callable[[EventBus], Awaitable[T]],
    *,
    bus: EventBus,
) -> T:
    """Start ``bus``, run ``action(bus)``, stop it; every failure → ``fail`` (exit 1)."""

    async def run() -> T:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await bus.start()
            return await action(bus)
        finally:
            await bus.stop()

    try:
        return asyncio.run(run())
    except typer.Exit:
        raise
    except TimeoutError:
        fail(f"no answer from the {settings.adapter} broker within {START_TIMEOUT:.0f}s")
    except ConfigurationError as exc:  # unreachable broker, bad credentials
        fail(redact(settings, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported without a traceback, password masked
        fail(redact(settings, f"{type(exc).__name__}: {exc}"))
