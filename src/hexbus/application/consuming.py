"""The consume pipeline: one delivery in, one outcome out, for every transport.

Why one place: the RabbitMQ and Kafka adapters each used to decide for themselves what
a handler failure means, which subscription a message is for and what a dead letter
says; the copies drifted apart (Kafka skipped unknown types silently, RabbitMQ
dead-lettered them). Now a transport does three things only:

1. decode the message (or catch the ``DecodeError``);
2. ``outcome = await pipeline.deliver(subscription, decoded, attempt=...)``;
3. carry the outcome out in its own terms:

   ======================  ===================================  ============================
   outcome                 RabbitMQ                             Kafka / memory
   ======================  ===================================  ============================
   ``Action.ACK``          ack                                  commit after it / nothing
   ``Action.RETRY``        copy to the back-off tier of         wait ``delay`` in process,
                           ``delay``, attempt + 1, then ack      deliver again (attempt + 1)
   ``Action.DEAD_LETTER``  original bytes + failure headers     dead-letter topic / the
                           to the subscription's DLQ, then ack   in-process store
   ======================  ===================================  ============================

A cancellation (``stop()`` giving up on a handler) is not an outcome: it propagates, and
the transport leaves the message for redelivery (requeue / no commit), never a dead
letter. Nothing a transport receives is ever dropped without an outcome.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from hexbus.application.dispatch import DispatchStats, run_handler
from hexbus.application.handlers import Subscription, SubscriptionTable
from hexbus.application.observing import trace_id_of
from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent

if TYPE_CHECKING:
    from hexbus.application.observing import Instrumentation, ProcessScope

__all__ = [
    "ACK",
    "Action",
    "ConsumePipeline",
    "Decoded",
    "Outcome",
    "RetryPolicy",
    "error_text",
]

logger = logging.getLogger("hexbus.consume")

_ERROR_TEXT_LIMIT = 2000

#: What a transport hands the pipeline: the decoded event and its metadata, optionally
#: followed by the event's CloudEvents ``id`` as it arrived when that is not
#: ``str(event.event_id)`` (a foreign producer's ``order-42``; ``None`` otherwise). It
#: becomes ``DeliveryContext.cloudevent_id``, so handlers can read it and re-publishing
#: the event keeps it on the wire.
Decoded = (
    tuple[DomainEvent, Mapping[str, str]] | tuple[DomainEvent, Mapping[str, str], str | None]
)


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded (it goes into headers and logs)."""
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


class RetryPolicy(NamedTuple):
    """How often a handler runs for one delivery, and how long to wait in between.

    ``delays[n - 1]`` is the wait after failed attempt ``n``; the last delay repeats.
    ``max_attempts=1`` means no retry at all (the memory adapter's default).
    """

    max_attempts: int = 5
    delays: tuple[float, ...] = (1.0, 5.0, 25.0)

    def delay_after(self, attempt: int) -> float:
        delays = self.delays or (0.0,)
        return delays[min(max(attempt, 1), len(delays)) - 1]

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the transport must do with a delivery.

    ``attempt`` is the attempt that produced the outcome (a retry is attempt + 1);
    ``error`` the text for logs and dead-letter headers; ``reason`` its machine form
    (``handler_failed``, ``timeout``, ``no_handler`` or a ``DecodeError.reason``);
    ``subscription`` the durable name whose handler failed.
    """

    action: Action
    attempt: int = 1
    delay: float = 0.0
    error: str | None = None
    reason: str | None = None
    subscription: str | None = None


ACK = Outcome(Action.ACK)


class ConsumePipeline:
    """Runs deliveries of one bus: lookup, context, handler, outcome, stats, logs."""

    def __init__(
        self,
        subscriptions: SubscriptionTable,
        *,
        policy: RetryPolicy,
        handler_timeout: float | None,
        stats: DispatchStats,
        adapter: str,
    ) -> None:
        self.subscriptions = subscriptions
        self.policy = policy
        self.handler_timeout = handler_timeout
        self.stats = stats
        self.adapter = adapter
        #: Spans and metrics (``hexbus.application.observing``); ``None``: off.
        self.instrumentation: Instrumentation | None = None

    async def deliver(
        self,
        subscription: str,
        decoded: Decoded | DecodeError,
        *,
        attempt: int = 1,
        key: str | None = None,
        session: Any = None,
        where: str = "",
    ) -> Outcome:
        """Deliver one message to the handlers of ``subscription``; say what happens next.

        ``decoded`` is what the transport's decoder returned, or the ``DecodeError`` it
        raised (dead-lettered at once: retrying cannot fix the bytes). ``where`` names
        the message's place for logs (``queue q``, ``topic[p]@offset``).
        """
        if isinstance(decoded, DecodeError):
            return self.undecodable(subscription, decoded, attempt=attempt, where=where)
        if len(decoded) == 3:
            event, metadata, cloudevent_id = decoded
        else:
            event, metadata = decoded
            cloudevent_id = None
        subs = self.subscriptions.for_delivery(subscription, type(event))
        if not subs:
            error = (
                f"NoHandler: subscription {subscription!r} has no handler for "
                f"{event.event_type!r} in this process (a binding or topic left from an "
                "earlier deployment?)"
            )
            logger.error(
                "%s: %s; dead-lettered",
                self.adapter,
                error,
                extra=_extra(event, subscription, attempt, metadata),
            )
            outcome = Outcome(Action.DEAD_LETTER, attempt, 0.0, error, "no_handler", subscription)
            if self.instrumentation is not None:
                self.instrumentation.undeliverable(subscription, outcome, where)
            return outcome
        return await self.run(
            subs, event, metadata, subscription=subscription, attempt=attempt, key=key,
            session=session, cloudevent_id=cloudevent_id, where=where,
        )

    def undecodable(
        self, subscription: str, exc: DecodeError, *, attempt: int = 1, where: str = ""
    ) -> Outcome:
        """A message nobody can decode: dead-letter it at once, with the reason."""
        logger.error(
            "%s: undecodable message%s for %s (%s): %s; dead-lettered",
            self.adapter,
            f" at {where}" if where else "",
            subscription,
            exc.reason,
            exc,
            extra={"subscription": subscription, "reason": exc.reason, "attempt": attempt},
        )
        outcome = Outcome(
            Action.DEAD_LETTER,
            attempt,
            0.0,
            f"DecodeError({exc.reason}): {exc}"[:_ERROR_TEXT_LIMIT],
            exc.reason,
            subscription,
        )
        if self.instrumentation is not None:
            self.instrumentation.undeliverable(subscription, outcome, where)
        return outcome

    async def run(
        self,
        subs: Sequence[Subscription],
        event: DomainEvent,
        metadata: Mapping[str, str],
        *,
        subscription: str,
        attempt: int = 1,
        key: str | None = None,
        session: Any = None,
        cloudevent_id: str | None = None,
        where: str = "",
    ) -> Outcome:
        """Run ``subs`` (handlers of one subscription) once for ``event``; the outcome."""
        traced = self.instrumentation
        if traced is None:
            return await self._run(
                subs, event, metadata, subscription=subscription, attempt=attempt, key=key,
                session=session, cloudevent_id=cloudevent_id,
            )
        with traced.process(
            subscription, event, metadata, attempt=attempt, key=key, where=where
        ) as scope:
            return await self._run(
                subs, event, metadata, subscription=subscription, attempt=attempt, key=key,
                session=session, cloudevent_id=cloudevent_id, scope=scope,
            )

    async def _run(
        self,
        subs: Sequence[Subscription],
        event: DomainEvent,
        metadata: Mapping[str, str],
        *,
        subscription: str,
        attempt: int,
        key: str | None,
        session: Any,
        cloudevent_id: str | None,
        scope: ProcessScope | None = None,
    ) -> Outcome:
        token = delivery_context.set(
            DeliveryContext(event, metadata, attempt, session, key, subscription, cloudevent_id)
        )
        try:
            for sub in subs:
                await run_handler(sub, event, self.handler_timeout)
        except Exception as exc:  # noqa: BLE001 - a handler failure is an outcome
            outcome = self.failed(subscription, event, exc, attempt, metadata)
            if scope is not None:
                scope.failed(exc, outcome)
            return outcome
        finally:
            delivery_context.reset(token)
        self.stats.handled += 1
        return ACK

    def failed(
        self,
        subscription: str,
        event: DomainEvent,
        exc: BaseException,
        attempt: int,
        metadata: Mapping[str, str] | None = None,
    ) -> Outcome:
        """A handler raised on ``attempt``: retry after the policy's delay, or dead-letter."""
        stats = self.stats
        stats.failed += 1
        timed_out = isinstance(exc, TimeoutError)
        if timed_out:
            stats.timed_out += 1
        policy = self.policy
        final = policy.exhausted(attempt)
        logger.warning(
            "%s: handler %s failed for %s event %s (attempt %d/%d): %s; %s",
            self.adapter,
            subscription,
            event.event_type,
            event.event_id,
            attempt,
            policy.max_attempts,
            error_text(exc),
            "dead-lettered" if final else "retrying",
            exc_info=exc if final else None,
            extra={
                **_extra(event, subscription, attempt, metadata),
                "error": type(exc).__name__,
            },
        )
        return self.decide(subscription, exc, attempt)

    def decide(self, subscription: str, exc: BaseException, attempt: int) -> Outcome:
        """The outcome of a failure on ``attempt``, without counting or logging it.

        For a transport whose dispatcher already logged and counted the failure (the
        memory adapter's eager first attempt).
        """
        text = error_text(exc)
        reason = "timeout" if isinstance(exc, TimeoutError) else "handler_failed"
        policy = self.policy
        if policy.exhausted(attempt):
            return Outcome(Action.DEAD_LETTER, attempt, 0.0, text, reason, subscription)
        return Outcome(
            Action.RETRY, attempt, policy.delay_after(attempt), text, reason, subscription
        )

    def settled(self, outcome: Outcome) -> None:
        """Count an outcome the transport has carried out (retry sent, dead letter stored)."""
        if outcome.action is Action.RETRY:
            self.stats.retried += 1
        elif outcome.action is Action.DEAD_LETTER:
            self.stats.dead_lettered += 1
        if self.instrumentation is not None:
            self.instrumentation.settled(outcome)


def _extra(
    event: DomainEvent,
    subscription: str,
    attempt: int,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log record about a delivery: what joins it to the trace."""
    return {
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "subscription": subscription,
        "attempt": attempt,
        "trace_id": trace_id_of(metadata),
    }
