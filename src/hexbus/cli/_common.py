"""What every command shares: the consoles and one way to fail."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["EXIT_ERROR", "EXIT_UNAVAILABLE", "err_console", "fail", "out_console"]

EXIT_ERROR = 1
#: The command exists but cannot run in this version/configuration (like a usage error).
EXIT_UNAVAILABLE = 2


def out_console() -> Console:
    """Built per call so CliRunner's captured stdout is the one written to."""
    return Console(highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (no traceback)."""
    err_console().print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)
