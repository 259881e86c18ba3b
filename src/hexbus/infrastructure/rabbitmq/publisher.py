"""The sending side of the RabbitMQ adapter: persistent messages, publisher confirms.

Admission (state, type, metadata, middleware, causation) has already happened in the
bus (``hexbus.application.publishing``); this module only puts what was admitted on the
wire and waits for the broker's confirm. Everything the adapter sends goes through
``Publisher.send``: events to the topic exchange, and the consumer's retry copies, dead
letters and replays to a queue through the default exchange, so all of them are
confirmed before the original leaves its queue.

Why no lock around publish: concurrent publishes share the channel and their confirms
are pipelined. ``publish_many``, and the ``publish()`` calls of one event-loop
iteration, are written in groups of frames under one hold of the channel lock
(``_put_many``) and wait for all their confirms together; frames leave in call order on
one channel and AMQP keeps channel order, so each queue receives them in that order
(unless a publish had to be resent after a connection loss).

A nack, or no confirm within ``publish_timeout`` (which also bounds waiting for a lost
connection to come back), raises ``PublishError`` naming the broker by its redacted URL.
While the connection is down a publish is resent until the deadline, so a message whose
confirm was lost with the connection may be stored twice (at-least-once). The error says
which of the two it was: no node answered (broker unreachable), or a node took the
message and did not confirm it (a quorum queue without a majority of its nodes, an alarm).

Reconnection is aio-pika's robust connection; ``connect_first`` adds the cluster to it:
``HEXBUS_RABBITMQ_URL`` may list several nodes, the bus connects to the first that
answers, and ``Failover`` moves each later reconnection attempt on to the next node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractConnection,
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from yarl import URL

from hexbus.application.coalescing import Coalescer, Group
from hexbus.application.consuming import error_text
from hexbus.application.deadlines import Deadlines
from hexbus.application.dispatch import DispatchStats
from hexbus.application.publishing import Admitted
from hexbus.domain.errors import PublishError
from hexbus.infrastructure.codec import CloudEventCodec, EncodedEvent
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import (
    EventProperties,
    encode_message,
    to_amqp_headers,
)
from hexbus.infrastructure.rabbitmq.topology import KEY_HEADER
from hexbus.infrastructure.settings import redact_url

__all__ = ["TRANSIENT_ERRORS", "Failover", "Publisher", "Unreachable", "connect_first", "mask"]

logger = logging.getLogger("hexbus.rabbitmq")

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_PERSISTENT_MODE = int(_PERSISTENT)
#: Errors after which a send is worth repeating (the connection or channel went away).
TRANSIENT_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)

#: Publishes written to the connection in one piece (``_put_many``: a ``publish_many``,
#: or a group of concurrent publishes): ~0.7 kB each for a small event, ~180 kB a write.
_FRAME_GROUP = 256
#: What ``_put_many`` and ``_settle_confirms_in_order`` use of an aiormq channel;
#: without all of them (another aiormq version), ``publish_many`` publishes each event
#: on its own as before.
_BATCH_ATTRIBUTES = (
    "lock",
    "delivery_tag",
    "confirmations",
    "write_queue",
    "number",
    "max_content_size",
    "create_future",
    "publisher_confirms",
    "loop",
    "_confirm_delivery",
    "_on_confirm_frame",
)


class _Wire:
    """An event ready for the wire: body + AMQP properties, built without aio-pika's
    ``Message`` (whose setters, checks and later ``properties`` copy cost ~3 µs an event).

    The properties are those ``aio_pika.Message(...).properties`` gives for the same
    arguments (priority 0 included), so the bytes on the wire are unchanged.
    """

    __slots__ = ("body", "properties")

    def __init__(self, body: bytes, properties: spec.Basic.Properties) -> None:
        self.body = body
        self.properties = properties


_WAITING: Any = object()  # a confirmation slot's outcome before the broker answered
_LOST: Any = object()  # ... when the channel closed first (the publish is sent again)


class _Confirms:
    """The confirms of one ``_put_many`` call: what aiormq settles, one slot per publish.

    Why not aiormq's future per publish: each one costs three done-callbacks (two future
    stores and an exception reader), each run through ``call_soon`` when it is settled,
    and a fourth for ``asyncio.wait``: with the garbage collector's share, ~20 µs of CPU
    an event, a quarter of a concurrent publish (measured: 73-82 → 51-58 µs). A slot is
    a small object aiormq sees as a future (``done``, ``cancelled``, ``set_result``,
    ``set_exception``: all its confirm handling calls); the call waits on one future for
    all of them. A channel that closes fails aiormq's futures; one real
    aiormq future per call (``sentinel``) is failed with them, and marks every slot
    still waiting as lost.
    """

    __slots__ = ("done", "lost", "outcomes", "pending", "sentinel")

    def __init__(self, underlay: Any) -> None:
        #: Per publish written: ``_WAITING``, ``None`` (acked), the nack's
        #: ``DeliveryError``, or ``_LOST``.
        self.outcomes: list[Any] = []
        self.pending = 0
        self.lost = False  # the channel closed: slots made from now on start lost
        self.done: asyncio.Future[None] = underlay.loop.create_future()
        self.sentinel: asyncio.Future[Any] = underlay.create_future()
        self.sentinel.add_done_callback(self._lost)

    def slots(self, count: int) -> list[_Slot]:
        """``count`` more slots, for publishes about to be written."""
        outcomes = self.outcomes
        start = len(outcomes)
        if self.lost:
            outcomes.extend([_LOST] * count)
        else:
            outcomes.extend([_WAITING] * count)
            self.pending += count
        return [_Slot(self, index) for index in range(start, start + count)]

    def settle(self, index: int, outcome: BaseException | None) -> None:
        outcomes = self.outcomes
        if outcomes[index] is _WAITING:
            outcomes[index] = outcome
            self.pending -= 1
            if not self.pending and not self.done.done():
                self.done.set_result(None)

    def _lost(self, _: asyncio.Future[Any]) -> None:
        self.lost = True
        outcomes = self.outcomes
        for index, outcome in enumerate(outcomes):
            if outcome is _WAITING:
                outcomes[index] = _LOST
        self.pending = 0
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Release the sentinel (the call read its outcomes); late confirms change nothing."""
        sentinel = self.sentinel
        sentinel.remove_done_callback(self._lost)
        if not sentinel.done():
            sentinel.set_result(None)


class _Slot:
    """One publish's confirmation as aiormq handles it (see ``_Confirms``)."""

    __slots__ = ("confirms", "index")

    def __init__(self, confirms: _Confirms, index: int) -> None:
        self.confirms = confirms
        self.index = index

    def done(self) -> bool:
        return self.confirms.outcomes[self.index] is not _WAITING

    def cancelled(self) -> bool:  # read by aiormq for a confirm that came too late
        return self.confirms.outcomes[self.index] is _LOST

    def set_result(self, _frame: Any) -> None:  # basic.ack
        self.confirms.settle(self.index, None)

    def set_exception(self, exc: BaseException) -> None:  # basic.nack: DeliveryError
        self.confirms.settle(self.index, exc)


class Publisher:
    """Puts admitted events and the consumer's copies on the broker, confirmed.

    ``open`` binds it to a confirm channel of the bus's publishing connection; until
    then (and after ``close``) sending raises ``PublishError``.
    """

    def __init__(
        self, config: RabbitMQConfig, codec: CloudEventCodec, stats: DispatchStats
    ) -> None:
        self.config = config
        self.codec = codec
        self.stats = stats
        #: The broker's URL with the password masked: the only form in messages.
        self.url = config.redacted_url
        self.channel: AbstractRobustChannel | None = None
        #: The connection ``open`` was given (says whether a node is connected).
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None
        self.default_exchange: AbstractExchange | None = None
        self._deadlines = Deadlines(config.publish_timeout)
        #: Replacing the confirm channel after a nack (``_renew_soon``), if under way.
        self._renewal: asyncio.Task[None] | None = None
        #: Publishes ``publish_many`` / ``send_encoded`` wrote in groups (``_put_many``);
        #: the others went one by one (after a connection loss, or with an aiormq
        #: that lacks what ``_put_many`` uses).
        self.grouped = 0
        #: Concurrent ``publish`` calls, written a group at a time (``_flush``).
        self._coalescer: Coalescer[tuple[_Wire, str, str]] = Coalescer(
            self._flush, cancelled="the RabbitMQ publish was cancelled (the bus stopped)"
        )
        #: Groups and ``publish_many`` calls are written one at a time, in call order.
        self._submitting = asyncio.Lock()

    async def open(self, connection: AbstractRobustConnection) -> None:
        """Open the confirm channel and declare the durable topic exchange."""
        channel, self.exchange = await self._open_channel(connection)
        self.default_exchange = channel.default_exchange
        self.channel = channel
        self.connection = connection

    async def _open_channel(
        self, connection: AbstractRobustConnection
    ) -> tuple[AbstractRobustChannel, AbstractExchange]:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            self.config.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        return channel, exchange

    async def close(self) -> None:
        """Stop the deadline watchdog (the connection is closed by the bus)."""
        self._coalescer.cancel()  # groups left by a bus that did not drain (a failed start)
        await self.drain()
        self.channel = self.exchange = self.default_exchange = None
        self.connection = None
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.wait([self._renewal])
            self._renewal = None
        await self._deadlines.close()

    async def drain(self) -> None:
        """Wait until the groups of single publishes under way are confirmed or failed
        (each within ``publish_timeout``): the bus calls this before closing its
        connection, so a publish made just before ``stop()`` is not cut off."""
        await self._coalescer.drain()

    def _renew_soon(self) -> None:
        """After a nack: publish on a new confirm channel from now on (one renewal at a
        time, so at most one per ``publish_timeout``).

        Why: a channel that published to a quorum queue whose leader's node went away
        can be left nacking every later publish to that queue (seen on RabbitMQ 3.10
        after a node stop), while a new channel's publishes are confirmed. For a real
        refusal (an alarm) the price is a channel now and then.
        """
        if self.connection is None or (self._renewal is not None and not self._renewal.done()):
            return
        self._renewal = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        old, connection = self.channel, self.connection
        if old is None or connection is None:
            return
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                channel, exchange = await self._open_channel(connection)
        except (TimeoutError, *TRANSIENT_ERRORS) as exc:
            logger.debug("RabbitMQ: no new channel after a nack (%s)", error_text(exc))
            return
        if self.channel is not old:  # closed meanwhile
            with contextlib.suppress(Exception):
                await channel.close()
            return
        self.channel, self.exchange = channel, exchange
        self.default_exchange = channel.default_exchange
        logger.warning("RabbitMQ refused a publish (basic.nack); publishing on a new channel")
        # Publishes still waiting on the old channel settle (or time out) first.
        await asyncio.sleep(self.config.publish_timeout)
        with contextlib.suppress(Exception):
            await old.close()

    # -- events ------------------------------------------------------------------------
    def message(self, admitted: Admitted) -> aio_pika.Message:
        """The persistent AMQP message of an admitted event (CloudEvents binary mode)."""
        return _as_message(self.wire(admitted))

    def wire(self, admitted: Admitted) -> _Wire:
        """``message`` as body + properties: what the publish path sends."""
        event = admitted.event
        encoded, content_type, body = encode_message(self.codec, event, admitted.metadata or None)
        headers: dict[str, Any] = encoded
        if admitted.key is not None:  # absent: no key (each event orders on its own)
            headers[KEY_HEADER] = admitted.key
        return self._wire(
            body,
            headers,
            content_type=content_type,
            message_id=str(event.event_id),
            timestamp=event.occurred_at,
            event_type=event.event_type,
        )

    def encoded_message(self, item: EncodedEvent) -> aio_pika.Message:
        """The message ``message`` gives the event ``item`` was encoded from: the same
        headers, key header and properties, taken from the attributes (never decoded)."""
        return _as_message(self.encoded_wire(item))

    def encoded_wire(self, item: EncodedEvent) -> _Wire:
        """``encoded_message`` as body + properties."""
        attributes = item.attributes
        headers: dict[str, Any] = to_amqp_headers(attributes)
        if item.key is not None:
            headers[KEY_HEADER] = item.key
        return self._wire(
            item.data,
            headers,
            content_type=attributes.get("datacontenttype"),
            message_id=attributes["id"],
            timestamp=_timestamp(attributes.get("time")),
            event_type=attributes["type"],
        )

    def _wire(
        self,
        body: bytes,
        headers: dict[str, Any],
        *,
        content_type: str | None,
        message_id: str,
        timestamp: datetime | None,
        event_type: str,
    ) -> _Wire:
        """An event's persistent message: what ``wire`` and ``encoded_wire`` both build."""
        return _Wire(
            body,
            EventProperties(
                content_type=content_type,
                headers=headers,
                delivery_mode=_PERSISTENT_MODE,
                priority=0,
                message_id=message_id,
                timestamp=timestamp,
                message_type=event_type,
                app_id=self.config.service_name,
            ),
        )

    async def publish(self, admitted: Admitted) -> None:
        """Send one event to the exchange (routing key = its type); return once confirmed.

        Concurrent publishes are written together: the ``publish()`` calls of one
        event-loop iteration join one group, which a task writes as ``publish_many``
        does (``_send_many``) instead of each taking the channel lock, a timer, a future
        and a write of its own. A publish with nothing queued ahead of it goes straight
        to the channel (``send``; ``Coalescer.direct``: one at a time, or a steady stream
        whose earlier events only await their confirms). Each caller waits for its own
        event's confirm and is told about its own event only.
        """
        exchange = self.exchange
        if exchange is None:
            raise self._not_connected()
        event = admitted.event
        wire = self.wire(admitted)
        with self._coalescer.calling():
            if self._coalescer.direct():
                await self.send(
                    exchange,
                    wire,
                    event.event_type,
                    functools.partial("event {} {}".format, event.event_type, event.event_id),
                )
                self.stats.published += 1
                return
            _, waiter = self._coalescer.join((wire, event.event_type, str(event.event_id)))
            await waiter

    async def _flush(self, group: Group[tuple[_Wire, str, str]]) -> None:
        """Write a group of single publishes (the coalescer's ``flush``; it runs after
        every publish of the iteration joined) and tell each caller its event's outcome."""
        wires, keys, ids = (list(column) for column in zip(*group.items, strict=True))
        group.settle_all(await self._send_many(wires, keys, ids))

    async def publish_many(self, admitted: list[Admitted]) -> None:
        """Send all in list order, confirms pipelined; return when all are confirmed.

        If some are not confirmed, ``PublishError`` names them; the others are published.
        """
        if admitted:
            await self._send_all(
                [self.wire(item) for item in admitted],
                [item.event.event_type for item in admitted],
                [str(item.event.event_id) for item in admitted],
            )

    async def send_encoded(self, items: Sequence[EncodedEvent]) -> None:
        """``publish_many`` for events encoded earlier (the outbox relay): the same
        messages, routing keys (the type), confirms and ``PublishError``."""
        if items:
            await self._send_all(
                [self.encoded_wire(item) for item in items],
                [item.attributes["type"] for item in items],
                [item.attributes["id"] for item in items],
            )

    async def _send_all(self, wires: list[_Wire], routing_keys: list[str], ids: list[str]) -> None:
        """Send ``wires`` to the exchange in order; ``PublishError`` naming those not
        confirmed (the others are published)."""
        self._report(await self._send_many(wires, routing_keys, ids), ids)

    async def _send_many(
        self, wires: list[_Wire], routing_keys: list[str], ids: list[str]
    ) -> list[BaseException | None]:
        """Send ``wires`` to the exchange in order; per wire ``None`` once confirmed, else
        the ``PublishError`` saying why not.

        Why not a ``send`` per event, gathered: each would be a Task taking the channel
        lock, making a timer, a future and a frame write of its own; ~40 µs of CPU an
        event, more than raw aio-pika's. ``_put_many`` writes them a group at a time
        under one lock (the frames and confirms are the same). Those the channel lost
        before they were confirmed (a connection loss) are sent again, each through the
        same path as ``send``, until ``publish_timeout``.
        """
        exchange = self.exchange
        if exchange is None:
            raise self._not_connected()
        timeout = self.config.publish_timeout
        deadline = time.monotonic() + timeout
        confirms: _Confirms | None = None
        channel: Any = getattr(exchange, "channel", None)
        if channel is not None and not channel.is_closed:  # else each waits for it, below
            try:
                async with asyncio.timeout(timeout):
                    async with self._submitting:
                        underlay = await channel.get_underlay_channel()
                        if _groupable(underlay):
                            confirms = _Confirms(underlay)
                            try:
                                await _put_many(
                                    underlay, exchange.name, wires, routing_keys, confirms
                                )
                            finally:
                                self.grouped += len(confirms.outcomes)
                    if confirms is not None and confirms.pending:
                        await confirms.done
            except TimeoutError:
                pass  # those not confirmed yet are reported below
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
            except Exception as exc:  # noqa: BLE001 - those not written are sent below
                logger.debug("RabbitMQ: publish_many goes on one by one after %r", exc)
            finally:
                if confirms is not None:
                    confirms.close()
        written = confirms.outcomes if confirms is not None else []
        outcomes: list[BaseException | None] = [None] * len(wires)
        again: list[int] = []  # never written, or lost with the channel: sent again
        # An event's description (``what``, for an error) is made only when it failed.
        for index in range(len(wires)):
            if index >= len(written):  # never written
                again.append(index)
                continue
            outcome = written[index]
            if outcome is None:  # basic.ack
                continue
            if outcome is _WAITING:  # the deadline came first
                what = functools.partial(_describe, routing_keys, ids, index)
                outcomes[index] = self._unconfirmed(what, None)
            elif outcome is _LOST:  # the channel or connection closed first
                again.append(index)
            elif isinstance(outcome, aio_pika.exceptions.DeliveryError):
                what = functools.partial(_describe, routing_keys, ids, index)
                outcomes[index] = self._nacked(what)  # basic.nack
            else:  # aiormq failed the confirm otherwise: the channel went
                again.append(index)
        if again:
            retried = await asyncio.gather(
                *(
                    self._send_slow(
                        exchange,
                        wires[i],
                        routing_keys[i],
                        functools.partial(_describe, routing_keys, ids, i),
                        deadline,
                    )
                    for i in again
                ),
                return_exceptions=True,
            )
            for index, result in zip(again, retried, strict=True):
                outcomes[index] = result if isinstance(result, BaseException) else None
        self.stats.published += outcomes.count(None)
        return outcomes

    def _report(self, results: Sequence[BaseException | None], ids: list[str]) -> None:
        """``PublishError`` naming the ids whose result is an error (none: return)."""
        failed = [
            (event_id, result)
            for event_id, result in zip(ids, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if not failed:
            return
        for _, exc in failed:
            if not isinstance(exc, Exception):
                raise exc  # cancellation and the like pass through
        first = failed[0][1]
        raise PublishError(
            f"{len(failed)} of {len(ids)} events were not confirmed by RabbitMQ at "
            f"{self.url} (first: {first}); unconfirmed event ids: "
            + ", ".join(event_id for event_id, _ in failed[:20])
            + (" ..." if len(failed) > 20 else "")
        ) from None

    # -- copies to a queue (retry tiers, dead letters) -----------------------------------
    async def send_to_queue(
        self, message: aio_pika.Message, queue: str, what: Callable[[], str]
    ) -> None:
        """Send ``message`` straight to ``queue`` (default exchange); return once confirmed."""
        exchange = self.default_exchange
        if exchange is None:
            raise self._not_connected()
        await self.send(exchange, message, queue, what)

    # -- the confirm loop ----------------------------------------------------------------
    async def send(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message | _Wire,
        routing_key: str,
        what: Callable[[], str],
    ) -> None:
        """Publish and wait for the confirm; resend across reconnections until the deadline.

        ``what()`` describes the message for a ``PublishError`` (called only on failure).
        Fast path (channel open): the shared deadline watchdog bounds publish + confirm.
        Nothing between the ``is_closed`` check and the frame write suspends, so a robust
        channel cannot make it wait for a reconnection there.
        """
        began = time.monotonic()
        channel: Any = getattr(exchange, "channel", None)
        task = asyncio.current_task()
        if channel is not None and not channel.is_closed and task is not None:
            watched = self._deadlines.start(task)
            try:
                await _put(exchange, message, routing_key)
                return
            except aio_pika.exceptions.DeliveryError:
                raise self._nacked(what) from None
            except asyncio.CancelledError:
                if watched.timed_out():
                    raise self._unconfirmed(what, None) from None
                if _really_cancelled():
                    raise
            except TRANSIENT_ERRORS:
                pass
            finally:
                watched.end()
            if watched.expired:
                raise self._unconfirmed(what, None)
        deadline = began + self.config.publish_timeout
        await self._send_slow(exchange, message, routing_key, what, deadline)

    async def _send_slow(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message | _Wire,
        routing_key: str,
        what: Callable[[], str],
        deadline: float,
    ) -> None:
        last: BaseException | None = None
        ready = getattr(getattr(exchange, "channel", None), "ready", None)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                while True:
                    if ready is not None:
                        await ready()  # a robust channel: waits for the reconnection
                    try:
                        await _put(exchange, message, routing_key)
                        return
                    except aio_pika.exceptions.DeliveryError:
                        raise self._nacked(what) from None
                    except asyncio.CancelledError as exc:
                        if _really_cancelled():
                            raise
                        last = exc
                    except TRANSIENT_ERRORS as exc:
                        last = exc
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise self._unconfirmed(what, last) from None

    def _nacked(self, what: Callable[[], str]) -> PublishError:
        self._renew_soon()
        return PublishError(
            f"RabbitMQ at {self.url} refused {what()} (basic.nack); the broker could not "
            "store it (disk or memory alarm, queue length limit, a quorum queue that just "
            "lost its leader?); publish it again"
        )

    def _unconfirmed(self, what: Callable[[], str], last: BaseException | None) -> PublishError:
        cause = f" (last error: {error_text(last)})" if last is not None else ""
        return PublishError(
            f"{what()} was not confirmed by RabbitMQ at {self.url} within "
            f"{self.config.publish_timeout}s{cause}{self._why()}"
        )

    def _why(self) -> str:
        """What the connection says about a missing confirm (called only on failure)."""
        connection = self.connection
        if connection is None:
            return ""
        if not connection.connected.is_set():
            return (
                ": no RabbitMQ node answered meanwhile (broker down or unreachable; the "
                "bus keeps reconnecting, to every node of HEXBUS_RABBITMQ_URL in turn)"
            )
        node = redact_url(str(URL(str(connection)).with_query(None)))
        return (
            f": connected to {node}, which took the message but did not confirm it "
            "(stored by fewer nodes than needed: a quorum queue whose majority of nodes is "
            "down has no quorum; or a memory / disk alarm blocks publishing); it may "
            "still be stored once the nodes are back"
        )

    def _not_connected(self) -> PublishError:
        return PublishError(f"the RabbitMQ event bus ({self.url}) is not connected; start it first")


def _describe(routing_keys: Sequence[str], ids: Sequence[str], index: int) -> str:
    """Event ``index`` of a ``_send_many`` call, for an error message."""
    return f"event {routing_keys[index]} {ids[index]}"


async def _put(
    exchange: AbstractExchange, message: aio_pika.Message | _Wire, routing_key: str
) -> None:
    """One publish, returning once confirmed (``DeliveryError`` on a nack).

    An event (``_Wire``) goes straight to the aiormq channel (``_put_one``; aiormq's
    ``basic_publish`` with ``wait=False`` on a channel that lacks what it uses): the
    frames are queued for the connection's writer and the confirm is awaited, but the
    channel lock is not held until the writer drained them (with ``wait=True``,
    aio-pika's default, every publish on the channel waits one writer turn for the one
    before it, which serialised concurrent publishes). Neither changes what is
    guaranteed: the confirm is what says the broker stored the message; the frames
    still leave in the order the publishes took the channel lock.
    """
    if isinstance(message, _Wire):
        channel: Any = exchange.channel  # type: ignore[attr-defined]  # aio-pika's Exchange
        underlay = await channel.get_underlay_channel()
        if _groupable(underlay):
            await _put_one(underlay, exchange.name, message, routing_key)
            return
        await underlay.basic_publish(
            message.body,
            exchange=exchange.name,
            routing_key=routing_key,
            properties=message.properties,
            mandatory=False,
            wait=False,
        )
    else:
        await exchange.publish(message, routing_key, mandatory=False)


async def _put_many(
    underlay: Any,
    exchange: str,
    wires: Sequence[_Wire],
    routing_keys: Sequence[str],
    confirms: _Confirms,
) -> None:
    """Queue the publishes of ``wires`` on the aiormq channel ``underlay`` in order, each
    with a confirmation slot in ``confirms`` as it is queued.

    What aiormq's ``basic_publish`` does for one message (a delivery tag, a confirmation
    entry, the publish/header/body frames, one write), done here for ``_FRAME_GROUP``
    messages at a time under one hold of the channel lock: the same frames in the same
    order, confirmed the same way (aiormq settles the slots from basic.ack/nack; a
    channel that closes fails ``confirms``). A group's slots are registered right after
    its write is queued, with no suspension in between, so no confirm can come first;
    a group that could not be queued (``confirms`` then has fewer slots than ``wires``)
    took no delivery tag.
    """
    number, size = underlay.number, underlay.max_content_size
    async with underlay.lock:
        for start in range(0, len(wires), _FRAME_GROUP):
            stop = min(start + _FRAME_GROUP, len(wires))
            frames: list[Any] = []
            for index in range(start, stop):
                _add_frames(frames, exchange, wires[index], routing_keys[index], size)
            await underlay.write_queue.put(ChannelFrame.marshall(number, frames))
            tag = underlay.delivery_tag
            confirmations = underlay.confirmations
            for slot in confirms.slots(stop - start):
                tag += 1
                confirmations[tag] = slot
            underlay.delivery_tag = tag


async def _put_one(underlay: Any, exchange: str, wire: _Wire, routing_key: str) -> None:
    """Queue one publish on the aiormq channel ``underlay`` and wait for its confirm.

    What ``_put_many`` does for a group, for one message, with aiormq's own future as
    its confirmation (``DeliveryError`` on a nack; failed with the channel when it
    closes). Why not ``basic_publish``: besides the same frames, a delivery tag and a
    confirmation entry, it builds a timeout scope, a context manager, a message-id map
    entry and a done-callback per publish (for ``mandatory`` returns and its own
    timeout, neither used here: ``send`` bounds the wait with its deadline watchdog).
    Measured: 7-18 µs less CPU per publish, of ~115-155 (two A/B runs of 21 interleaved
    repeats; ``docs/architecture/broker-adapters.md``).
    """
    frames: list[Any] = []
    _add_frames(frames, exchange, wire, routing_key, underlay.max_content_size)
    async with underlay.lock:
        await underlay.write_queue.put(ChannelFrame.marshall(underlay.number, frames))
        tag = underlay.delivery_tag + 1
        underlay.delivery_tag = tag
        confirmation = underlay.create_future()
        underlay.confirmations[tag] = confirmation
    await confirmation


def _add_frames(
    frames: list[Any], exchange: str, wire: _Wire, routing_key: str, size: int
) -> None:
    """Append the frames of one publish (method, content header, body in frames of at
    most ``size`` bytes, none for an empty body): what aiormq's ``basic_publish``
    writes for it."""
    body = wire.body
    frames.append(spec.Basic.Publish(exchange=exchange, routing_key=routing_key))
    frames.append(ContentHeader(0, len(body), wire.properties))
    if not body:
        return
    if len(body) < size:
        frames.append(ContentBody(body))
    else:
        frames.extend(ContentBody(body[at : at + size]) for at in range(0, len(body), size))


def _groupable(underlay: Any) -> bool:
    """Can publishes be written in groups on the aiormq channel ``underlay``? Decided
    once per channel (a reconnection makes a new one): a confirm channel with all of
    ``_BATCH_ATTRIBUTES``, which then settles multiple acks in order."""
    groupable: bool | None = getattr(underlay, "_hexbus_groupable", None)
    if groupable is None:
        groupable = bool(underlay.publisher_confirms) and all(
            hasattr(underlay, name) for name in _BATCH_ATTRIBUTES
        )
        if groupable:
            _settle_confirms_in_order(underlay)
        underlay._hexbus_groupable = groupable
    return groupable


def _settle_confirms_in_order(underlay: Any) -> None:
    """Make the aiormq channel ``underlay`` settle a multiple ack without rescanning.

    aiormq's ``_on_confirm_frame`` answers a ``basic.ack`` with ``multiple`` by walking
    *every* pending delivery tag and scheduling a ``call_soon`` for each one at or below
    the acked tag, including those an earlier ack already scheduled and that have not
    run yet. With thousands of publishes pending, a burst of acks schedules each tag ~5
    times: a third of a grouped publish's CPU. Here the pending tags are taken in order
    (aiormq registers them in increasing order, ``confirmations`` keeps insertion order)
    up to the acked one, each settled at once through aiormq's own ``_confirm_delivery``,
    and the walk stops at the first tag above it. A single ack or nack is settled as
    aiormq does. Set once per channel, by ``_groupable``; the publisher's channel never
    publishes ``mandatory`` messages, the one case (a returned message) where aiormq
    re-registers a tag out of order.
    """
    confirmations = underlay.confirmations
    confirm = underlay._confirm_delivery

    async def on_confirm_frame(frame: Any) -> None:
        tag = frame.delivery_tag
        if not getattr(frame, "multiple", False):
            if tag in confirmations:
                confirm(tag, frame)
            else:
                logger.warning("RabbitMQ confirmed an unknown delivery tag %r; ignored", tag)
            return
        while confirmations:
            first = next(iter(confirmations))
            if first > tag:
                break
            confirm(first, frame)

    underlay._on_confirm_frame = on_confirm_frame


def _as_message(wire: _Wire) -> aio_pika.Message:
    """The ``aio_pika.Message`` of the same body and properties."""
    p = wire.properties
    return aio_pika.Message(
        wire.body,
        headers=p.headers,
        content_type=p.content_type,
        message_id=p.message_id,
        timestamp=p.timestamp,
        delivery_mode=_PERSISTENT,
        type=p.message_type,
        app_id=p.app_id,
    )


def _timestamp(time_text: str | None) -> datetime | None:
    """The ``timestamp`` property from a CloudEvents ``time`` (``None`` if absent/unreadable)."""
    if not time_text:
        return None
    try:
        return datetime.fromisoformat(time_text)
    except ValueError:
        return None


def _really_cancelled() -> bool:
    """aiormq cancels pending confirms when a channel closes; only a cancellation of the
    current task (stop, a caller's timeout) is a real one."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


# -- connecting: the first node that answers, the others on failover ---------------------


class Unreachable(Exception):
    """No node of the list could be connected to; ``failures`` says why, node by node
    (the URLs and errors are raw: mask them before showing them)."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        super().__init__(f"no RabbitMQ node answered ({len(failures)} tried)")
        self.failures = failures


def mask(text: str, urls: Sequence[str]) -> str:
    """``text`` with the password of every URL in ``urls`` replaced by ``***``.

    Why on the whole text: client libraries quote a password in their own words, not
    always inside a URL.
    """
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            text = text.replace(password, "***")
    return text


#: Errors of a connection attempt that mean "this node, not now" (refused, timed out,
#: handshake or authentication failed, unreadable URL).
_CONNECT_ERRORS = (aiormq.exceptions.AMQPError, OSError, ValueError)
#: Beyond the client's own connect timeout: only a handshake that hangs meets it.
_CONNECT_GRACE = 5.0


async def connect_first(
    urls: Sequence[str], *, connect_timeout: float, **options: Any
) -> AbstractRobustConnection:
    """A robust connection to the first of ``urls`` that answers within
    ``connect_timeout`` seconds; ``Unreachable`` when none does. ``options`` go to
    ``aio_pika.connect_robust``.

    Why: a robust connection retries the one address it was opened with, forever; with
    one cluster node down for good the bus would never come back although the other
    nodes serve the same (quorum) queues. So each node is tried in turn, the nodes that
    failed are logged with the reason (passwords masked), and with more than one URL the
    connection gets a ``Failover``. ``connect_timeout`` also bounds every reconnection
    attempt, so a node that does not answer at all cannot hold up the failover.
    """
    failures: list[tuple[str, BaseException]] = []
    connection: AbstractRobustConnection
    for index, url in enumerate(urls):
        try:
            async with asyncio.timeout(connect_timeout + _CONNECT_GRACE):
                connection = await aio_pika.connect_robust(url, timeout=connect_timeout, **options)
        except _CONNECT_ERRORS as exc:
            failures.append((url, exc))
            continue
        if failures:
            logger.warning(
                "RabbitMQ: connected to %s; could not connect to %s",
                redact_url(url),
                "; ".join(
                    f"{redact_url(bad)} ({mask(_reason(exc, connect_timeout), urls)})"
                    for bad, exc in failures
                ),
            )
        if len(urls) > 1:
            connection.close_callbacks.add(Failover(urls, index, connection))
        return connection
    raise Unreachable(failures)


def _reason(exc: BaseException, connect_timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {connect_timeout}s"
    return error_text(exc)


class Failover:
    """Close callback of a robust connection to a cluster: when the connection to its
    node closes (lost, or a reconnection attempt failed), point it at the next node of
    the list, so aio-pika's next reconnection attempt goes there (round robin).

    The node list keeps the query options ``connect_robust`` added to the first URL
    (reconnect interval, connection name), so every node is dialled alike. Logged: the
    loss of the node in use (warning), each round of the list without an answer
    (warning), the node reconnected to (info); single refused attempts only at debug.
    """

    def __init__(self, urls: Sequence[str], index: int, connection: Any) -> None:
        base = URL(urls[index])
        current: URL = connection.url
        extra = {k: v for k, v in current.query.items() if k not in base.query}
        self.urls = list(urls)
        self.index = index
        self._targets = [URL(url).update_query(extra) for url in urls]
        #: Attempts since the connection was last up (0: it is up).
        self._failed = 0
        connection.reconnect_callbacks.add(self._reconnected)

    @property
    def current(self) -> str:
        """The URL of the node the connection uses (or tries) now."""
        return self.urls[self.index]

    def __call__(
        self, connection: AbstractConnection | None, exc: BaseException | None = None, /
    ) -> None:
        target: Any = connection
        if target is None or target.close_called or target.is_closed:
            return  # closed on purpose: nothing to fail over to
        failed = self.current
        self.index = (self.index + 1) % len(self.urls)
        target.url = self._targets[self.index]
        reason = mask(error_text(exc) if exc is not None else "closed", self.urls)
        self._failed += 1
        if self._failed == 1:
            logger.warning(
                "RabbitMQ node %s: connection lost (%s); reconnecting to %s",
                redact_url(failed),
                reason,
                redact_url(self.current),
            )
        elif self._failed % len(self.urls) == 1:
            logger.warning(
                "RabbitMQ: none of the %d nodes answers (last: %s: %s); still trying",
                len(self.urls),
                redact_url(failed),
                reason,
            )
        else:
            logger.debug(
                "RabbitMQ node %s refused the connection (%s); trying %s",
                redact_url(failed),
                reason,
                redact_url(self.current),
            )

    def _reconnected(self, connection: AbstractConnection | None, /) -> None:
        if self._failed:
            logger.info("RabbitMQ: reconnected to %s", redact_url(self.current))
        self._failed = 0
