"""``hexbus publish TYPE JSON``: send one event, built from its wire name, on the configured bus.

Why through ``event_from_dict``: the CLI validates exactly as a consuming service would
(the registered class's pydantic schema), so a typo fails here, not in a consumer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

import hexbus.demo.events  # noqa: F401 - registers user.*, item.*, system.* by name
from hexbus.cli._common import fail, out_console
from hexbus.domain.errors import ConfigurationError, EventSchemaError, UnknownEventTypeError
from hexbus.domain.events import DomainEvent, event_from_dict
from hexbus.infrastructure.container import Container

__all__ = ["parse_metadata", "publish_command"]


def load_catalogue() -> None:
    """The events the CLI knows by name: the demo's, registered by the import above.

    A hook for later (entry points of installed services); today a no-op.
    """


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: use key=value, e.g. ip_address=10.0.0.1")
        out[key] = value
    return out


async def _publish(event: DomainEvent, metadata: dict[str, str], key: str | None) -> None:
    container = Container()
    await container.init_resources()  # type: ignore[misc]
    try:
        await container.event_bus().publish(event, metadata=metadata or None, key=key)
    finally:
        await container.shutdown_resources()  # type: ignore[misc]


def publish_command(
    event_type: Annotated[str, typer.Argument(help="Wire name, e.g. user.created.")],
    data: Annotated[str, typer.Argument(help="The event's fields as a JSON object.")],
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value, repeatable.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Ordering key (Kafka partition key).")] = None,
) -> None:
    """Validate DATA against TYPE's schema and publish it; prints the event id."""
    load_catalogue()
    meta = parse_metadata(metadata or [])
    try:
        fields: Any = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"DATA is not valid JSON: {exc}")
    if not isinstance(fields, dict):
        fail(f"DATA must be a JSON object, got {type(fields).__name__}")
    try:
        event = event_from_dict(event_type, fields)
    except (UnknownEventTypeError, EventSchemaError) as exc:
        fail(str(exc))
    try:
        asyncio.run(_publish(event, meta, key))
    except ConfigurationError as exc:
        fail(str(exc))
    out_console().print(str(event.event_id), soft_wrap=True)
