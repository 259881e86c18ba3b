"""An app's events, subscriptions and broker topology as an AsyncAPI 3.0 document.

Why generate it: the pydantic classes are the source of truth for every event's schema
and the subscription table for who consumes what; a document derived from them cannot
drift, and non-Python teams (and AsyncAPI tools: code generators, Studio, contract
tests) read it without knowing hexbus. Why here, below the CLI: the document describes
the wire (CloudEvents bindings, topics, queues), which is infrastructure knowledge; the
CLI only chooses the app and the output.

What the document holds, for the transport it is built for (``rabbitmq``, ``kafka``, or
``memory`` = in-process, no broker):

- ``servers``: the configured broker, never with credentials (RabbitMQ: ``amqp``/``amqps``
  with ``host:port`` and the vhost as ``pathname``; Kafka: one server per bootstrap
  address). None for ``memory``.
- ``channels``: the real addresses. RabbitMQ: one channel per event type (address = the
  routing key, ``bindings.amqp`` names the topic exchange) and one per subscription
  queue ``{service}.{subscription}`` (``is: queue``). Kafka: one per topic
  (``HEXBUS_KAFKA_TOPIC_PREFIX`` + event type, or the class's ``kafka_topic``; a shared
  topic carries several messages), with partitions and replicas as hexbus creates them.
- ``operations``: ``send`` for each event the app defines (what it publishes) and
  ``receive`` for each subscription (the queue it reads, or each topic its consumer group
  reads), with the queue / ``groupId`` in the bindings and the handlers under
  ``x-hexbus-subscription``.
- ``components.messages``: one per event: the CloudEvents attributes as the binding
  carries them (``ce_*`` Kafka headers, ``cloudEvents:*`` AMQP properties) as ``headers``,
  the event's own fields (its pydantic JSON schema, without the envelope) as ``payload``,
  and an example of both that the event class itself accepts.

Addresses never hold ``{variables}`` (event types, topic and queue names cannot contain
braces); ``address_problems`` checks that every variable has a parameter and back.
"""

from hexbus.infrastructure.asyncapi.document import (
    ASYNCAPI_VERSION,
    FORMATS,
    TRANSPORTS,
    Format,
    Transport,
    address_problems,
    asyncapi_document,
    render,
)

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
