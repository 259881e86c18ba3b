"""The Kafka adapter: at-least-once, per-key ordered, one consumer group per subscription.

Publishing: an idempotent ``acks=all`` producer; ``publish`` returns once every in-sync
replica has the record. ``publish_many`` and concurrent publishes share producer
batches (``linger_ms``) instead of paying one round trip per event. The record key is
the publish ``key`` (default: the event id), so one key always lands on one partition.

Consuming: see ``consumer.py``. Topics: see ``topics.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from hexbus.application.bus import BusState, EventBusBase, merged_config, validate_metadata
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import Subscription
from hexbus.domain.errors import ConfigurationError, PublishError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.dead_letters import ATTEMPTS_HEADER as DLQ_ATTEMPTS_HEADER
from hexbus.infrastructure.dead_letters import ERROR_HEADER as DLQ_ERROR_HEADER
from hexbus.infrastructure.dead_letters import HANDLER_HEADER as DLQ_HANDLER_HEADER
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.consumer import FAILURE_HEADERS, GroupConsumer
from hexbus.infrastructure.kafka.marshal import encode_record
from hexbus.infrastructure.kafka.topics import (
    TopicManager,
    dlq_topic,
    event_topic,
    group_id,
    subscription_topics,
)
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["DeadLetter", "KafkaEventBus", "KafkaStats"]

logger = logging.getLogger("hexbus.kafka")
_RUNNING = BusState.RUNNING


@dataclass(slots=True)
class KafkaStats(DispatchStats):
    """``published``/``handled``/``failed`` as on every bus, plus retries and dead letters."""

    retried: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic: the original bytes plus why it failed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def event_id(self) -> str | None:
        """The CloudEvents ``id`` of the original record (``None`` for foreign junk)."""
        return self.header("ce_id")

    @property
    def error(self) -> str | None:
        return self.header(DLQ_ERROR_HEADER)

    @property
    def attempts(self) -> int:
        return int(self.header(DLQ_ATTEMPTS_HEADER) or 0)

    @property
    def handler(self) -> str | None:
        return self.header(DLQ_HANDLER_HEADER)

    @property
    def original_topic(self) -> str | None:
        return self.header("x-hexbus-original-topic")

    @property
    def original_partition(self) -> int | None:
        value = self.header("x-hexbus-original-partition")
        return None if value is None else int(value)

    @property
    def original_offset(self) -> int | None:
        value = self.header("x-hexbus-original-offset")
        return None if value is None else int(value)

    @property
    def original_headers(self) -> tuple[tuple[str, bytes], ...]:
        return tuple((k, v) for k, v in self.headers if k not in FAILURE_HEADERS)


@dataclass(slots=True)
class _Prepared:
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


class KafkaEventBus(EventBusBase):
    """``EventBus`` over Apache Kafka (aiokafka)."""

    adapter_name = "kafka"

    def __init__(
        self,
        config: KafkaConfig | None = None,
        *,
        registry: EventRegistry = event_registry,
        **overrides: Any,
    ) -> None:
        super().__init__(registry=registry)
        self.config = merged_config(KafkaConfig, config, overrides)
        self.codec = CloudEventCodec(source=self.config.service_name, registry=registry)
        self.stats = KafkaStats()
        self.groups: dict[str, GroupConsumer] = {}
        self._topics = TopicManager(
            self.config.bootstrap_servers,
            partitions=self.config.partitions,
            replication_factor=self.config.replication_factor,
            client_id=f"hexbus-{self.config.service_name}-admin",
        )
        self._producer: Any = None
        #: Set while ``_producer`` is usable; cleared while a wedged one is replaced.
        self._producer_ready = asyncio.Event()
        self._replacing: asyncio.Task[None] | None = None
        self._closing_producers: set[asyncio.Task[None]] = set()
        self._topic_of: dict[type[DomainEvent], str] = {}
        self._regroup_lock = asyncio.Lock()
        self._regroups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: HexbusSettings, **overrides: Any) -> KafkaEventBus:
        """The bus the container builds from ``HEXBUS_*`` settings."""
        config = KafkaConfig(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic_prefix=settings.kafka_topic_prefix,
            service_name=settings.service_name,
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            max_attempts=settings.max_attempts,
            handler_timeout=settings.handler_timeout,
            publish_timeout=settings.publish_timeout,
            # In-process back-off: the first delay, doubling, capped at the longest.
            retry_backoff=settings.retry_delays[0],
            retry_backoff_max=max(settings.retry_delays),
            drain_timeout=settings.drain_timeout,
        )
        return cls(config, **overrides)

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
        )

    async def _ready_producer(self) -> Any:
        if not self._producer_ready.is_set():
            await self._producer_ready.wait()
        return self._producer

    def _producer_failed(self, producer: Any) -> None:
        """A send through ``producer`` failed: replace it (once) with a fresh one.

        Why: aiokafka's idempotent producer cannot recover from batches that expired
        while the broker was away: the broker then rejects every later batch with an
        out-of-order sequence number, forever. A new producer gets a new producer id and
        starts its sequences afresh; the failed publishes were reported as
        ``PublishError`` and are re-sent by their callers.
        """
        if producer is not self._producer or self._replacing is not None:
            return
        if self.state is not _RUNNING:
            return
        self._producer_ready.clear()
        self._replacing = asyncio.get_running_loop().create_task(self._replace_producer(producer))

    async def _replace_producer(self, old: Any) -> None:
        logger.warning("hexbus kafka: a publish failed; replacing the producer")
        closing = asyncio.get_running_loop().create_task(self._close_quietly(old))
        self._closing_producers.add(closing)
        closing.add_done_callback(self._closing_producers.discard)
        failures = 0
        try:
            while self.state is _RUNNING:
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
            self._producer_ready.set()

    async def _close_quietly(self, producer: Any) -> None:
        try:
            async with asyncio.timeout(max(5.0, self.config.publish_timeout * 2)):
                await producer.stop()
        except BaseException as exc:
            logger.debug("hexbus kafka: closing a replaced producer: %r", exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    # -- naming ----------------------------------------------------------------------
    def topic_for(self, cls: type[DomainEvent]) -> str:
        topic = self._topic_of.get(cls)
        if topic is None:
            topic = self._topic_of[cls] = event_topic(self.config.topic_prefix, cls)
        return topic

    def dlq_topic(self, subscription_name: str) -> str:
        cfg = self.config
        return dlq_topic(cfg.topic_prefix, cfg.service_name, subscription_name)

    def group_id(self, subscription_name: str) -> str:
        return group_id(self.config.service_name, subscription_name)

    # -- lifecycle -------------------------------------------------------------------
    async def _start(self) -> None:
        cfg = self.config
        try:
            await self._topics.start()
            producer = self._new_producer()
            self._producer = producer
            await producer.start()
            self._producer_ready.set()
            for name, subs in self.subscriptions.by_name().items():
                await self._start_group(name, subs)
        except BaseException as exc:
            await self._shutdown(0.0)
            if isinstance(exc, KafkaError | OSError):
                raise ConfigurationError(
                    f"cannot start the Kafka event bus at {cfg.bootstrap_servers!r}: {exc}"
                ) from exc
            raise

    async def _start_group(self, name: str, subs: list[Subscription]) -> None:
        cfg = self.config
        topics, pattern = subscription_topics(cfg.topic_prefix, subs, self.registry)
        dlq = self.dlq_topic(name)
        await self._topics.ensure([*topics, dlq])
        group = GroupConsumer(
            self,
            name,
            list(subs),
            group_id=self.group_id(name),
            topics=topics,
            pattern=pattern,
            dlq_topic=dlq,
        )
        self.groups[name] = group
        await group.start()

    async def _stop(self) -> None:
        await self._shutdown(self.config.drain_timeout)

    async def _shutdown(self, drain_timeout: float) -> None:
        if self._regroups:
            await asyncio.wait(set(self._regroups))
        groups = list(self.groups.values())
        self.groups.clear()
        if groups:
            await asyncio.gather(*(g.stop(drain_timeout) for g in groups))
        if self._replacing is not None:
            self._replacing.cancel()
            await asyncio.wait({self._replacing})
        if self._closing_producers:
            await asyncio.wait(set(self._closing_producers))
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()  # flushes what is still buffered
            except Exception as exc:  # noqa: BLE001 - closing anyway
                logger.warning("hexbus kafka: closing the producer: %s", exc)
        await self._topics.close()

    # Subscriptions changed on a running bus: restart that one group.
    def _subscribed(self, sub: Subscription) -> None:
        self._schedule_regroup(sub.name)

    def _unsubscribed(self, sub: Subscription) -> None:
        self._schedule_regroup(sub.name)

    def _schedule_regroup(self, name: str) -> None:
        if self.state is not _RUNNING:
            return
        task = asyncio.get_running_loop().create_task(self._regroup(name))
        self._regroups.add(task)
        task.add_done_callback(self._regroups.discard)

    async def _regroup(self, name: str) -> None:
        async with self._regroup_lock:
            old = self.groups.pop(name, None)
            if old is not None:
                await old.stop(self.config.drain_timeout)
            subs = self.subscriptions.by_name().get(name)
            if subs and self.state is _RUNNING:
                try:
                    await self._start_group(name, subs)
                except Exception:
                    logger.exception("hexbus kafka: cannot start the consumer group of %s", name)

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until subscription changes are applied and every group got partitions.

        Not needed for correctness (new groups start at the earliest offset); tests
        that need the group to own its partitions before they act call it.
        """
        deadline = time.monotonic() + timeout
        while self._regroups:
            await asyncio.wait(set(self._regroups), timeout=max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                break
        for group in list(self.groups.values()):
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await group.assignment_seen.wait()
            except TimeoutError:
                raise TimeoutError(
                    f"consumer group {group.group_id} got no partitions within {timeout}s"
                ) from None

    # -- publishing ------------------------------------------------------------------
    async def _prepare(
        self, event: DomainEvent, metadata: Mapping[str, str] | None, key: str | None
    ) -> _Prepared | None:
        """Checks and middleware (``None``: dropped), then the record to send."""
        self._check_publish(event)
        if self.middleware.items:
            changed = await self.middleware.apply(event)
            if changed is None:
                return None
            event = changed
        return self._record(event, validate_metadata(metadata) if metadata else None, key)

    def _record(
        self, event: DomainEvent, metadata: Mapping[str, str] | None, key: str | None
    ) -> _Prepared:
        headers, value = encode_record(self.codec, event, metadata)
        key_bytes = (key if key is not None else str(event.event_id)).encode()
        limit = self.config.max_request_size
        # A cheap upper bound first (hexbus's own headers stay well under 1 KiB; only
        # metadata can make them large); aiokafka's exact estimate only near the limit.
        rough = len(key_bytes) + len(value) + 1024
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
        return _Prepared(self.topic_for(type(event)), key_bytes, value, headers, event)

    async def _ensure_topics(self, topics: Iterable[str]) -> None:
        missing = [t for t in topics if not self._topics.known(t)]
        if missing:
            await self._topics.ensure(missing)

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Send ``event``; return once Kafka acked it with ``acks=all``, else ``PublishError``."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        prepared = await self._prepare(event, metadata, key)
        if prepared is None:
            return
        await self._send_all([prepared])

    async def publish_many(self, events: Iterable[DomainEvent]) -> None:
        """Send all events in one go (shared batches), return when all are acked."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        if self.middleware.items:
            prepared = [p for e in list(events) if (p := await self._prepare(e, None, None))]
        else:  # no await per event: encoding is synchronous
            prepared = []
            for event in list(events):
                self._check_publish(event)
                prepared.append(self._record(event, None, None))
        if prepared:
            await self._send_all(prepared)

    async def _send_all(self, items: Sequence[_Prepared]) -> None:
        timeout = self.config.publish_timeout
        futures: list[asyncio.Future[Any]] = []
        producer: Any = None
        try:
            async with asyncio.timeout(timeout):
                await self._ensure_topics({p.topic for p in items})
                producer = await self._ready_producer()
                for p in items:
                    fut = await producer.send(p.topic, p.value, key=p.key, headers=p.headers)
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
                self._producer_failed(producer)
            raise PublishError(
                f"Kafka did not acknowledge {len(items) - acked} of {len(items)} event(s) "
                f"(first: {items[0].event.event_type} {items[0].event.event_id} to topic "
                f"{items[0].topic!r}) within publish_timeout={timeout}s; they may or may not "
                "have been written, publish again to be sure (consumers are at-least-once)"
            ) from None
        except (KafkaError, OSError) as exc:
            if producer is not None:
                self._producer_failed(producer)
            raise PublishError(
                f"Kafka refused {items[0].event.event_type} event {items[0].event.event_id} "
                f"for topic {items[0].topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        failed = [(p, f.exception()) for p, f in zip(items, futures, strict=True) if f.exception()]
        self.stats.published += len(items) - len(failed)
        if failed:
            self._producer_failed(producer)
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
        """Write one record as is (dead letters, replays) and wait for the ack."""
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
                self._producer_failed(producer)
            raise

    # -- dead letters ----------------------------------------------------------------
    async def dead_letters(
        self, subscription_name: str, limit: int = 100, *, timeout: float = 10.0  # noqa: ASYNC109
    ) -> list[DeadLetter]:
        """Read (without consuming or committing) the dead letters of one subscription."""
        topic = self.dlq_topic(subscription_name)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            client_id=f"hexbus-{self.config.service_name}-dlq-reader",
        )
        await consumer.start()
        out: list[DeadLetter] = []
        try:
            if topic not in await consumer.topics():
                return out
            # aiokafka keeps partition metadata only for topics it was asked about.
            partitions = await consumer._client._wait_on_metadata(topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return out
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout
            while len(out) < limit and time.monotonic() < deadline:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batches = await consumer.getmany(timeout_ms=200, max_records=limit - len(out))
                for records in batches.values():
                    out.extend(
                        DeadLetter(
                            r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())
                        )
                        for r in records
                    )
        finally:
            await consumer.stop()
        out.sort(key=lambda d: (d.partition, d.offset))
        return out[:limit]
