"""The receiving side of the RabbitMQ adapter: decode, deliver, carry out the outcome.

One robust channel per subscription name with ``prefetch`` unacked messages; each
message is handled in the task the client delivers it in (handlers of one queue start
in delivery order and run concurrently up to ``prefetch``). That is aiormq's task per
delivery: the consumer connection's queues (``DirectQueue``) skip the second task
aio-pika's ``Queue.consume`` starts for every message (one task and one turn of the
event loop less between the frame and the handler) and keep aio-pika's robust
re-consume after a reconnection. What happens to a message is
decided by the consume pipeline (``hexbus.application.consuming``); this module only
does it in AMQP terms:

- ``ACK``: ack;
- ``RETRY``: a copy with ``x-hexbus-attempt`` + 1 goes to the back-off tier of
  ``outcome.delay``, is confirmed, and only then the original is acked;
- ``DEAD_LETTER``: the original bytes plus the failure headers go to the DLQ, are
  confirmed, and only then the original is acked.

Acks are batched (``_Acks``): the messages whose handling finished during one turn of
the event loop are acked together, with one ``basic.ack multiple`` for the run of
delivery tags that finished without a gap, single acks for the others. Nothing is
acked before its handler (and its retry copy / dead letter) finished, so at-least-once
holds; a slow handler holds back only its own ack.

A message that cannot be decoded reaches the pipeline as its ``DecodeError`` and is
dead-lettered with the reason. A handler interrupted by ``stop()`` and a message whose
retry / dead letter could not be sent (broker away) are requeued (nack requeue), never
dropped and never dead-lettered.

Subscriptions added or removed while the bus runs change the topology in the background
(``subscribe`` is synchronous); the changes run one after another, in order, and
``settle()`` waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
    TimeoutType,
)
from aiormq.abc import DeliveredMessage
from pamqp.common import Arguments

from hexbus.application.consuming import Action, ConsumePipeline, Decoded, Outcome
from hexbus.domain.errors import DecodeError
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.dead_letters import failure_headers, header_int, header_text
from hexbus.infrastructure.rabbitmq import topology
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import read_message
from hexbus.infrastructure.rabbitmq.publisher import TRANSIENT_ERRORS, Publisher

__all__ = [
    "ConsumerConnection",
    "Consumers",
    "DirectQueue",
    "SubscriptionConsumer",
    "copy_headers",
    "copy_message",
]

logger = logging.getLogger("hexbus.rabbitmq")

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_ACK, _RETRY = Action.ACK, Action.RETRY


async def _deliver(
    callback: Callable[[AbstractIncomingMessage], Awaitable[Any]],
    no_ack: bool,
    delivered: DeliveredMessage,
) -> None:
    await callback(aio_pika.IncomingMessage(delivered, no_ack=no_ack))


class DirectQueue(aio_pika.RobustQueue):
    """A robust queue whose consumer callback runs in the client's delivery task.

    Why: aiormq starts a task per delivery, and aio-pika's ``Queue.consume`` wraps the
    callback in a second one (``aio_pika.queue.consumer``), so every message cost two
    tasks and two turns of the event loop before its handler ran. ``consume`` here
    registers the callback with the channel itself and records the consumer exactly as
    ``RobustQueue.consume`` does (same tag, same arguments), so aio-pika restores it
    after a reconnection: ``RobustQueue.restore`` calls this ``consume`` again. (A
    consumer aio-pika recovers on an open channel after the broker cancelled it goes
    through ``Queue.consume``: the same callback, with aio-pika's extra task, until
    the next reconnection.)
    """

    __slots__ = ()

    async def consume(  # noqa: PLR0917 - RobustQueue.consume's signature
        self,
        callback: Callable[[AbstractIncomingMessage], Awaitable[Any]],
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Arguments = None,
        consumer_tag: ConsumerTag | None = None,
        timeout: TimeoutType = None,  # noqa: ASYNC109 - the override keeps aio-pika's
        robust: bool = True,
    ) -> ConsumerTag:
        channel = await self.channel.get_underlay_channel()
        consume_ok = await channel.basic_consume(
            queue=self.name,
            consumer_callback=functools.partial(_deliver, callback, no_ack),
            exclusive=exclusive,
            no_ack=no_ack,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        tag = consume_ok.consumer_tag
        if tag is None:  # pamqp types it optional; the broker always names it
            raise RuntimeError(f"RabbitMQ gave no consumer tag for queue {self.name!r}")
        if robust:  # what RobustQueue.consume records, for restore()
            self._consumers[tag] = dict(
                callback=callback, no_ack=no_ack, exclusive=exclusive, arguments=arguments
            )
        return tag


class _ConsumerChannel(aio_pika.RobustChannel):
    QUEUE_CLASS = DirectQueue


class ConsumerConnection(aio_pika.RobustConnection):
    """The consumer connection's class (``connect_robust(connection_class=...)``).

    Its channels declare their queues as ``DirectQueue``.
    """

    CHANNEL_CLASS = _ConsumerChannel


@dataclass(eq=False)
class SubscriptionConsumer:
    """The live consumer of one subscription name: its channel, queue and bindings."""

    name: str
    queue_name: str
    channel: AbstractChannel
    queue: AbstractQueue
    keys: set[str] = field(default_factory=set)
    tag: str | None = None
    #: The queue for log lines (computed once, not per message).
    where: str = field(init=False)
    acks: _Acks = field(init=False)

    def __post_init__(self) -> None:
        self.where = f"queue {self.queue_name!r}"
        self.acks = _Acks()


class _Acks:
    """The acks of one consumer, sent in batches by one flusher task.

    Deliveries are tracked in delivery-tag order. ``done`` marks one finished (its
    handler, retry copy or dead letter is through) and, at the end of the loop's turn,
    starts the flusher unless it runs already. The flusher acks the finished run at the
    front of the order with one ``basic.ack multiple`` and the finished ones behind an
    unfinished delivery one by one (so a slow handler does not hold back other acks and
    their prefetch slots), and goes on while more finished meanwhile. One flusher at a
    time, writing in order: a ``multiple`` ack must never cover a tag whose own ack is
    still to be written (acking a tag twice closes the channel). ``settled`` forgets a
    delivery that was nacked. Delivery tags belong to a channel: after a reconnection
    the tracking starts afresh (the broker requeued the old ones).
    """

    __slots__ = ("_channel", "_done", "_flusher", "_order", "_scheduled", "_strays")

    def __init__(self) -> None:
        self._channel: Any = None
        #: delivery tag -> message, in delivery order; ``_done`` holds the finished tags.
        self._order: dict[int, AbstractIncomingMessage] = {}
        self._done: set[int] = set()
        self._scheduled = False
        self._flusher: asyncio.Task[None] | None = None
        #: Acks of untracked deliveries (a channel replaced meanwhile), sent on their own.
        self._strays: set[asyncio.Task[None]] = set()

    def received(self, message: AbstractIncomingMessage) -> None:
        tag = message.delivery_tag
        if tag is None:
            return
        if message.channel is not self._channel:  # a new channel: new delivery tags
            self._channel = message.channel
            self._order.clear()
            self._done.clear()
        self._order[tag] = message

    def done(self, message: AbstractIncomingMessage) -> None:
        tag = message.delivery_tag
        if tag is None or self._order.get(tag) is not message:
            task = asyncio.get_running_loop().create_task(_settle(message.ack(), message))
            self._strays.add(task)
            task.add_done_callback(self._strays.discard)
            return
        self._done.add(tag)
        if not self._scheduled and self._flusher is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flusher)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """``message`` was nacked (its frame sent): it needs no ack."""
        tag = message.delivery_tag
        if tag is not None and self._order.get(tag) is message:
            del self._order[tag]
            self._done.discard(tag)

    def _start_flusher(self) -> None:
        self._scheduled = False
        if self._flusher is None and self._done:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            while self._done:
                await self._flush_once()
        finally:
            self._flusher = None

    async def _flush_once(self) -> None:
        """Ack every delivery finished by now (``multiple`` for the run at the front)."""
        done, order = self._done, self._order
        # ``order`` is in delivery-tag order (the client starts the deliveries' tasks in
        # frame order): the finished run before the first unfinished delivery is acked
        # with one ``multiple`` ack at its last tag, which covers nothing unfinished.
        front: AbstractIncomingMessage | None = None
        for tag in list(order):
            if tag not in done:
                break
            front = order.pop(tag)
            done.discard(tag)
        singles = [order.pop(tag) for tag in sorted(done) if tag in order]
        done.clear()
        if front is not None:
            await _settle(front.ack(multiple=True), front)
        for message in singles:
            await _settle(message.ack(), message)

    async def drain(self) -> None:
        """Send every ack still due (``stop()``, before the channel closes)."""
        while self._flusher is not None or self._done:
            if self._flusher is None:  # every ack goes through the one flusher
                self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
            await asyncio.wait({self._flusher})
        if self._strays:
            await asyncio.wait(set(self._strays))


def copy_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The message's headers without the ones the broker added (``x-death`` ...)."""
    return {
        k: v for k, v in (message.headers or {}).items() if k not in topology.BROKER_HEADERS
    }


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The same bytes and properties, new headers, persistent."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        delivery_mode=_PERSISTENT,
    )


class Consumers:
    """Every subscription consumer of one bus, and what they do with a message."""

    def __init__(
        self,
        config: RabbitMQConfig,
        codec: CloudEventCodec,
        pipeline: ConsumePipeline,
        publisher: Publisher,
    ) -> None:
        self.config = config
        self.codec = codec
        self.pipeline = pipeline
        self.publisher = publisher
        self.by_name: dict[str, SubscriptionConsumer] = {}
        #: Work queues whose retry tiers and DLQ this bus declared.
        self.declared: set[str] = set()
        #: Tasks handling a message right now (``stop()`` drains them).
        self.inflight: set[asyncio.Task[Any]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._retired: list[AbstractChannel] = []  # channels of removed consumers
        self._retired_acks: list[_Acks] = []  # ... and their acks still to send
        self._tail: asyncio.Task[None] | None = None
        self._failures: list[Exception] = []

    def queue_name(self, name: str) -> str:
        return topology.work_queue_name(self.config.service_name, name)

    # -- opening and closing -------------------------------------------------------------
    async def start(self, connection: AbstractRobustConnection, keys: dict[str, set[str]]) -> None:
        """Consume on ``connection``: one consumer per subscription name in ``keys``."""
        self._connection = connection
        for name, routing_keys in keys.items():
            await self.open(name, routing_keys)

    async def open(self, name: str, keys: set[str]) -> None:
        """Declare a subscription's queues, bind ``keys`` and start consuming."""
        if self._connection is None:
            return
        consumer = self.by_name.get(name)
        if consumer is None:
            queue_name = self.queue_name(name)
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self.config.prefetch)
            queue = await topology.declare_subscription(
                channel,
                queue_name,
                self.config.retry_delays,
                with_tiers=queue_name not in self.declared,
                queue_type=self.config.queue_type,
            )
            self.declared.add(queue_name)
            consumer = SubscriptionConsumer(name, queue_name, channel, queue)
            self.by_name[name] = consumer
        for key in keys - consumer.keys:
            await consumer.queue.bind(self.config.exchange, routing_key=key)
            consumer.keys.add(key)
        if consumer.tag is None:
            consumer.tag = await consumer.queue.consume(
                functools.partial(self._on_message, consumer)
            )

    async def close(self, name: str) -> None:
        """Unbind keys no longer subscribed; cancel the consumer when none is left."""
        consumer = self.by_name.get(name)
        if consumer is None:
            return
        wanted = {s.routing_key for s in self.pipeline.subscriptions if s.name == name}
        for key in consumer.keys - wanted:
            await consumer.queue.unbind(self.config.exchange, routing_key=key)
            consumer.keys.discard(key)
        if not wanted:
            # Stop intake; messages in flight finish (or are requeued by stop()) and ack
            # on this channel, which stop() closes. The durable queue stays.
            await self._cancel(consumer)
            del self.by_name[name]
            self._retired.append(consumer.channel)
            self._retired_acks.append(consumer.acks)

    async def _cancel(self, consumer: SubscriptionConsumer) -> None:
        if consumer.tag is None:
            return
        tag, consumer.tag = consumer.tag, None
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                await consumer.queue.cancel(tag)
        except (TimeoutError, *TRANSIENT_ERRORS) as exc:
            logger.warning("could not cancel the consumer of %s: %s", consumer.queue_name, exc)

    # -- changes after start ---------------------------------------------------------------
    def schedule(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a topology change after the ones already scheduled, in the background."""
        previous = self._tail

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await make()
            except Exception as exc:  # kept for wait_ready(), and logged
                logger.exception("RabbitMQ subscription change failed")
                self._failures.append(exc)

        self._tail = asyncio.get_running_loop().create_task(run())

    @property
    def pending(self) -> bool:
        """Are topology changes scheduled that ``settle()`` has not seen finish?"""
        return self._tail is not None

    async def settle(self) -> None:
        """Wait until every scheduled topology change has run."""
        tail = self._tail
        if tail is not None:
            await asyncio.wait([tail])
            if self._tail is tail:
                self._tail = None

    def take_failures(self) -> list[Exception]:
        """Topology changes that failed since the last call (each was logged)."""
        failures, self._failures = self._failures, []
        return failures

    def forget(self) -> None:
        """Drop every consumer without talking to the broker (its connection is gone)."""
        self.by_name.clear()
        self._retired.clear()
        self._retired_acks.clear()
        self._connection = None

    async def stop(self) -> None:
        """Cancel every consumer, drain handlers in flight, requeue the rest, close."""
        await self.settle()
        for consumer in list(self.by_name.values()):
            await self._cancel(consumer)
        drain = self.config.drain_timeout
        if self.inflight:
            _, still = await asyncio.wait(set(self.inflight), timeout=drain)
            if still:
                logger.warning(
                    "stop(): %d handler(s) still running after %.1fs; requeueing them",
                    len(still),
                    drain,
                )
                for task in still:
                    task.cancel()
                await asyncio.wait(still)
        for acks in [*(c.acks for c in self.by_name.values()), *self._retired_acks]:
            await acks.drain()
        for channel in [*(c.channel for c in self.by_name.values()), *self._retired]:
            with contextlib.suppress(Exception):
                await channel.close()
        self.by_name.clear()
        self._retired.clear()
        self._retired_acks.clear()
        self._connection = None

    # -- one message -----------------------------------------------------------------------
    async def _on_message(
        self, consumer: SubscriptionConsumer, message: AbstractIncomingMessage
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        consumer.acks.received(message)
        try:
            await self._handle(consumer, message)
        except asyncio.CancelledError:
            # Interrupted by stop(): back to the queue, never to the DLQ.
            self.pipeline.stats.requeued += 1
            await _settle(message.nack(requeue=True), message)
            consumer.acks.settled(message)
            raise
        except Exception:
            # The retry / dead letter could not be sent (broker away): requeue; it comes
            # back later, with the same attempt number.
            logger.exception(
                "RabbitMQ message %s could not be settled; requeued", message.message_id
            )
            self.pipeline.stats.requeued += 1
            await _settle(message.nack(requeue=True), message)
            consumer.acks.settled(message)
        finally:
            if task is not None:
                self.inflight.discard(task)

    async def _handle(
        self, consumer: SubscriptionConsumer, message: AbstractIncomingMessage
    ) -> None:
        headers = message.headers or {}
        attempt = header_int(headers.get(topology.ATTEMPT_HEADER), 1)
        decoded: Decoded | DecodeError
        try:
            decoded = read_message(self.codec, headers, message.content_type, message.body)
        except DecodeError as exc:
            decoded = exc
        # No key header: published without a key (DeliveryContext.key then reads as the
        # event id, the order of that event alone), as on Kafka and in memory.
        key = header_text(headers.get(topology.KEY_HEADER)) or None
        outcome = await self.pipeline.deliver(
            consumer.name, decoded, attempt=attempt, key=key, where=consumer.where
        )
        if outcome.action is _ACK:
            consumer.acks.done(message)  # acked at the end of this turn of the loop
            return
        if outcome.action is _RETRY:
            await self._retry(consumer, message, outcome)
        else:
            await self._dead_letter(consumer, message, outcome)
        self.pipeline.settled(outcome)
        consumer.acks.done(message)  # the copy is confirmed: the original may go

    async def _retry(
        self, consumer: SubscriptionConsumer, message: AbstractIncomingMessage, outcome: Outcome
    ) -> None:
        """A copy, attempt + 1, to the back-off tier of the pipeline's delay; confirmed."""
        headers = copy_headers(message)
        headers[topology.ATTEMPT_HEADER] = outcome.attempt + 1
        headers.setdefault(topology.ROUTING_KEY_HEADER, message.routing_key or "")
        tier = topology.retry_queue_name(consumer.queue_name, outcome.delay)
        await self.publisher.send_to_queue(
            copy_message(message, headers),
            tier,
            functools.partial("retry of message {} to {}".format, message.message_id, tier),
        )

    async def _dead_letter(
        self, consumer: SubscriptionConsumer, message: AbstractIncomingMessage, outcome: Outcome
    ) -> None:
        """The original bytes plus the failure record to the DLQ; confirmed."""
        headers = copy_headers(message)
        origin = headers.pop(topology.ROUTING_KEY_HEADER, None) or message.routing_key or ""
        headers.update(failure_headers(outcome, origin=header_text(origin) or ""))
        headers[topology.QUEUE_HEADER] = consumer.queue_name
        dlq = topology.dlq_name(consumer.queue_name)
        await self.publisher.send_to_queue(
            copy_message(message, headers),
            dlq,
            functools.partial("dead letter {} to {}".format, message.message_id, dlq),
        )


async def _settle(action: Awaitable[Any], message: AbstractIncomingMessage) -> None:
    try:
        await action
    except Exception as exc:  # noqa: BLE001 - the channel is gone: the broker requeues
        logger.debug("ack/nack of %s failed (%s); RabbitMQ redelivers it", message.message_id, exc)
