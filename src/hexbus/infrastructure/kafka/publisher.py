"""The sending side of the Kafka adapter: records out, acks back.

Why a class of its own: admission (state, type, metadata, middleware, causation) is the
application's ``Admission``; what is left is Kafka's business only: encoding an admitted
event into a record, refusing one the broker would refuse for its size, sending it
through an idempotent ``acks=all`` producer, waiting for the acks within
``publish_timeout``, and replacing the producer once it is wedged.

``publish_many`` and concurrent publishes share producer batches instead of paying one
round trip per event: ``publish_many`` fills the producer's batches itself, and the
``publish()`` calls made in one event-loop iteration are gathered into one such fill
(``send_one``); aiokafka keeps one request in flight per broker and sends what is filled
meanwhile in the next (``linger_ms`` 0 by default: a lone publish leaves at once).

A lone publish (nothing queued or in flight for its partition's broker) is written by
the publisher itself as its own produce request (``_LoneRequest``) instead of waiting
for aiokafka's sender task to wake, drain and start a task for it: three event-loop
hops and ~30 µs of CPU less per publish, with aiokafka's own batch, sequence numbers,
response handling and retries (see ``_LoneRequest``).

The record key is the publish ``key``; without one the record has no key, so the client
spreads records over the partitions without hashing, and batches fill (a key per
event, its id, made every record 36 bytes larger and cost a pure-Python murmur2 hash).
One key always lands on one partition: per-key order.

``send_encoded`` puts events encoded earlier (the outbox relay's ``EncodedEvent``) on
the wire through the same records, acks and errors, without decoding them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.errors import KafkaError, RequestTimedOutError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import MessageBatch
from aiokafka.producer.sender import SendProduceReqHandler
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from hexbus.application.coalescing import Coalescer, Group
from hexbus.application.deadlines import Deadlines
from hexbus.application.dispatch import DispatchStats
from hexbus.application.publishing import Admitted
from hexbus.domain.errors import PublishError, UnknownEventTypeError
from hexbus.domain.events import EventRegistry
from hexbus.infrastructure.codec import CloudEventCodec, EncodedEvent
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import PlainHeaders, to_kafka_headers
from hexbus.infrastructure.kafka.topology import TopicNames, Topology

__all__ = ["KafkaPublisher", "Record"]

logger = logging.getLogger("hexbus.kafka")

#: hexbus's own headers stay well under this; only metadata can make them large.
_HEADER_ALLOWANCE = 1024
#: What ``AIOKafkaProducer`` partitions keyed records with (murmur2, as the Java client).
_PARTITIONER = DefaultPartitioner()
#: Records of one ``send`` finished and put into batches at a time (see ``_send_batches``).
_CHUNK = 1000
_NO_HEADERS: list[tuple[str, bytes]] = []  # a draft's, until finished; never appended to


@dataclass(slots=True)
class Record:
    """One encoded event, ready for the producer; type and id name it in errors."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    event_type: str
    event_id: str
    #: A draft (``KafkaPublisher.draft``): the event whose headers are still to be built,
    #: just before the record goes into a batch; ``None`` once ``headers`` are final.
    draft: Admitted | None = None


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A publish that timed out leaves its future behind; read its outcome so asyncio
    # does not log "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


def _acked(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _ids(records: Sequence[Record]) -> str:
    """The event ids of ``records`` for an error message (the first 20)."""
    text = ", ".join(r.event_id for r in records[:20])
    return text + (" ..." if len(records) > 20 else "")


class _Batches:
    """Fills producer batches with the records of one ``send`` (``_send_batches``)."""

    __slots__ = ("futures", "items", "producer")

    def __init__(
        self, producer: Any, items: Sequence[Record], futures: list[asyncio.Future[Any] | None]
    ) -> None:
        self.producer = producer
        self.items = items
        self.futures = futures

    async def fill(self, tp: tuple[str, int], indices: list[int]) -> None:
        """Append the records of one partition, in order, to producer batches and submit
        each when full (aiokafka queues one batch per partition at a time: order kept)."""
        producer, items = self.producer, self.items
        batch = producer.create_batch()
        members: list[int] = []
        for index in indices:
            r = items[index]
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                await self._submit(batch, tp, members)
                batch, members = producer.create_batch(), []
                # A new batch takes any first record (oversize ones were refused earlier).
                batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
            r.headers = _NO_HEADERS  # in the batch's buffer now: let the objects go
            members.append(index)
        if members:
            await self._submit(batch, tp, members)

    async def _submit(self, batch: Any, tp: tuple[str, int], members: list[int]) -> None:
        fut = await self.producer.send_batch(batch, tp[0], partition=tp[1])
        fut.add_done_callback(_retrieve)
        for index in members:
            self.futures[index] = fut


#: The aiokafka 0.14 internals ``_LoneRequest`` uses, by the object holding them.
_TXN_PARTS = (
    "has_pid", "sequence_number", "increment_sequence_number", "producer_id", "producer_epoch"
)
_SENDER_PARTS = ("_in_flight", "_muted_partitions")
_ACCUMULATOR_PARTS = (
    "_batches",
    "_pending_batches",
    "_waiter_future",
    "_batch_ttl",
    "_linger_time",
    "_exception",
    "_closed",
    "create_builder",
    "reenqueue",
)
_CLIENT_PARTS = ("_conns", "_request_timeout_ms", "cluster", "force_metadata_update")
_PRODUCER_PARTS = ("_partition", "_metadata")


def _writable(producer: Any) -> bool:
    """Whether ``producer`` can take a lone record from ``_LoneRequest``: an idempotent,
    non-transactional ``AIOKafkaProducer`` with the internals that class uses (aiokafka
    0.14's). Otherwise every record goes through ``producer.send``, as before."""
    sender = getattr(producer, "_sender", None)
    accumulator = getattr(producer, "_message_accumulator", None)
    txn = getattr(producer, "_txn_manager", None)
    client = getattr(producer, "client", None)
    return (
        txn is not None
        and getattr(txn, "transactional_id", "") is None
        and all(hasattr(txn, a) for a in _TXN_PARTS)
        and all(hasattr(sender, a) for a in _SENDER_PARTS)
        and all(hasattr(accumulator, a) for a in _ACCUMULATOR_PARTS)
        and all(hasattr(client, a) for a in _CLIENT_PARTS)
        and all(hasattr(producer, a) for a in _PRODUCER_PARTS)
    )


class _LoneRequest:
    """One record sent as its own produce request by the publisher, not the sender task.

    Why: with ``linger_ms`` 0, aiokafka's sender task sends each lone record three
    event-loop hops after ``producer.send`` queued it (the accumulator wakes the task's
    ``asyncio.wait``, which wakes the task, which starts a task per request) and wakes
    again when that task ends: about a fifth of a one-at-a-time publish's CPU. Here the
    request is written in the publishing call itself and its response settles the
    record in a callback.

    What is aiokafka's, unchanged: the batch (``MessageBatch``: encoding, compression),
    the idempotent producer id, epoch and sequence number (taken exactly as the
    accumulator takes them when it drains a batch), the request and the handling of
    its response (``SendProduceReqHandler``: acks, duplicate-sequence answers, errors).
    What this class does in the sender task's place: it marks the broker busy and the
    partition muted while the request is out (so the sender task sends nothing to that
    broker meanwhile, and one request per broker stays in flight, as aiokafka keeps
    it), closes the connection when no response comes within the request timeout (as
    ``AIOKafkaClient.send`` does), puts a batch that may be retried back into the
    accumulator after the backoff (the sender task then retries it with its sequence
    number: idempotence), and wakes the sender task when records queued meanwhile.

    ``start`` returns ``None``, having changed nothing, unless the record's partition
    has nothing queued, retried or in flight, its broker has no request in flight and
    a live connection, and the producer has its producer id: every other case goes
    through ``producer.send``.
    """

    __slots__ = (
        "accumulator", "batch", "client", "handler", "leader", "retries", "sender", "timer", "tp"
    )

    def __init__(self) -> None:
        self.timer: asyncio.TimerHandle | None = None

    def start(
        self, producer: Any, record: Record, retries: set[asyncio.Task[None]]
    ) -> asyncio.Future[Any] | None:
        """Write ``record`` as a produce request of its own: the future of its ack, or
        ``None`` (nothing done) where ``producer.send`` must take it."""
        accumulator, sender = producer._message_accumulator, producer._sender
        client, txn = producer.client, producer._txn_manager
        topic, key, value = record.topic, record.key, record.value
        if (
            accumulator._exception is not None
            or accumulator._closed
            or not txn.has_pid()
            or producer._metadata.partitions_for_topic(topic) is None
        ):
            return None
        tp = TopicPartition(topic, producer._partition(topic, None, key, value, key, value))
        if tp in accumulator._batches or tp in sender._muted_partitions:
            return None  # records ahead of this one for its partition: keep the order
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1 or leader in sender._in_flight:
            return None
        conn = client._conns.get((leader, ConnectionGroup.DEFAULT))
        if conn is None or not conn.connected():
            return None
        batch = MessageBatch(
            tp, accumulator.create_builder(), accumulator._batch_ttl, accumulator._linger_time
        )
        fut: asyncio.Future[Any] | None = batch.append(key, value, None, headers=record.headers)
        if fut is None:  # a batch takes any first record; never here
            return None
        # From here on, what MessageAccumulator._pop_batch and Sender.sender_routine do.
        sequence = txn.sequence_number(tp)
        txn.increment_sequence_number(tp, batch.record_count)
        batch.set_producer_state(
            producer_id=txn.producer_id, producer_epoch=txn.producer_epoch, base_sequence=sequence
        )
        batch.drain_ready()
        accumulator._pending_batches.add(batch)  # producer.flush() and stop() wait for it
        batch.future.add_done_callback(functools.partial(_unpend, accumulator, batch))
        sender._in_flight.add(leader)
        sender._muted_partitions.add(tp)
        self.accumulator, self.sender, self.client = accumulator, sender, client
        self.batch, self.tp, self.leader = batch, tp, leader
        self.handler = handler = SendProduceReqHandler(sender, {tp: batch})
        self.retries = retries
        try:
            conn.send(handler.create_request()).close()  # written now; its waiter unused
        except Exception as exc:  # noqa: BLE001 - e.g. the connection broke while writing
            self._settle(exc, None)
            return fut
        response: asyncio.Future[Any] = conn._requests[-1][2]
        self.timer = asyncio.get_running_loop().call_later(
            client._request_timeout_ms / 1000, self._expire, response, conn
        )
        response.add_done_callback(self._answered)
        return fut

    @staticmethod
    def _expire(response: asyncio.Future[Any], conn: Any) -> None:
        """No response within the request timeout: what ``AIOKafkaClient.send`` does,
        close the connection (it is renewed for the next request)."""
        if not response.done():
            response.cancel()
            conn.close(reason=CloseReason.CONNECTION_TIMEOUT)

    def _answered(self, response: asyncio.Future[Any]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if response.cancelled():
            self._settle(RequestTimedOutError(), None)
        elif (exc := response.exception()) is not None:
            self._settle(exc, None)
        else:
            self._settle(None, response.result())

    def _settle(self, exc: BaseException | None, response: Any) -> None:
        """What ``SendProduceReqHandler.do`` does with the outcome; then free the broker."""
        handler, batch = self.handler, self.batch
        try:
            if exc is None:
                handler.handle_response(response)  # acks, or marks the batch for a retry
            else:
                logger.warning("hexbus kafka: a produce request failed: %s", exc)
                if getattr(exc, "invalid_metadata", False):
                    self.client.force_metadata_update()
                if isinstance(exc, KafkaError) and handler._can_retry(exc, batch):
                    handler._to_reenqueue.append(batch)
                else:
                    batch.failure(exception=exc)
        except Exception as bug:  # never leave the broker marked in flight
            logger.exception("hexbus kafka: handling a produce response failed")
            handler._to_reenqueue.clear()
            batch.failure(exception=KafkaError(f"handling the produce response failed: {bug!r}"))
        if handler._to_reenqueue:
            task = asyncio.get_running_loop().create_task(self._retry())
            self.retries.add(task)
            task.add_done_callback(self.retries.discard)
        else:
            self._release()

    async def _retry(self) -> None:
        """Hand the batch back to the sender task after the backoff, as aiokafka does:
        it is sent again with the same sequence number (no duplicate is written)."""
        try:
            await asyncio.sleep(self.handler._default_backoff)
            for batch in self.handler._to_reenqueue:
                self.accumulator.reenqueue(batch)
            await self.client._maybe_wait_metadata()
        finally:
            self._release()

    def _release(self) -> None:
        """The broker and partition are free again; wake the sender task if records
        queued for them meanwhile (it was not told: it did not send this request)."""
        self.sender._in_flight.discard(self.leader)
        self.sender._muted_partitions.discard(self.tp)
        accumulator = self.accumulator
        if accumulator._batches and not accumulator._waiter_future.done():
            accumulator._waiter_future.set_result(None)


def _unpend(accumulator: Any, batch: Any, _fut: asyncio.Future[Any]) -> None:
    accumulator._pending_batches.discard(batch)


class KafkaPublisher:
    """Encodes admitted events and sends them; owns the producer and its replacement."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        codec: CloudEventCodec,
        names: TopicNames,
        topology: Topology,
        stats: DispatchStats,
        registry: EventRegistry,
    ) -> None:
        self.config = config
        self.codec = codec
        #: The headers of an event without metadata (``_finish``'s common case).
        self._plain_headers = PlainHeaders(codec.source)
        self.names = names
        self.registry = registry
        #: Topic of each event type ``send_encoded`` met (registered class or type name).
        self._topic_of_type: dict[str, str] = {}
        self.topology = topology
        self.stats = stats
        self._producer: Any = None
        #: ``_producer`` when ``_LoneRequest`` can write its lone records (``_writable``).
        self._lone_producer: Any = None
        #: ``_LoneRequest`` batches waiting to be handed back to the sender for a retry.
        self._retries: set[asyncio.Task[None]] = set()
        #: Set while ``_producer`` is usable; cleared while a wedged one is replaced.
        self._ready = asyncio.Event()
        self._running = False
        self._replacing: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Concurrent ``send_one`` calls, put into producer batches a group at a time.
        self._coalescer: Coalescer[Record] = Coalescer(
            self._submit, cancelled="the Kafka publish was cancelled (the bus stopped)"
        )
        #: Groups go into producer batches one at a time, in the order they formed.
        self._submitting = asyncio.Lock()
        #: ``publish_timeout`` of the single publishes (``send_one``).
        self._deadlines = Deadlines(config.publish_timeout)

    # -- the producer ----------------------------------------------------------------
    def _new_producer(self) -> Any:
        cfg = self.config
        return AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=f"hexbus-{cfg.service_name}",
            acks="all",
            enable_idempotence=True,
            max_request_size=cfg.max_request_size,
            request_timeout_ms=max(1000, int(cfg.publish_timeout * 1000)),
            **cfg.producer_options(),  # linger, batch size, compression
            **self.topology.security,  # TLS/SASL, shared by the bus's clients
        )

    async def start(self) -> None:
        producer = self._new_producer()
        self._producer = producer
        self._running = True
        await producer.start()
        self._lone_producer = producer if _writable(producer) else None
        self._ready.set()

    async def close(self) -> None:
        """Stop replacing, flush what is buffered, close the producer."""
        await self._coalescer.drain()  # single publishes still being put into batches
        self._running = False
        if self._replacing is not None:
            self._replacing.cancel()
            await asyncio.wait({self._replacing})
        if self._closing:
            await asyncio.wait(set(self._closing))
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()  # flushes what is still buffered
            except Exception as exc:  # noqa: BLE001 - closing anyway
                logger.warning("hexbus kafka: closing the producer: %s", exc)
        for task in self._retries:  # only left when the producer could not flush
            task.cancel()
        if self._retries:
            await asyncio.wait(set(self._retries))
        await self._deadlines.close()

    async def _running_producer(self) -> Any:
        """The producer once ready (not while a wedged one is replaced); ``PublishError``
        when the publisher was closed."""
        if not self._ready.is_set():
            await self._ready.wait()
        producer = self._producer
        if producer is None:
            raise PublishError("the Kafka producer is not running (the bus stopped)")
        return producer

    def _failed(self, producer: Any) -> None:
        """A send through ``producer`` failed: replace it (once) with a fresh one.

        Why: aiokafka's idempotent producer cannot recover from batches that expired
        while the broker was away: the broker then rejects every later batch with an
        out-of-order sequence number, forever. A new producer gets a new producer id and
        starts its sequences afresh; the failed publishes were reported as
        ``PublishError`` and are re-sent by their callers.
        """
        if producer is not self._producer or self._replacing is not None or not self._running:
            return
        self._ready.clear()
        self._replacing = asyncio.get_running_loop().create_task(self._replace(producer))

    async def _replace(self, old: Any) -> None:
        logger.warning("hexbus kafka: a publish failed; replacing the producer")
        closing = asyncio.get_running_loop().create_task(self._close_quietly(old))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        failures = 0
        try:
            while self._running:
                producer = self._new_producer()
                try:
                    await producer.start()
                except Exception as exc:  # noqa: BLE001 - broker still away: try again
                    failures += 1
                    logger.warning("hexbus kafka: starting a new producer failed: %s", exc)
                    await self._close_quietly(producer)
                    await asyncio.sleep(min(5.0, 0.2 * failures))
                    continue
                self._producer = producer
                self._lone_producer = producer if _writable(producer) else None
                return
        finally:
            self._replacing = None
            self._ready.set()

    async def _close_quietly(self, producer: Any) -> None:
        try:
            async with asyncio.timeout(max(5.0, self.config.publish_timeout * 2)):
                await producer.stop()
        except BaseException as exc:
            logger.debug("hexbus kafka: closing a replaced producer: %r", exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    # -- records -----------------------------------------------------------------------
    def record(self, admitted: Admitted) -> Record:
        """The record of an admitted event; ``PublishError`` if Kafka would refuse its size."""
        record = self.draft(admitted)
        self._finish(record)
        return record

    def draft(self, admitted: Admitted) -> Record:
        """The record of an admitted event with its headers left to build (``_finish``);
        ``PublishError`` if Kafka would refuse its size.

        Why drafts: ``publish_many`` checks every event before the first is sent (nothing
        goes out if one is too large), and that needs each body, not each header list.
        The headers (the time, the attributes, the header pairs: over half the encoding)
        are then built a chunk at a time while earlier chunks are on the wire. An event
        with metadata (which can be refused, and which counts toward the size) or near
        the size limit is finished here, so every refusal still comes before any send.
        """
        event, metadata, key = admitted.event, admitted.metadata, admitted.key
        codec = self.codec
        event_id = codec.wire_id(event)  # the id on the wire (a forwarded event's own)
        value = codec.body(event)
        key_bytes = None if key is None else key.encode()
        rough = len(value) + _HEADER_ALLOWANCE + (0 if key_bytes is None else len(key_bytes))
        record = Record(
            self.names.topic_for(event.__class__),
            key_bytes,
            value,
            _NO_HEADERS,
            event.event_type,
            event_id,
            admitted,
        )
        if metadata:
            rough += sum(len(k) + len(v) for k, v in metadata.items()) * 2
        elif rough <= self.config.max_request_size:
            return record
        self._finish(record)
        return self._checked(record, rough)

    async def _send_record(self, producer: Any, r: Record) -> asyncio.Future[Any]:
        """``producer.send`` of one record (a draft's headers built first): the future
        of its ack, once it is in a batch. A lone record is written at once instead
        (``_LoneRequest``) where it can be."""
        self._finish(r)
        if producer is self._lone_producer:
            lone = _LoneRequest().start(producer, r, self._retries)
            if lone is not None:
                return lone
        fut: asyncio.Future[Any] = await producer.send(
            r.topic, r.value, key=r.key, headers=r.headers
        )
        return fut

    def _finish(self, record: Record) -> None:
        """Build a draft's headers (see ``draft``)."""
        admitted = record.draft
        if admitted is not None:
            if admitted.metadata:
                record.headers = to_kafka_headers(
                    self.codec.attributes(admitted.event, admitted.metadata, record.event_id)
                )
            else:
                record.headers = self._plain_headers(admitted.event, record.event_id)
            record.draft = None

    def encoded(self, item: EncodedEvent) -> Record:
        """The record of an event encoded earlier: the same binding, key and topic as
        ``record`` gives the event it was encoded from; nothing is decoded."""
        attributes = item.attributes
        event_type = attributes["type"]
        key_bytes = None if item.key is None else item.key.encode()
        headers = to_kafka_headers(attributes)
        rough = len(item.data) + (0 if key_bytes is None else len(key_bytes))
        rough += sum(len(name) + len(value) for name, value in headers) + _HEADER_ALLOWANCE
        record = Record(
            self.topic_for_type(event_type),
            key_bytes,
            item.data,
            headers,
            event_type,
            attributes["id"],
        )
        return self._checked(record, rough)

    def topic_for_type(self, event_type: str) -> str:
        """The topic of events of ``event_type``: its registered class's (which may name
        a ``kafka_topic``), else the type itself, as for a class without one."""
        topic = self._topic_of_type.get(event_type)
        if topic is None:
            try:
                topic = self.names.topic_for(self.registry.get(event_type))
            except UnknownEventTypeError:
                topic = self.names.prefix + event_type
            self._topic_of_type[event_type] = topic
        return topic

    def _checked(self, record: Record, rough: int) -> Record:
        """``record``, or ``PublishError`` when Kafka would refuse its size (a cheap upper
        bound ``rough`` first; aiokafka's exact estimate only near the limit)."""
        limit = self.config.max_request_size
        if rough > limit and (
            size := DefaultRecordBatchBuilder.estimate_size_in_bytes(
                record.key, record.value, record.headers
            )
        ) > limit:
            raise PublishError(
                f"{record.event_type} event {record.event_id} is {size} bytes encoded, over "
                f"the Kafka max_request_size limit of {limit} bytes; it was not sent. Make "
                "the event smaller (store large payloads elsewhere and send a reference) or "
                "raise max_request_size together with the broker's message.max.bytes"
            )
        return record

    async def _ensure_topics(self, topics: Iterable[str]) -> None:
        topology = self.topology
        missing = [t for t in topics if not topology.known(t)]
        if missing:
            await topology.ensure(missing)

    # -- sending -----------------------------------------------------------------------
    async def send_one(self, record: Record) -> None:
        """Send one record; return once it is acked (``acks=all``), else ``PublishError``.

        Concurrent publishes coalesce: the ``send_one`` calls of one event-loop iteration
        join one group, which a task puts into producer batches together (``_send_batches``,
        ``publish_many``'s path) instead of each paying ``producer.send``'s per-record
        work (a coroutine, a size estimate, a future per record): thousands of concurrent
        ``publish()`` calls cost about what one ``publish_many`` of them does. A publish
        with nothing queued ahead of it (``Coalescer.direct``: one at a time, or a steady
        stream whose earlier records only await their acks) skips the group and goes
        straight to the producer. Each caller waits for its own record's ack and is told
        about its own record only.
        """
        group: Group[Record] | None = None
        producer: Any = None
        with self._coalescer.calling():
            # The shared watchdog, not an ``asyncio.timeout`` per publish (~4 µs less).
            deadline = self._deadlines.start(asyncio.current_task())
            try:
                if not self.topology.known(record.topic):
                    await self._ensure_topics((record.topic,))
                if self._coalescer.direct():
                    # Nothing queued ahead (no group forming or being written): no group
                    # to wait for, straight to the producer; under the same lock as the
                    # groups, so a publish made meanwhile cannot overtake it.
                    async with self._submitting:
                        producer = await self._running_producer()
                        fut = await self._send_record(producer, record)
                    # Awaited directly, not through ``asyncio.shield``: one event-loop
                    # step less. A timeout cancels the record's future, which is
                    # harmless: aiokafka settles only the futures not done yet.
                    await fut
                else:
                    group, waiter = self._coalescer.join(record)
                    await waiter
            except asyncio.CancelledError:
                if not deadline.timed_out():
                    raise
            except (KafkaError, OSError) as exc:
                if producer is not None:  # the direct path (a group tells its producer itself)
                    self._failed(producer)
                raise PublishError(
                    f"Kafka refused {record.event_type} event {record.event_id} for topic "
                    f"{record.topic!r}: {type(exc).__name__}: {exc}; not sent or not "
                    "acknowledged"
                ) from exc
            finally:
                deadline.end()
            if deadline.expired:
                if group is not None and group.state is not None:
                    producer = group.state
                if producer is not None:
                    self._failed(producer)
                raise await self._unacknowledged(record)
        self.stats.published += 1

    async def _unacknowledged(self, record: Record) -> PublishError:
        """The error of a publish that timed out, with what the topology can tell of why."""
        timeout = self.config.publish_timeout
        why = await self.topology.explain({record.topic}, within=min(1.0, timeout))
        return PublishError(
            f"Kafka did not acknowledge {record.event_type} event {record.event_id} "
            f"(topic {record.topic!r}) within publish_timeout={timeout}s"
            + (f": {why}" if why else "")
            + "; it may or may not have been written, publish again to be sure "
            "(consumers are at-least-once)"
        )

    async def _submit(self, group: Group[Record]) -> None:
        """Put a group of single publishes into producer batches (the coalescer's
        ``flush``); each member is settled as its batch is acknowledged."""
        producer: Any = None
        records = group.items
        futures: list[asyncio.Future[Any] | None] = [None] * len(records)
        try:
            async with self._submitting:
                producer = group.state = await self._running_producer()
                if len(records) == 1:
                    futures[0] = await self._send_record(producer, records[0])
                else:
                    await self._send_batches(producer, records, futures)
        except (KafkaError, OSError):
            if producer is not None:
                self._failed(producer)
            raise
        members: dict[asyncio.Future[Any], list[int]] = {}
        for index, fut in enumerate(futures):
            if fut is not None:
                members.setdefault(fut, []).append(index)
        for fut, indices in members.items():
            fut.add_done_callback(functools.partial(self._acked_batch, group, indices))

    def _acked_batch(
        self, group: Group[Record], members: list[int], fut: asyncio.Future[Any]
    ) -> None:
        """A batch of a group was acknowledged, or failed: tell its members."""
        outcome = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        for index in members:
            group.settle(index, outcome)
        if outcome is not None:
            self._failed(group.state)

    async def send(self, items: Sequence[Record]) -> None:
        """Send ``items``; return once all are acked (``acks=all``), else ``PublishError``.

        One record goes through ``producer.send`` (concurrent publishes meet in the
        producer's batches); several are put into batches here (``_fill``), one per
        partition at a time, which skips the producer's per-record bookkeeping (a
        coroutine, a size estimate, a future per record): ``publish_many`` and
        ``send_encoded`` cost less than half the CPU per event. The batches are the
        producer's own, sent, retried and acknowledged exactly as its others.
        """
        timeout = self.config.publish_timeout
        #: Per item, the future of its record's (or its batch's) ack, once it has one.
        futures: list[asyncio.Future[Any] | None] = [None] * len(items)
        producer: Any = None
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_topics({r.topic for r in items})
                producer = await self._running_producer()
                if len(items) == 1:
                    r = items[0]
                    fut = await self._send_record(producer, r)
                    fut.add_done_callback(_retrieve)
                    futures[0] = fut
                    await asyncio.shield(fut)
                else:
                    await self._send_batches(producer, items, futures)
                    await asyncio.wait({f for f in futures if f is not None})
        except TimeoutError:
            acked = [f is not None and _acked(f) for f in futures]
            self.stats.published += sum(acked)
            if producer is not None:
                self._failed(producer)
            unacked = [r for r, ok in zip(items, acked, strict=True) if not ok]
            first = unacked[0]
            why = await self.topology.explain({r.topic for r in items}, within=min(1.0, timeout))
            raise PublishError(
                f"Kafka did not acknowledge {len(unacked)} of {len(items)} event(s) "
                f"(first: {first.event_type} {first.event_id} to topic "
                f"{first.topic!r}) within publish_timeout={timeout}s"
                + (f": {why}" if why else "")
                + "; they may or may not have been written, publish again to be sure "
                f"(consumers are at-least-once); unacknowledged event ids: {_ids(unacked)}"
            ) from None
        except (KafkaError, OSError) as exc:
            acked = [f is not None and _acked(f) for f in futures]
            self.stats.published += sum(acked)
            if producer is not None:
                self._failed(producer)
            unacked = [r for r, ok in zip(items, acked, strict=True) if not ok]
            first = unacked[0] if unacked else items[0]
            raise PublishError(
                f"Kafka refused {first.event_type} event {first.event_id} "
                f"for topic {first.topic!r}: {type(exc).__name__}: {exc}; "
                f"not sent or not acknowledged: {_ids(unacked)}"
            ) from exc
        failed = [
            (r, error)
            for r, f in zip(items, futures, strict=True)
            if f is not None and (error := f.exception()) is not None
        ]
        self.stats.published += len(items) - len(failed)
        if failed:
            self._failed(producer)
            first, error = failed[0]
            raise PublishError(
                f"Kafka refused {len(failed)} of {len(items)} event(s); first: "
                f"{first.event_type} {first.event_id} to topic {first.topic!r}: "
                f"{type(error).__name__}: {error}; refused event ids: "
                f"{_ids([r for r, _ in failed])}"
            ) from error

    async def _send_batches(
        self,
        producer: Any,
        items: Sequence[Record],
        futures: list[asyncio.Future[Any] | None],
    ) -> None:
        """Partition ``items`` as ``producer.send`` would and hand each partition's
        records to ``_fill``; ``futures[i]`` gets the ack future of item ``i``'s batch.

        A keyed record goes where the producer's default partitioner (murmur2 of the
        key) puts it, so one key meets one partition whichever way it was sent (per-key
        order). Keyless records are dealt round robin over the available partitions.
        """
        cluster = producer.client.cluster
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        for topic in {r.topic for r in items}:
            await producer.partitions_for(topic)  # waits for the topic's metadata
            every = list(cluster.partitions_for_topic(topic))
            available = list(cluster.available_partitions_for_topic(topic)) or every
            partitions[topic] = (every, available)
        turn = random.randrange(1024)  # where the round robin starts: spread the load
        batches = _Batches(producer, items, futures)
        finish = self._finish
        # A chunk at a time: its drafts are finished and its batches queued, and the
        # producer's sender puts them on the wire while the next chunk is built, instead
        # of the broker waiting for every record to be built first. Each partition's
        # batches still queue in order (a chunk's fill waits for the one before).
        for start in range(0, len(items), _CHUNK):
            by_partition: dict[tuple[str, int], list[int]] = {}
            for index in range(start, min(start + _CHUNK, len(items))):
                r = items[index]
                if r.draft is not None:
                    finish(r)
                every, available = partitions[r.topic]
                if r.key is None:
                    partition = available[(turn + index) % len(available)]
                else:
                    partition = _PARTITIONER(r.key, every, available)
                by_partition.setdefault((r.topic, partition), []).append(index)
            outcomes = await asyncio.gather(
                *(batches.fill(tp, indices) for tp, indices in by_partition.items()),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Write one record as is (dead letters) and wait for the ack."""
        if self._producer is None:
            raise PublishError("the Kafka producer is not running")
        producer: Any = None
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                await self._ensure_topics([topic])
                producer = await self._running_producer()
                fut = await producer.send(topic, value, key=key, headers=headers)
                fut.add_done_callback(_retrieve)
                await asyncio.shield(fut)
        except (TimeoutError, KafkaError, OSError):
            if producer is not None:
                self._failed(producer)
            raise
