"""``hexbus asyncapi``: the event catalogue as an AsyncAPI 3.0 document.

Why generate it: the pydantic classes are the source of truth for every event's
schema; a document derived from them cannot drift, and non-Python teams read it with
standard AsyncAPI tooling. One channel per ``event_type`` (the routing key / topic).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hexbus import __version__
from hexbus.cli.app import AppOption, load_app
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.infrastructure.codec import ENVELOPE_FIELDS

__all__ = ["asyncapi_command", "asyncapi_document"]

_REF = "#/components/schemas/{model}"


def _payload_schema(cls: type[DomainEvent], schemas: dict[str, Any]) -> dict[str, Any]:
    """The event's own fields: the envelope (id, time, correlation ...) travels as
    CloudEvents attributes, not in the data (design §5)."""
    schema = cls.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    schema["properties"] = {
        k: v for k, v in schema.get("properties", {}).items() if k not in ENVELOPE_FIELDS
    }
    required = [k for k in schema.get("required", []) if k not in ENVELOPE_FIELDS]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return schema


def _message(cls: type[DomainEvent], schemas: dict[str, Any]) -> dict[str, Any]:
    schemas[cls.__name__] = _payload_schema(cls, schemas)
    doc = (cls.__doc__ or "").strip()
    return {
        "name": cls.event_type,
        "title": cls.__name__,
        "summary": doc.splitlines()[0] if doc else f"The {cls.event_type} domain event.",
        "contentType": "application/json",
        "payload": {"$ref": _REF.format(model=cls.__name__)},
        "correlationId": {
            "description": "CloudEvents extension 'correlationid' (Kafka header "
            "ce_correlationid, AMQP property cloudEvents:correlationid)",
            "location": "$message.header#/ce_correlationid",
        },
        "x-cloudevents": {
            "specversion": "1.0",
            "type": cls.event_type,
            "eventversion": cls.event_version,
        },
    }


def asyncapi_document(
    registry: EventRegistry = event_registry, *, title: str = "hexbus event catalogue"
) -> dict[str, Any]:
    """An AsyncAPI 3.0.0 document for every registered event class."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for cls in sorted(registry, key=lambda c: c.event_type):
        name = cls.__name__
        messages[name] = _message(cls, schemas)
        channels[cls.event_type] = {
            "address": cls.event_type,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"{cls.event_type}.publish"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cls.event_type}"},
            "messages": [{"$ref": f"#/channels/{cls.event_type}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Domain events published through hexbus (CloudEvents 1.0, "
            "binary content mode; data = the payload below).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def asyncapi_command(
    indent: Annotated[int, typer.Option(help="JSON indentation.")] = 2,
    app: AppOption = None,
) -> None:
    """Print the AsyncAPI 3.0 JSON document of the registered event catalogue."""
    load_app(app)  # imports the app's event catalogue
    print(json.dumps(asyncapi_document(), indent=indent or None))
