"""The document: channels, operations and messages of one app on one transport.

Why operations come from the catalogue and the subscription table: ``send`` for what
the app defines, ``receive`` for what it subscribes to, with the queue or consumer group
the adapter really uses (``hexbus.infrastructure.names``), so the document is the
service's contract as it runs, not a hand-written approximation of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import yaml

from hexbus import __version__
from hexbus.application.handlers import Subscription
from hexbus.application.wiring import handler_name
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.asyncapi.examples import payload_examples
from hexbus.infrastructure.asyncapi.schemas import SCHEMA_REF, payload_schemas
from hexbus.infrastructure.asyncapi.wire import (
    AMQP_BINDING_VERSION,
    BINDINGS,
    KAFKA_BINDING_VERSION,
    example_headers,
    headers_schema,
    kafka_servers,
    rabbitmq_server,
)
from hexbus.infrastructure.codec import CONTENT_TYPE
from hexbus.infrastructure.names import event_topic, group_id, work_queue_name
from hexbus.infrastructure.settings import HexbusSettings, split_urls

__all__ = [
    "ASYNCAPI_VERSION",
    "FORMATS",
    "TRANSPORTS",
    "Format",
    "Transport",
    "address_problems",
    "asyncapi_document",
    "render",
]

ASYNCAPI_VERSION: Final = "3.0.0"
Transport = Literal["memory", "rabbitmq", "kafka"]
TRANSPORTS: Final[tuple[str, ...]] = get_args(Transport)
Format = Literal["json", "yaml"]
FORMATS: Final[tuple[str, ...]] = get_args(Format)

_VARIABLE = re.compile(r"\{([^{}]*)\}")
#: Persistent (AMQP ``delivery_mode`` 2), as the RabbitMQ publisher sends every event.
_PERSISTENT: Final = 2


def _pointer(token: str) -> str:
    """``token`` escaped for a JSON pointer (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _check_address(address: str, what: str) -> str:
    if "{" in address or "}" in address:
        raise ConfigurationError(
            f"{what} {address!r} contains '{{' or '}}', which AsyncAPI reads as an address "
            "parameter; rename it (names of letters, digits, '.', '_' and '-' are safe)"
        )
    return address


@dataclass
class _Builder:
    settings: HexbusSettings
    transport: str
    events: Sequence[type[DomainEvent]]
    channels: dict[str, Any]
    operations: dict[str, Any]
    messages: dict[str, Any]
    #: event class → (channel id, message key)
    placed: dict[type[DomainEvent], tuple[str, str]]

    def message_ref(self, channel: str, key: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{_pointer(channel)}/messages/{_pointer(key)}"}

    def channel_ref(self, channel: str) -> dict[str, str]:
        return {"$ref": f"#/channels/{_pointer(channel)}"}


def _message(
    cls: type[DomainEvent],
    key: str,
    transport: str,
    schemas: Mapping[str, Any],
    source: str,
) -> dict[str, Any]:
    binding = BINDINGS[transport]
    doc = (cls.__doc__ or "").strip()
    summary = doc.splitlines()[0].strip() if doc else f"The {cls.event_type} domain event."
    message: dict[str, Any] = {
        "name": cls.event_type,
        "title": cls.__name__,
        "summary": summary,
        "contentType": CONTENT_TYPE,
        "headers": headers_schema(cls, transport),
        "payload": {"$ref": SCHEMA_REF.format(model=key)},
        "correlationId": {
            "description": "CloudEvents extension correlationid: the conversation.",
            "location": f"$message.header#/{_pointer(binding.header('correlationid'))}",
        },
        "x-hexbus-event": {
            "type": cls.event_type,
            "version": cls.event_version,
            "class": f"{cls.__module__}.{cls.__qualname__}",
        },
    }
    if doc and doc != summary:
        message["description"] = doc
    if transport == "rabbitmq":
        message["bindings"] = {
            "amqp": {"messageType": cls.event_type, "bindingVersion": AMQP_BINDING_VERSION}
        }
    elif transport == "kafka":
        message["bindings"] = {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The publish key (absent when none was given); one "
                    "key keeps its order on one partition.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }
    headers = example_headers(cls, transport, source)
    message["examples"] = [
        {
            "name": f"{cls.__name__}{'' if i == 0 else i + 1}",
            "summary": f"A {cls.event_type} event as it travels.",
            "headers": headers,
            "payload": payload,
        }
        for i, payload in enumerate(payload_examples(cls, schemas[key], schemas))
    ]
    if not message["examples"]:
        del message["examples"]
    return message


def _place_events(b: _Builder, keys: Mapping[type[DomainEvent], str], vhost: str) -> None:
    """One channel per event type (memory, RabbitMQ) or per topic (Kafka)."""
    settings = b.settings
    for cls in b.events:
        key = keys[cls]
        if b.transport == "kafka":
            topic = _check_address(event_topic(settings.kafka_topic_prefix, cls), "Kafka topic")
            channel = b.channels.setdefault(
                topic,
                {
                    "address": topic,
                    "title": f"Kafka topic {topic}",
                    "messages": {},
                    "bindings": {
                        "kafka": {
                            "partitions": settings.kafka_partitions,
                            "replicas": settings.kafka_replication_factor,
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
            )
            b.placed[cls] = (topic, key)
        else:
            routing_key = _check_address(cls.event_type, "event type")
            channel = b.channels[routing_key] = {"address": routing_key, "messages": {}}
            if b.transport == "rabbitmq":
                channel["title"] = f"Routing key {routing_key}"
                channel["bindings"] = {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": {
                            "name": settings.rabbitmq_exchange,
                            "type": "topic",
                            "durable": True,
                            "autoDelete": False,
                            "vhost": vhost,
                        },
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                }
            else:
                channel["title"] = f"Event type {routing_key} (in process)"
            b.placed[cls] = (routing_key, key)
        channel["messages"][key] = {"$ref": f"#/components/messages/{_pointer(key)}"}
    for channel in b.channels.values():
        if b.transport == "kafka" and len(channel["messages"]) > 1:
            channel["description"] = (
                "A topic shared by several event types (their kafka_topic); consumers "
                "tell them apart by the ce_type header."
            )


def _send_operations(b: _Builder, published: Iterable[type[DomainEvent]]) -> None:
    for cls in published:
        channel, key = b.placed[cls]
        operation: dict[str, Any] = {
            "action": "send",
            "title": f"Publish {cls.event_type}",
            "summary": f"The app publishes {cls.event_type} events.",
            "channel": b.channel_ref(channel),
            "messages": [b.message_ref(channel, key)],
        }
        if b.transport == "rabbitmq":
            operation["bindings"] = {
                "amqp": {
                    "deliveryMode": _PERSISTENT,
                    "mandatory": False,
                    "timestamp": True,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            }
        b.operations[f"send:{cls.event_type}"] = operation


def _subscription_extension(name: str, subs: Sequence[Subscription]) -> dict[str, Any]:
    return {
        "name": name,
        "targets": list(dict.fromkeys(sub.routing_key for sub in subs)),
        "handlers": list(dict.fromkeys(handler_name(sub.handler) for sub in subs)),
    }


def _receive_operations(
    b: _Builder, subscriptions: Iterable[Subscription], vhost: str
) -> list[str]:
    """Receive operations; returns the subscriptions that match no catalogue event."""
    grouped: dict[str, list[Subscription]] = {}
    for sub in subscriptions:
        grouped.setdefault(sub.name, []).append(sub)
    unmatched: list[str] = []
    service = b.settings.service_name
    for name, subs in grouped.items():
        wanted = [cls for cls in b.events if any(sub.matches(cls) for sub in subs)]
        extension = _subscription_extension(name, subs)
        if not wanted:
            unmatched.append(f"{name} ({', '.join(extension['targets'])})")
        if b.transport == "rabbitmq":
            queue = _check_address(work_queue_name(service, name), "RabbitMQ queue")
            channel_id = f"queue:{queue}"
            b.channels[channel_id] = {
                "address": queue,
                "title": f"Queue {queue}",
                "description": f"The work queue of subscription {name!r}, bound to exchange "
                f"{b.settings.rabbitmq_exchange!r} with "
                + ", ".join(repr(t) for t in extension["targets"])
                + ".",
                "messages": {
                    b.placed[cls][1]: {
                        "$ref": f"#/components/messages/{_pointer(b.placed[cls][1])}"
                    }
                    for cls in wanted
                },
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": {
                            "name": queue,
                            "durable": True,
                            "exclusive": False,
                            "autoDelete": False,
                            "vhost": vhost,
                        },
                        "x-binding-keys": extension["targets"],
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            }
            operation: dict[str, Any] = {
                "action": "receive",
                "title": f"Subscription {name}",
                "summary": f"Subscription {name!r} consumes from queue {queue!r}.",
                "channel": b.channel_ref(channel_id),
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                "x-hexbus-subscription": {**extension, "queue": queue},
            }
            if wanted:
                operation["messages"] = [
                    b.message_ref(channel_id, b.placed[cls][1]) for cls in wanted
                ]
            b.operations[f"receive:{name}"] = operation
            continue
        by_channel: dict[str, list[str]] = {}
        for cls in wanted:
            channel_id, key = b.placed[cls]
            by_channel.setdefault(channel_id, []).append(key)
        for channel_id, keys in by_channel.items():
            operation = {
                "action": "receive",
                "title": f"Subscription {name}",
                "summary": f"Subscription {name!r} handles "
                + ", ".join(b.messages[k]["name"] for k in keys)
                + ".",
                "channel": b.channel_ref(channel_id),
                "messages": [b.message_ref(channel_id, key) for key in keys],
                "x-hexbus-subscription": dict(extension),
            }
            if b.transport == "kafka":
                group = group_id(service, name)
                operation["bindings"] = {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [group]},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                }
                operation["x-hexbus-subscription"]["groupId"] = group
            b.operations[f"receive:{name}:{channel_id}"] = operation
    return unmatched


_CHANNEL_ORDER: Final = ("address", "title", "description", "messages", "bindings")
_OPERATION_ORDER: Final = ("action", "title", "summary", "channel", "messages", "bindings")


def _ordered(obj: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``obj`` with the keys of ``order`` first (a readable document), the rest after."""
    first = {key: obj[key] for key in order if key in obj}
    return {**first, **{key: value for key, value in obj.items() if key not in first}}


def asyncapi_document(
    events: Sequence[type[DomainEvent]],
    subscriptions: Iterable[Subscription],
    settings: HexbusSettings,
    *,
    transport: str | None = None,
    published: Iterable[type[DomainEvent]] | None = None,
    title: str | None = None,
    version: str = __version__,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of an app.

    ``events`` is the app's catalogue (every event it defines or subscribes to: one
    channel each), ``published`` the events it sends (default: all of ``events``),
    ``subscriptions`` what it consumes. ``transport`` defaults to ``settings.adapter``.
    Raises ``ConfigurationError`` for a broker URL or a name that cannot be documented.
    """
    transport = transport or settings.adapter
    if transport not in TRANSPORTS:
        raise ConfigurationError(
            f"cannot document transport {transport!r}; choose one of {', '.join(TRANSPORTS)}"
        )
    events = sorted(dict.fromkeys(events), key=lambda cls: cls.event_type)
    published_list = events if published is None else list(dict.fromkeys(published))
    missing = [cls.event_type for cls in published_list if cls not in events]
    if missing:
        raise ConfigurationError(
            f"published events {missing} are not in the catalogue given; add them to events"
        )
    service = settings.service_name
    servers: dict[str, Any] = {}
    components: dict[str, Any] = {}
    vhost = "/"
    if transport == "rabbitmq":
        urls = split_urls(settings.rabbitmq_url)  # a cluster: one server per node
        for number, url in enumerate(urls, 1):
            server, vhost, has_credentials = rabbitmq_server(url)
            if has_credentials:
                server["security"] = [{"$ref": "#/components/securitySchemes/rabbitmqUser"}]
                components["securitySchemes"] = {
                    "rabbitmqUser": {
                        "type": "userPassword",
                        "description": "The user and password of HEXBUS_RABBITMQ_URL "
                        "(never written into this document).",
                    }
                }
            servers["rabbitmq" if len(urls) == 1 else f"rabbitmq-{number}"] = server
    elif transport == "kafka":
        servers.update(kafka_servers(settings.kafka_bootstrap_servers))

    keys, schemas = payload_schemas(events)
    b = _Builder(settings, transport, events, {}, {}, {}, {})
    for cls in events:
        b.messages[keys[cls]] = _message(cls, keys[cls], transport, schemas, service)
    _place_events(b, keys, vhost)
    _send_operations(b, [cls for cls in events if cls in published_list])
    unmatched = _receive_operations(b, subscriptions, vhost)

    where = {
        "rabbitmq": f"RabbitMQ (topic exchange {settings.rabbitmq_exchange!r}, routing key "
        "= event type; one durable queue {service}.{subscription} per subscription)",
        "kafka": "Kafka (topic = HEXBUS_KAFKA_TOPIC_PREFIX + event type, or the class's "
        "kafka_topic; one consumer group {service}.{subscription} per subscription)",
        "memory": "the in-process memory adapter (no broker: channels are event types; "
        "run with --adapter rabbitmq|kafka to document a broker's topology)",
    }[transport]
    description = (
        f"The domain events of service {service!r} on {where}, generated by hexbus "
        f"{__version__}. Every message is a CloudEvents 1.0 event in binary content mode: "
        "the attributes travel as the headers below, the payload is the event's own "
        "fields as JSON. Send operations: the events the app defines (its catalogue); "
        "receive operations: its subscriptions."
    )
    if unmatched:
        description += (
            " Subscriptions matching no event of the catalogue: " + "; ".join(unmatched) + "."
        )
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:hexbus:{service}",
        "info": {
            "title": title or f"{service} events",
            "version": version,
            "description": description,
        },
    }
    if servers:
        document["servers"] = servers
    document["defaultContentType"] = CONTENT_TYPE
    document["channels"] = {k: _ordered(v, _CHANNEL_ORDER) for k, v in b.channels.items()}
    document["operations"] = {k: _ordered(v, _OPERATION_ORDER) for k, v in b.operations.items()}
    components["messages"] = b.messages
    components["schemas"] = schemas
    document["components"] = components
    return document


# -- checks the AsyncAPI parser does not make -----------------------------------------
def address_problems(document: Mapping[str, Any]) -> list[str]:
    """What is wrong with the channels' addresses and parameters (empty = nothing).

    Every ``{name}`` in an address needs a parameter of that name and every parameter
    must appear in its address; an address must be a non-empty string (hexbus never
    documents a channel without one: every channel is a real topic, routing key or
    queue).
    """
    problems: list[str] = []
    for channel_id, channel in (document.get("channels") or {}).items():
        address = channel.get("address")
        if not isinstance(address, str) or not address:
            problems.append(f"channel {channel_id!r} has no address")
            continue
        variables = set(_VARIABLE.findall(address))
        parameters = set(channel.get("parameters") or {})
        for name in sorted(variables - parameters):
            problems.append(
                f"channel {channel_id!r}: address {address!r} uses {{{name}}} without a "
                "parameter of that name"
            )
        for name in sorted(parameters - variables):
            problems.append(
                f"channel {channel_id!r}: parameter {name!r} does not appear in address {address!r}"
            )
    return problems


# -- output --------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors/aliases (tools and humans read it as written)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(document: Mapping[str, Any], fmt: str = "json", *, indent: int = 2) -> str:
    """The document as JSON (``indent`` 0 = one line) or YAML, ending with a newline."""
    if fmt == "yaml":
        text: str = yaml.dump(
            dict(document),
            Dumper=_Dumper,
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
            width=100,
        )
        return text
    if fmt == "json":
        return json.dumps(document, indent=indent or None, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
