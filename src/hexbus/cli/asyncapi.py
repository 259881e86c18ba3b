"""``hexbus asyncapi --app ...``: the app's events and topology as an AsyncAPI 3.0 document.

Why from the app: its container knows the settings (which broker, which names), its
catalogue (the events it publishes) and its subscriptions (what it consumes), so the
document shows the real servers, topics, queues and consumer groups of that service,
not a generic catalogue. The document itself is built by
``hexbus.infrastructure.asyncapi``; this module only picks the app, the transport and
the output.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Annotated

import typer

from hexbus import __version__
from hexbus.cli._common import EXIT_UNAVAILABLE, fail
from hexbus.cli.app import AppOption, LoadedApp, load_app
from hexbus.domain.errors import HexbusError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.asyncapi import FORMATS, TRANSPORTS, asyncapi_document, render

__all__ = ["asyncapi_command"]

_SUFFIX_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def _app_version(loaded: LoadedApp) -> str:
    """The version of the distribution the app's package comes from (else hexbus's)."""
    root = loaded.module.split(".", 1)[0]
    for dist in packages_distributions().get(root, []):
        try:
            return version(dist)
        except PackageNotFoundError:  # pragma: no cover - listed but without metadata
            continue
    return __version__


def _published(loaded: LoadedApp, catalogue: list[type[DomainEvent]]) -> list[type[DomainEvent]]:
    """The catalogue events the app's own package defines (the others it only consumes)."""
    root = loaded.module.split(".", 1)[0]
    return [
        cls for cls in catalogue if cls.__module__ == root or cls.__module__.startswith(root + ".")
    ]


def _format(fmt: str | None, output: Path | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}", EXIT_UNAVAILABLE)
        return fmt
    if output is not None:
        return _SUFFIX_FORMATS.get(output.suffix.lower(), "json")
    return "json"


def asyncapi_command(
    app: AppOption = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help=f"Document the topology of this transport ({'|'.join(TRANSPORTS)}) instead "
            "of the app's configured adapter (HEXBUS_ADAPTER).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"Output format ({'|'.join(FORMATS)}). Default: from the --output file's "
            "suffix (.yaml/.yml/.json), else json.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the document to this file instead of stdout."),
    ] = None,
    indent: Annotated[int, typer.Option(help="JSON indentation (0: one line).")] = 2,
) -> None:
    """Print the app's AsyncAPI 3.0 document: servers, channels, operations, messages.

    Send operations are the events the app defines, receive operations its
    subscriptions; broker passwords are never written.
    """
    loaded = load_app(app)
    if adapter is not None and adapter not in TRANSPORTS:
        fail(f"--adapter {adapter!r}: choose one of {', '.join(TRANSPORTS)}", EXIT_UNAVAILABLE)
    chosen = _format(fmt, output)
    try:
        catalogue = loaded.catalogue()
        document = asyncapi_document(
            catalogue,
            loaded.subscriptions(),
            loaded.settings(),
            transport=adapter,
            published=_published(loaded, catalogue),
            version=_app_version(loaded),
        )
    except HexbusError as exc:
        fail(f"cannot document --app {loaded.path}: {exc}")
    text = render(document, chosen, indent=indent)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}; choose a writable --output path")
