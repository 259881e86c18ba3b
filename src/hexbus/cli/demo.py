"""``hexbus demo``: run the sample service's scripted scenario on the configured adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from hexbus.cli._common import EXIT_UNAVAILABLE, fail, out_console
from hexbus.cli.app import DEMO_APP, AppOption, load_app
from hexbus.demo.container import DemoContainer
from hexbus.demo.scenario import run_demo
from hexbus.domain.errors import ConfigurationError

__all__ = ["demo_command"]


def demo_command(
    audit_log: Annotated[
        Path | None,
        typer.Option(
            "--audit-log",
            help="Append the audit trail (JSON lines) here; default: a new temp file.",
            dir_okay=False,
        ),
    ] = None,
    app: AppOption = None,
) -> None:
    """Run the sample user service: sign-ups, logins, a brute force, items, an outage.

    --app may name the sample service's container or a subclass of it (your own
    adapters behind its ports); the default is the sample service itself.
    """
    container: Any = load_app(app).container if app else DemoContainer()
    if not hasattr(container, "register_user"):
        fail(
            f"--app {app!r} is not the sample service: `hexbus demo` runs the demo's "
            f"scenario, which needs {DEMO_APP} or a subclass of DemoContainer",
            EXIT_UNAVAILABLE,
        )
    if audit_log is not None:
        container.config.from_dict({"audit_log_path": str(audit_log)})
    try:
        asyncio.run(run_demo(container, out_console()))
    except ConfigurationError as exc:
        fail(str(exc))
