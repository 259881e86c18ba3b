"""Dead letters on the wire: one set of failure-header names, one way to read them back.

Why here and not in each adapter: design.md §4 promises that a dead letter keeps the
original bytes plus the error, the attempt count and the handler, on every broker. The
header names, the record a broker adapter writes and the ``DeadLetter`` it reads back
are therefore defined once; each adapter only says how its transport carries headers
(AMQP table values, Kafka ``(name, bytes)`` pairs) and where the message came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from hexbus.application.consuming import Outcome
from hexbus.domain.events import EventRegistry
from hexbus.domain.ports import DeadLetter

__all__ = [
    "ATTEMPTS_HEADER",
    "ERROR_HEADER",
    "FAILED_AT_HEADER",
    "FAILURE_HEADERS",
    "HANDLER_HEADER",
    "ORIGIN_HEADER",
    "REASON_HEADER",
    "dead_letter_from_headers",
    "failure_headers",
    "header_int",
    "header_text",
    "replay_refusal",
]

ERROR_HEADER: Final = "x-hexbus-error"
REASON_HEADER: Final = "x-hexbus-reason"
ATTEMPTS_HEADER: Final = "x-hexbus-attempts"
#: The durable subscription whose handler failed (named "handler" in the CLI).
HANDLER_HEADER: Final = "x-hexbus-handler"
FAILED_AT_HEADER: Final = "x-hexbus-failed-at"
#: Where the message was first delivered: the routing key, or ``topic[partition]@offset``.
ORIGIN_HEADER: Final = "x-hexbus-origin"
#: Every header a dead-lettering adds; removed again when a dead letter is replayed.
FAILURE_HEADERS: Final = (
    ERROR_HEADER,
    REASON_HEADER,
    ATTEMPTS_HEADER,
    HANDLER_HEADER,
    FAILED_AT_HEADER,
    ORIGIN_HEADER,
)


def failure_headers(outcome: Outcome, *, origin: str) -> dict[str, str]:
    """The failure record of a dead-letter ``outcome`` as header values (all text)."""
    return {
        ERROR_HEADER: outcome.error or "",
        REASON_HEADER: outcome.reason or "",
        ATTEMPTS_HEADER: str(outcome.attempt),
        HANDLER_HEADER: outcome.subscription or "",
        FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
        ORIGIN_HEADER: origin,
    }


def header_text(value: Any) -> str | None:
    """A header value as text, whatever the client gave (bytes, str, int ...)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def header_int(value: Any, default: int) -> int:
    """A header value as an int (``default`` when absent or not a number)."""
    text = header_text(value)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def dead_letter_from_headers(
    subscription: str,
    headers: Mapping[str, Any],
    body: bytes,
    *,
    event_id: str | None,
    event_type: str | None,
    position: str | None = None,
) -> DeadLetter:
    """Read a dead letter back from the failure headers a broker adapter wrote."""
    attempts = headers.get(ATTEMPTS_HEADER)
    return DeadLetter(
        subscription=subscription,
        event_id=event_id,
        event_type=event_type,
        error=header_text(headers.get(ERROR_HEADER)),
        reason=header_text(headers.get(REASON_HEADER)) or None,
        attempts=None if attempts is None else header_int(attempts, 0),
        handler=header_text(headers.get(HANDLER_HEADER)),
        failed_at=header_text(headers.get(FAILED_AT_HEADER)),
        origin=header_text(headers.get(ORIGIN_HEADER)),
        position=position,
        body=body,
        headers=dict(headers),
    )


def replay_refusal(letter: DeadLetter, registry: EventRegistry) -> str | None:
    """Why ``letter`` must not be replayed (``None``: it may be); the same on every broker.

    A dead letter this process cannot decode into a registered type would only be
    dead-lettered again (``unknown_type``), so it stays where it is, for a person.
    """
    if letter.event_type is None:
        return (
            "it names no event type (it could not be decoded: "
            f"{letter.reason or 'unknown reason'}), so a replay could only dead-letter it "
            "again; inspect it with `hexbus dlq list --json`"
        )
    if letter.event_type not in registry:
        return (
            f"its event type {letter.event_type!r} is not registered in this process (no "
            "DomainEvent class declares it), so a replay could only dead-letter it again; "
            "import the module that defines it (--app), or leave it"
        )
    return None
