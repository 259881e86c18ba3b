"""``hexbus publish TYPE JSON --app ...``: send one event of the app's catalogue.

Why through ``event_from_dict`` and the app's catalogue: the CLI validates exactly as a
consuming service would (the registered class's pydantic schema), so a typo fails here,
not in a consumer; and it only offers the app's own event types, listing them when the
name is wrong.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from hexbus.cli._common import EXIT_UNAVAILABLE, build_bus_or_fail, fail, out_console, redact
from hexbus.cli.app import AppOption, load_app
from hexbus.domain.errors import ConfigurationError, EventSchemaError, PublishError
from hexbus.domain.events import DomainEvent, event_from_dict
from hexbus.domain.ports import EventBus

__all__ = ["parse_metadata", "publish_command"]


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: use key=value, e.g. ip_address=10.0.0.1")
        out[key] = value
    return out


async def _publish(
    bus: EventBus, event: DomainEvent, metadata: dict[str, str], key: str | None
) -> None:
    """A bare bus of the app's adapter (none of its handlers: this process only sends)."""
    async with bus:
        await bus.publish(event, metadata=metadata or None, key=key)


def publish_command(
    event_type: Annotated[str, typer.Argument(help="Wire name, e.g. user.created.")],
    data: Annotated[str, typer.Argument(help="The event's fields as a JSON object.")],
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value, repeatable.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Ordering key (Kafka partition key).")] = None,
    app: AppOption = None,
) -> None:
    """Validate DATA against TYPE's schema and publish it on the app's bus; prints the id."""
    loaded = load_app(app)
    meta = parse_metadata(metadata or [])
    known = {cls.event_type: cls for cls in loaded.catalogue()}
    if event_type not in known:
        listed = ", ".join(sorted(known)) or "none"
        fail(
            f"unknown event type {event_type!r} for --app {loaded.path}; its event types: "
            f"{listed}",
            EXIT_UNAVAILABLE,
        )
    try:
        fields: Any = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"DATA is not valid JSON: {exc}")
    if not isinstance(fields, dict):
        fail(f"DATA must be a JSON object of {event_type}'s fields, got {type(fields).__name__}")
    try:
        event = event_from_dict(event_type, fields)
    except EventSchemaError as exc:
        fail(str(exc))
    settings = loaded.settings()
    bus = build_bus_or_fail(settings)
    try:
        asyncio.run(_publish(bus, event, meta, key))
    except (ConfigurationError, PublishError) as exc:
        fail(redact(settings, str(exc)))
    out_console().print(str(event.event_id), soft_wrap=True)
