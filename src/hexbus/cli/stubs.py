"""``tail`` and ``dlq``: they read from a broker, and the broker adapters are not here yet."""

from __future__ import annotations

from hexbus.cli._common import EXIT_UNAVAILABLE, fail

__all__ = ["dlq_command", "tail_command"]

_MESSAGE = "`hexbus {}` needs a broker adapter (rabbitmq/kafka); not available yet"


def tail_command() -> None:
    """Print live events as they are published (broker adapters only)."""
    fail(_MESSAGE.format("tail"), EXIT_UNAVAILABLE)


def dlq_command() -> None:
    """List and replay dead letters (broker adapters only)."""
    fail(_MESSAGE.format("dlq"), EXIT_UNAVAILABLE)
