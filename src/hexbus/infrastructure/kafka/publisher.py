"""The sending side of the Kafka adapter: records out, acks back.

Why a class of its own: admission (state, type, metadata, middleware, causation) is the
application's ``Admission``; what is left is Kafka's business only: encoding an admitted
event into a record, refusing one the broker would refuse for its size, sending it
through an idempotent ``acks=all`` producer, waiting for the acks within
``publish_timeout``, and replacing the producer once it is wedged.

``publish_many`` and concurrent publishes share producer batches (``linger_ms``) instead
of paying one round trip per event. The record key is the publish ``key`` (default: the
event id), so one key always lands on one partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from hexbus.application.dispatch import DispatchStats
from hexbus.application.publishing import Admitted
from hexbus.domain.errors import PublishError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import encode_record
from hexbus.infrastructure.kafka.topology import TopicNames, Topology

__all__ = ["KafkaPublisher", "Record"]

logger = logging.getLogger("hexbus.kafka")

#: hexbus's own headers stay well under this; only metadata can make them large.
_HEADER_ALLOWANCE = 1024


@dataclass(slots=True)
class Record:
    """One encoded event, ready for the producer."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event: DomainEvent


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A publish that timed out leaves its future behind; read its outcome so asyncio
    # does not log "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


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
    ) -> None:
        self.config = config
        self.codec = codec
        self.names = names
        self.topology = topology
        self.stats = stats
        self._producer: Any = None
        #: Set while ``_producer`` is usable; cleared while a wedged one is replaced.
        self._ready = asyncio.Event()
        self._running = False
        self._replacing: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- the producer ----------------------------------------------------------------
    def _new_producer(self) -> Any:
        cfg = self.config
        return AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers,
            client_id=f"hexbus-{cfg.service_name}",
            acks="all",
            enable_idempotence=True,
            linger_ms=cfg.linger_ms,
            max_batch_size=cfg.max_batch_size,
            max_request_size=cfg.max_request_size,
            request_timeout_ms=max(1000, int(cfg.publish_timeout * 1000)),
            **self.topology.security,  # TLS/SASL, shared by the bus's clients
        )

    async def start(self) -> None:
        producer = self._new_producer()
        self._producer = producer
        self._running = True
        await producer.start()
        self._ready.set()

    async def close(self) -> None:
        """Stop replacing, flush what is buffered, close the producer."""
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

    async def _ready_producer(self) -> Any:
        if not self._ready.is_set():
            await self._ready.wait()
        return self._producer

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
        event, metadata, key = admitted.event, admitted.metadata, admitted.key
        headers, value = encode_record(self.codec, event, metadata)
        key_bytes = (key if key is not None else str(event.event_id)).encode()
        limit = self.config.max_request_size
        # A cheap upper bound first; aiokafka's exact estimate only near the limit.
        rough = len(key_bytes) + len(value) + _HEADER_ALLOWANCE
        if metadata:
            rough += sum(len(k) + len(v) for k, v in metadata.items()) * 2
        if rough > limit and (
            size := DefaultRecordBatchBuilder.estimate_size_in_bytes(key_bytes, value, headers)
        ) > limit:
            raise PublishError(
                f"{event.event_type} event {event.event_id} is {size} bytes encoded, over the "
                f"Kafka max_request_size limit of {limit} bytes; it was not sent. Make the "
                "event smaller (store large payloads elsewhere and send a reference) or raise "
                "max_request_size together with the broker's message.max.bytes"
            )
        return Record(self.names.topic_for(type(event)), key_bytes, value, headers, event)

    async def _ensure_topics(self, topics: Iterable[str]) -> None:
        topology = self.topology
        missing = [t for t in topics if not topology.known(t)]
        if missing:
            await topology.ensure(missing)

    # -- sending -----------------------------------------------------------------------
    async def send(self, items: Sequence[Record]) -> None:
        """Send ``items``; return once all are acked (``acks=all``), else ``PublishError``."""
        timeout = self.config.publish_timeout
        futures: list[asyncio.Future[Any]] = []
        producer: Any = None
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_topics({r.topic for r in items})
                producer = await self._ready_producer()
                for r in items:
                    fut = await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                    fut.add_done_callback(_retrieve)
                    futures.append(fut)
                if len(futures) == 1:
                    await asyncio.shield(futures[0])
                else:
                    await asyncio.wait(futures)
        except TimeoutError:
            acked = sum(1 for f in futures if f.done() and not f.cancelled() and not f.exception())
            self.stats.published += acked
            if producer is not None:
                self._failed(producer)
            first = items[0]
            why = await self.topology.explain({r.topic for r in items}, within=min(1.0, timeout))
            raise PublishError(
                f"Kafka did not acknowledge {len(items) - acked} of {len(items)} event(s) "
                f"(first: {first.event.event_type} {first.event.event_id} to topic "
                f"{first.topic!r}) within publish_timeout={timeout}s"
                + (f": {why}" if why else "")
                + "; they may or may not have been written, publish again to be sure "
                "(consumers are at-least-once)"
            ) from None
        except (KafkaError, OSError) as exc:
            if producer is not None:
                self._failed(producer)
            first = items[0]
            raise PublishError(
                f"Kafka refused {first.event.event_type} event {first.event.event_id} "
                f"for topic {first.topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        failed = [(r, f.exception()) for r, f in zip(items, futures, strict=True) if f.exception()]
        self.stats.published += len(items) - len(failed)
        if failed:
            self._failed(producer)
            first, error = failed[0]
            raise PublishError(
                f"Kafka refused {len(failed)} of {len(items)} event(s); first: "
                f"{first.event.event_type} {first.event.event_id} to topic {first.topic!r}: "
                f"{type(error).__name__}: {error}"
            ) from error

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
                producer = await self._ready_producer()
                fut = await producer.send(topic, value, key=key, headers=headers)
                fut.add_done_callback(_retrieve)
                await asyncio.shield(fut)
        except (TimeoutError, KafkaError, OSError):
            if producer is not None:
                self._failed(producer)
            raise
