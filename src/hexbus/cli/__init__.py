"""The ``hexbus`` command line (typer): one small module per command.

Why nothing here imports a broker client: ``hexbus check`` must work, and say what is
missing, precisely when a broker extra is not installed.
"""

from __future__ import annotations

import typer

from hexbus.cli.asyncapi import asyncapi_command
from hexbus.cli.bench import bench_command
from hexbus.cli.check import check_command
from hexbus.cli.demo import demo_command
from hexbus.cli.dlq import dlq_app
from hexbus.cli.lag import lag_command
from hexbus.cli.outbox import outbox_app, relay_command
from hexbus.cli.publish import publish_command
from hexbus.cli.tail import tail_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="hexbus",
    help="Typed asyncio domain-event bus: demo, diagnostics, benchmarks and tooling.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo_command)
app.command("check")(check_command)
app.command("bench")(bench_command)
app.command("publish")(publish_command)
app.command("asyncapi")(asyncapi_command)
app.command("tail")(tail_command)
app.command("lag")(lag_command)
app.command("relay")(relay_command)
app.add_typer(dlq_app, name="dlq")
app.add_typer(outbox_app, name="outbox")


def main() -> None:
    """Console-script entry point (``hexbus = "hexbus.cli:main"``)."""
    app()
