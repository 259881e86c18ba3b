"""Names, arguments and declarations of everything the RabbitMQ adapter puts on the broker.

For a service ``svc`` on exchange ``X`` and a subscription named ``n``::

    X                      durable topic exchange; routing key = event type
    svc.n                  durable work queue (quorum by default, or classic:
                           HEXBUS_RABBITMQ_QUEUE_TYPE), bound to X with each of the
                           subscription's routing keys / patterns
    svc.n.retry.<ms>ms     one durable quorum queue per back-off tier; queue-level TTL,
                           dead-letters (at-least-once) through the default exchange
                           straight back to ``svc.n``
    svc.n.dlq              durable quorum dead-letter queue

Why retries go to a queue of the subscription itself (through the default exchange)
and never back through ``X``: a retry re-runs only the handler that failed, never the
other subscriptions of the same event. Why the delay is in the tier's name: a queue's
TTL cannot change once declared; a new delay is a new queue, and the old tier keeps
draining into the work queue. The tier a retry goes to is the consume pipeline's
``Outcome.delay``, which comes from the same ``retry_delays`` the tiers are declared with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Final

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.dead_letters import FAILURE_HEADERS
from hexbus.infrastructure.names import work_queue_name

__all__ = [
    "ATTEMPT_HEADER",
    "BROKER_HEADERS",
    "DEAD_LETTER_HEADERS",
    "KEY_HEADER",
    "LEGACY_ORIGIN_HEADER",
    "QUEUE_HEADER",
    "ROUTING_KEY_HEADER",
    "declare_queue",
    "declare_subscription",
    "delay_ms",
    "delete_queues",
    "dlq_arguments",
    "dlq_name",
    "message_counts",
    "retry_arguments",
    "retry_queue_name",
    "subscription_queues",
    "work_arguments",
    "work_queue_name",
]

logger = logging.getLogger("hexbus.rabbitmq")

#: Delivery attempt of a message (absent = 1); set on the copies sent to a retry tier.
ATTEMPT_HEADER: Final = "x-hexbus-attempt"
#: The publish ``key`` (ordering key on Kafka; informative here).
KEY_HEADER: Final = "x-hexbus-key"
#: The routing key the event was published with (retries arrive with the queue's name).
ROUTING_KEY_HEADER: Final = "x-hexbus-routing-key"
#: The work queue a dead letter came from (RabbitMQ's addition to the failure record).
QUEUE_HEADER: Final = "x-hexbus-queue"
#: Where earlier hexbus versions kept the origin; still read (and removed on replay) so
#: dead letters written before an upgrade keep their origin.
LEGACY_ORIGIN_HEADER: Final = "x-hexbus-original-routing-key"
#: Every header a dead-lettering adds here; a replay removes them all.
DEAD_LETTER_HEADERS: Final = (*FAILURE_HEADERS, QUEUE_HEADER, LEGACY_ORIGIN_HEADER)
#: Headers the broker adds on dead-lettering / redelivery; dropped from copies we send.
BROKER_HEADERS: Final = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)

_QUORUM: Final = {"x-queue-type": "quorum"}


def retry_queue_name(work_queue: str, delay: float) -> str:
    return f"{work_queue}.retry.{delay_ms(delay)}ms"


def dlq_name(work_queue: str) -> str:
    return f"{work_queue}.dlq"


def delay_ms(delay: float) -> int:
    return max(1, round(delay * 1000))


def subscription_queues(work_queue: str, delays: Iterable[float]) -> list[str]:
    """Every queue of one subscription: the work queue, its retry tiers, its DLQ."""
    tiers = dict.fromkeys(retry_queue_name(work_queue, delay) for delay in delays)
    return [work_queue, *tiers, dlq_name(work_queue)]


def work_arguments(queue_type: str = "quorum") -> dict[str, Any]:
    """The work queue's arguments: its type (``HEXBUS_RABBITMQ_QUEUE_TYPE``).

    No x-delivery-limit: a consumer that crashes repeatedly must not make the broker
    drop messages; hexbus counts handler attempts itself (ATTEMPT_HEADER).
    """
    return {"x-queue-type": queue_type}


def retry_arguments(work_queue: str, delay: float) -> dict[str, Any]:
    return {
        **_QUORUM,
        "x-message-ttl": delay_ms(delay),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work_queue,
        # Quorum queues dead-letter at-most-once unless told otherwise; at-least-once
        # needs reject-publish overflow. Without it a broker crash could drop a retry.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def dlq_arguments() -> dict[str, Any]:
    return dict(_QUORUM)


async def declare_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, Any]
) -> AbstractQueue:
    """Declare a durable queue; a clash with an existing queue is a configuration error."""
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"RabbitMQ queue {name!r} exists with other arguments than hexbus declares "
            f"({arguments}); RabbitMQ cannot change a queue's type or arguments in place "
            "(a changed HEXBUS_RABBITMQ_QUEUE_TYPE?): drain and delete it, or use another "
            f"HEXBUS_SERVICE_NAME: {exc}"
        ) from None


async def declare_subscription(
    channel: AbstractChannel,
    work_queue: str,
    delays: Iterable[float],
    *,
    with_tiers: bool,
    queue_type: str = "quorum",
) -> AbstractQueue:
    """Declare a subscription's work queue and, ``with_tiers``, its retry tiers and DLQ.

    The work queue is declared first and returned (the consumer reads it); the tiers
    and the DLQ exist before the first message can fail. Only the work queue takes
    ``queue_type``: the tiers and the DLQ are quorum queues whatever it is.
    """
    queue = await declare_queue(channel, work_queue, work_arguments(queue_type))
    if with_tiers:
        for delay in dict.fromkeys(delays):
            await declare_queue(
                channel,
                retry_queue_name(work_queue, delay),
                retry_arguments(work_queue, delay),
            )
        await declare_queue(channel, dlq_name(work_queue), dlq_arguments())
    return queue


async def delete_queues(connection: AbstractConnection, names: Iterable[str]) -> list[str]:
    """Delete ``names`` (whether empty or consumed or not); return those that remain.

    A failed delete closes its channel on the broker, so the next one gets a new channel.
    """
    left: list[str] = []
    channel: AbstractChannel | None = None
    try:
        for name in names:
            try:
                if channel is None:
                    channel = await connection.channel(publisher_confirms=False)
                await channel.queue_delete(name)
            except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError) as exc:
                logger.warning("could not delete RabbitMQ queue %r: %s", name, exc)
                left.append(name)
                if channel is not None:
                    with contextlib.suppress(Exception):
                        await channel.close()
                channel = None
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
    return left


async def message_counts(
    connection: AbstractConnection, names: Iterable[str]
) -> dict[str, int | None]:
    """The ready messages of each queue in ``names`` (``None``: no such queue), by passive
    declares: nothing is created, nothing moves.

    AMQP 0-9-1 reports only ready messages (not those delivered and unacknowledged);
    that needs the management plugin, which hexbus does not assume.
    """
    counts: dict[str, int | None] = {}
    channel: AbstractChannel | None = None
    try:
        for name in names:
            if channel is None:
                channel = await connection.channel(publisher_confirms=False)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                counts[name] = None
                channel = None  # the broker closed it (404)
                continue
            counts[name] = queue.declaration_result.message_count or 0
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
    return counts
