"""Payload schemas: the events' pydantic JSON schemas as AsyncAPI Schema objects.

Why not pydantic's output as it is: AsyncAPI Schema is based on JSON Schema draft 07,
pydantic writes 2020-12 (``prefixItems``, an OpenAPI-style ``discriminator`` object);
and the payload is the event's own fields only, since the envelope travels as
CloudEvents attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from pydantic.json_schema import models_json_schema

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import ENVELOPE_FIELDS

__all__ = ["SCHEMA_REF", "payload_schemas"]

SCHEMA_REF: Final = "#/components/schemas/{model}"

#: Keywords whose value maps names to schemas (the names are data, not keywords).
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


def _asyncapi_schema(node: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema as an AsyncAPI Schema (draft 07 based).

    ``prefixItems`` (tuples) becomes draft-07 ``items`` as a list; pydantic's OpenAPI-style
    ``discriminator`` object is dropped (AsyncAPI's is a plain string with other
    semantics; the ``oneOf`` branches' ``const`` tags already tell them apart).
    """
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "discriminator" and isinstance(value, dict):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _asyncapi_schema(sub) for name, sub in value.items()}
        elif key in ("const", "default", "enum", "examples", "example"):
            out[key] = value  # instance data, not schemas
        else:
            out[key] = _asyncapi_schema(value)
    if "prefixItems" in out:
        prefix = out.pop("prefixItems")
        rest = out.pop("items", None)
        out["items"] = prefix
        if rest is not None:
            out["additionalItems"] = rest
    return out


def payload_schemas(
    events: Sequence[type[DomainEvent]],
) -> tuple[dict[type[DomainEvent], str], dict[str, Any]]:
    """The component key of each event's payload schema, and every component schema.

    One pydantic pass over all events, so two nested models of the same name in
    different modules get distinct keys instead of overwriting each other.
    """
    refs, top = models_json_schema([(cls, "validation") for cls in events], ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    keys: dict[type[DomainEvent], str] = {}
    for cls in events:
        key = refs[(cls, "validation")]["$ref"].rsplit("/", 1)[-1]
        keys[cls] = key
        schema = dict(schemas[key])
        # The envelope (id, time, correlation ...) travels as CloudEvents attributes, not
        # in the data (design §5): the payload is the event's own fields.
        schema["properties"] = {
            name: value
            for name, value in schema.get("properties", {}).items()
            if name not in ENVELOPE_FIELDS
        }
        required = [name for name in schema.get("required", []) if name not in ENVELOPE_FIELDS]
        if required:
            schema["required"] = required
        else:
            schema.pop("required", None)
        schema.pop("examples", None)  # whole-event examples go to the message's examples
        schemas[key] = schema
    return keys, {key: _asyncapi_schema(value) for key, value in schemas.items()}
