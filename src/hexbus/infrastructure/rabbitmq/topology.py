"""Names and arguments of everything the RabbitMQ adapter declares.

For a service ``svc`` on exchange ``X`` and a subscription named ``n``::

    X                      durable topic exchange; routing key = event type
    svc.n                  durable quorum work queue, bound to X with each of the
                           subscription's routing keys / patterns
    svc.n.retry.<ms>ms     one durable quorum queue per back-off tier; queue-level TTL,
                           dead-letters (at-least-once) through the default exchange
                           straight back to ``svc.n``
    svc.n.dlq              durable quorum dead-letter queue

Why retries go to a queue of the subscription itself (through the default exchange)
and never back through ``X``: a retry re-runs only the handler that failed, never the
other subscriptions of the same event. Why the delay is in the tier's name: a queue's
TTL cannot change once declared; a new delay is a new queue, and the old tier keeps
draining into the work queue.
"""

from __future__ import annotations

from typing import Any, Final

from hexbus.infrastructure.dead_letters import ATTEMPTS_HEADER as DLQ_ATTEMPTS_HEADER
from hexbus.infrastructure.dead_letters import ERROR_HEADER as DLQ_ERROR_HEADER
from hexbus.infrastructure.dead_letters import HANDLER_HEADER as DLQ_HANDLER_HEADER

__all__ = [
    "ATTEMPT_HEADER",
    "DEAD_LETTER_HEADERS",
    "KEY_HEADER",
    "ROUTING_KEY_HEADER",
    "dlq_name",
    "dlq_arguments",
    "retry_arguments",
    "retry_queue_name",
    "retry_tier",
    "work_arguments",
    "work_queue_name",
]

#: Delivery attempt of a message (absent = 1); set on the copies sent to a retry tier.
ATTEMPT_HEADER: Final = "x-hexbus-attempt"
#: The publish ``key`` (ordering key on Kafka; informative here).
KEY_HEADER: Final = "x-hexbus-key"
#: The routing key the event was published with (retries arrive with the queue's name).
ROUTING_KEY_HEADER: Final = "x-hexbus-routing-key"
ERROR_HEADER: Final = DLQ_ERROR_HEADER
ATTEMPTS_HEADER: Final = DLQ_ATTEMPTS_HEADER
HANDLER_HEADER: Final = DLQ_HANDLER_HEADER
ORIGINAL_ROUTING_KEY_HEADER: Final = "x-hexbus-original-routing-key"
FAILED_AT_HEADER: Final = "x-hexbus-failed-at"
QUEUE_HEADER: Final = "x-hexbus-queue"
DEAD_LETTER_HEADERS: Final = (
    ERROR_HEADER,
    ATTEMPTS_HEADER,
    HANDLER_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    FAILED_AT_HEADER,
    QUEUE_HEADER,
)
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


def work_queue_name(service: str, subscription: str) -> str:
    return f"{service}.{subscription}"


def retry_queue_name(work_queue: str, delay: float) -> str:
    return f"{work_queue}.retry.{delay_ms(delay)}ms"


def dlq_name(work_queue: str) -> str:
    return f"{work_queue}.dlq"


def delay_ms(delay: float) -> int:
    return max(1, round(delay * 1000))


def retry_tier(attempt: int, delays: tuple[float, ...]) -> float:
    """The delay after failed attempt ``attempt`` (1-based): tier n, then the last tier."""
    return delays[min(attempt, len(delays)) - 1]


def work_arguments() -> dict[str, Any]:
    # No x-delivery-limit: a consumer that crashes repeatedly must not make the broker
    # drop messages; hexbus counts handler attempts itself (ATTEMPT_HEADER).
    return dict(_QUORUM)


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
