"""The wire side of the document: CloudEvents attributes as each binding carries them,
and the servers of the configured broker.

Why the header names come from ``hexbus.infrastructure.names``: the adapters' marshals
write the same names; this module must not import an adapter package (its client
library may not be installed where the document is generated).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.asyncapi.examples import EXAMPLE_NAMESPACE, EXAMPLE_TIME
from hexbus.infrastructure.codec import CONTENT_TYPE, SPECVERSION
from hexbus.infrastructure.names import (
    AMQP_HEADER_PREFIX,
    KAFKA_CONTENT_TYPE_HEADER,
    KAFKA_HEADER_PREFIX,
)
from hexbus.infrastructure.settings import redact_url

__all__ = [
    "AMQP_BINDING_VERSION",
    "BINDINGS",
    "KAFKA_BINDING_VERSION",
    "example_headers",
    "headers_schema",
    "kafka_servers",
    "rabbitmq_server",
]

AMQP_BINDING_VERSION: Final = "0.3.0"
KAFKA_BINDING_VERSION: Final = "0.5.0"


@dataclass(frozen=True)
class _Binding:
    """Header names of one CloudEvents protocol binding (or of none, in process)."""

    prefix: str
    #: The header ``datacontenttype`` travels as; ``None`` = a message property (AMQP).
    content_type_header: str | None

    def header(self, attribute: str) -> str:
        if attribute == "datacontenttype" and self.content_type_header is not None:
            return self.content_type_header
        return self.prefix + attribute


BINDINGS: Final[Mapping[str, _Binding]] = {
    "kafka": _Binding(KAFKA_HEADER_PREFIX, KAFKA_CONTENT_TYPE_HEADER),
    "rabbitmq": _Binding(AMQP_HEADER_PREFIX, None),
    # In process there is no binding: the plain CloudEvents attribute names.
    "memory": _Binding("", "datacontenttype"),
}


def _attributes(cls: type[DomainEvent]) -> list[tuple[str, bool, dict[str, Any]]]:
    """(attribute, always sent, schema) for every CloudEvents attribute hexbus writes."""
    return [
        ("specversion", True, {"const": SPECVERSION, "description": "CloudEvents version."}),
        (
            "id",
            True,
            {
                "description": "The event's id (event_id: a UUIDv7 from hexbus producers; "
                "hexbus also reads other ids and derives a stable UUID from them)."
            },
        ),
        ("type", True, {"const": cls.event_type, "description": "The event type."}),
        (
            "source",
            True,
            {"description": "The producing service (its HEXBUS_SERVICE_NAME)."},
        ),
        (
            "time",
            True,
            {"format": "date-time", "description": "When it happened (occurred_at), UTC."},
        ),
        (
            "datacontenttype",
            True,
            {"const": CONTENT_TYPE, "description": "The payload's media type."},
        ),
        (
            "correlationid",
            False,
            {
                "description": "The conversation this event belongs to: the id of the "
                "first event of it (extension correlationid). Absent when it would "
                "equal the event's own id (the first event of a conversation)."
            },
        ),
        (
            "causationid",
            False,
            {
                "description": "The id of the event whose handler published this one "
                "(extension causationid; absent for a top-level publish)."
            },
        ),
        (
            "eventversion",
            True,
            {
                "const": str(cls.event_version),
                "description": "The schema version of the event class (extension "
                "eventversion); a consumer dead-letters versions newer than its own.",
            },
        ),
        (
            "hexbusmetakeys",
            False,
            {
                "description": "Original spelling of metadata keys whose extension name "
                "differs (comma-separated, '%' and ',' escaped)."
            },
        ),
    ]


def headers_schema(cls: type[DomainEvent], transport: str) -> dict[str, Any]:
    binding = BINDINGS[transport]
    properties: dict[str, Any] = {}
    required: list[str] = []
    for attribute, always, schema in _attributes(cls):
        if attribute == "datacontenttype" and binding.content_type_header is None:
            continue  # AMQP: the message's content_type property (contentType below)
        name = binding.header(attribute)
        properties[name] = {"type": "string", **schema}
        if always:
            required.append(name)
    if transport == "rabbitmq":
        properties["x-hexbus-key"] = {
            "type": "string",
            "description": "The publish key, when one was given (the ordering key on "
            "Kafka; informative here).",
        }
        properties["x-hexbus-attempt"] = {
            "type": "integer",
            "minimum": 2,
            "description": "Delivery attempt of a retried message (absent on the first).",
        }
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": {
            "type": "string",
            "description": "Metadata given to publish, as CloudEvents extensions "
            "(names of lower-case letters and digits).",
        },
    }


def example_headers(cls: type[DomainEvent], transport: str, source: str) -> dict[str, Any]:
    binding = BINDINGS[transport]
    event_id = str(uuid.uuid5(EXAMPLE_NAMESPACE, cls.event_type))
    values = {
        "specversion": SPECVERSION,
        "id": event_id,
        "type": cls.event_type,
        "source": source,
        "time": EXAMPLE_TIME,
        "datacontenttype": CONTENT_TYPE,
        # no correlationid: the example starts its conversation (correlation = its id)
        "eventversion": str(cls.event_version),
    }
    return {
        binding.header(name): value
        for name, value in values.items()
        if not (name == "datacontenttype" and binding.content_type_header is None)
    }


def _host(hostname: str, port: int | None) -> str:
    host = f"[{hostname}]" if ":" in hostname else hostname
    return host if port is None else f"{host}:{port}"


def rabbitmq_server(url: str) -> tuple[dict[str, Any], str, bool]:
    """The server object, the vhost, and whether the URL carries credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"HEXBUS_RABBITMQ_URL={redact_url(url)!r} cannot be read ({exc}); fix it to "
            "amqp[s]://user:password@host:port/vhost"
        ) from None
    if not parts.hostname:
        raise ConfigurationError(
            f"HEXBUS_RABBITMQ_URL={redact_url(url)!r} names no host; fix it to "
            "amqp[s]://user:password@host:port/vhost"
        )
    secure = parts.scheme == "amqps"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    server: dict[str, Any] = {
        "host": _host(parts.hostname, port or (5671 if secure else 5672)),
        "protocol": "amqps" if secure else "amqp",
        "title": "RabbitMQ",
        "description": "The RabbitMQ broker of HEXBUS_RABBITMQ_URL (credentials left out)"
        f"; virtual host {vhost!r}.",
    }
    if vhost != "/":
        server["pathname"] = "/" + quote(vhost, safe="")
    return server, vhost, parts.username is not None or parts.password is not None


def kafka_servers(bootstrap: str) -> dict[str, Any]:
    addresses = []
    for entry in bootstrap.split(","):
        address = entry.strip().split("://", 1)[-1]  # PLAINTEXT://host:9092
        address = address.rsplit("@", 1)[-1].rstrip("/")  # never echo user-info, if any
        if address:
            addresses.append(address)
    if not addresses:
        raise ConfigurationError(
            "HEXBUS_KAFKA_BOOTSTRAP_SERVERS is empty; set it to host:port[,host:port...]"
        )
    many = len(addresses) > 1
    return {
        (f"kafka-{i}" if many else "kafka"): {
            "host": address,
            "protocol": "kafka",
            "title": "Kafka",
            "description": "A bootstrap server of HEXBUS_KAFKA_BOOTSTRAP_SERVERS"
            + (" (any one of them reaches the whole cluster)." if many else "."),
        }
        for i, address in enumerate(addresses, 1)
    }
