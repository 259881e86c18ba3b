"""Pure names of what hexbus puts on the brokers: topics, consumer groups, queues, headers.

Why a module of their own, outside the adapter packages: the adapters use these names on
the wire, and tooling that must not import a broker client (``hexbus asyncapi``, which
documents the topology of an app whose broker extra may not even be installed) must
print exactly the same names. Defined once here, imported by both, they cannot drift.
Nothing here imports a client library or does I/O.
"""

from __future__ import annotations

from typing import Final

from hexbus.domain.events import DomainEvent

__all__ = [
    "AMQP_HEADER_PREFIX",
    "KAFKA_CONTENT_TYPE_HEADER",
    "KAFKA_HEADER_PREFIX",
    "event_topic",
    "group_id",
    "work_queue_name",
]

#: CloudEvents Kafka binding: attribute ``x`` travels as header ``ce_x``.
KAFKA_HEADER_PREFIX: Final = "ce_"
#: CloudEvents Kafka binding: ``datacontenttype`` travels as this header.
KAFKA_CONTENT_TYPE_HEADER: Final = "content-type"
#: CloudEvents AMQP binding: attribute ``x`` travels as application property
#: ``cloudEvents:x`` (``datacontenttype`` is the message's ``content_type``).
AMQP_HEADER_PREFIX: Final = "cloudEvents:"


def event_topic(prefix: str, cls: type[DomainEvent]) -> str:
    """``prefix`` + the class's ``kafka_topic`` (if it declares one) or its ``event_type``."""
    override = getattr(cls, "kafka_topic", None)
    return prefix + (override if isinstance(override, str) and override else cls.event_type)


def group_id(service: str, name: str) -> str:
    """One Kafka consumer group per (service, durable subscription name)."""
    return f"{service}.{name}"


def work_queue_name(service: str, subscription: str) -> str:
    """The RabbitMQ work queue of one (service, durable subscription name)."""
    return f"{service}.{subscription}"
