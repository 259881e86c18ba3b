"""The Kafka adapter: at-least-once, per-key ordered, one consumer group per subscription.

This module wires the parts and keeps the lifecycle; the work is elsewhere:

- admission (state, type, metadata, middleware, causation): ``application.publishing``;
- sending (records, acks, oversize refusal, producer replacement): ``publisher.py``;
- receiving (partition workers, outcomes, dead-letter records): ``consumer.py``, on the
  shared ``ConsumePipeline`` (lookup, handler, retry/dead-letter decision);
- names, topic creation and deletion, offsets and lag: ``topology.py``; reading and
  replaying dead letters: ``dead_letters.py``; the CloudEvents Kafka binding:
  ``marshal.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from aiokafka.errors import KafkaError

from hexbus.application.bus import BusState, EventBusBase, merged_config
from hexbus.application.consuming import ConsumePipeline
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import Subscription
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.domain.ports import DeadLetter, ReplayReport, SubscriptionLag
from hexbus.infrastructure.codec import CloudEventCodec, EncodedEvent
from hexbus.infrastructure.kafka.config import KafkaConfig, config_from_settings
from hexbus.infrastructure.kafka.consumer import GroupConsumer
from hexbus.infrastructure.kafka.dead_letters import read_dead_letters, replay_dead_letters
from hexbus.infrastructure.kafka.publisher import KafkaPublisher
from hexbus.infrastructure.kafka.topology import TopicNames, Topology, subscription_topics
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["KafkaEventBus"]

logger = logging.getLogger("hexbus.kafka")
_RUNNING = BusState.RUNNING


class KafkaEventBus(EventBusBase):
    """``EventBus`` over Apache Kafka (aiokafka).

    Capabilities: ``DeadLetterReader``, ``DeadLetterReplayer`` (through a replay topic
    per subscription, see ``dead_letters.py``), ``LagReporter``, ``SubscriptionAdmin``,
    ``Readiness``.
    """

    adapter_name = "kafka"

    def __init__(
        self,
        config: KafkaConfig | None = None,
        *,
        registry: EventRegistry = event_registry,
        **overrides: Any,
    ) -> None:
        super().__init__(registry=registry)
        self.config = cfg = merged_config(KafkaConfig, config, overrides)
        self.codec = CloudEventCodec(source=cfg.service_name, registry=registry)
        self.stats = DispatchStats()
        self.names = TopicNames(cfg.topic_prefix, cfg.service_name)
        self.topology = Topology(
            cfg.bootstrap_servers,
            partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            client_id=f"hexbus-{cfg.service_name}-admin",
            config=cfg,  # its TLS/SASL settings secure every client of the bus
        )
        self.publisher = KafkaPublisher(
            cfg,
            codec=self.codec,
            names=self.names,
            topology=self.topology,
            stats=self.stats,
            registry=registry,
        )
        self.pipeline = ConsumePipeline(
            self.subscriptions,
            policy=cfg.retry_policy,
            handler_timeout=cfg.handler_timeout,
            stats=self.stats,
            adapter="kafka",
        )
        #: The running consumer group of each durable subscription name.
        self.groups: dict[str, GroupConsumer] = {}
        self._regroup_lock = asyncio.Lock()
        self._regroups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: HexbusSettings, **overrides: Any) -> Self:
        """The bus the container builds from ``HEXBUS_*`` settings."""
        return cls(config_from_settings(settings), **overrides)

    # -- naming ----------------------------------------------------------------------
    def topic_for(self, cls: type[DomainEvent]) -> str:
        """The topic events of ``cls`` are published to (``kafka_topic`` or event type)."""
        return self.names.topic_for(cls)

    def dlq_topic(self, subscription_name: str) -> str:
        return self.names.dlq_topic(subscription_name)

    def replay_topic(self, subscription_name: str) -> str:
        return self.names.replay_topic(subscription_name)

    def group_id(self, subscription_name: str) -> str:
        return self.names.group_id(subscription_name)

    def _topics_of(self, name: str, subs: list[Subscription]) -> tuple[set[str], str | None]:
        """The event topics subscription ``name`` reads, and its regex (patterns)."""
        return subscription_topics(
            self.config.topic_prefix, subs, self.registry, own=[self.replay_topic(name)]
        )

    # -- lifecycle -------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            await self.topology.start()
            await self.publisher.start()
            for name, subs in self.subscriptions.by_name().items():
                await self._start_group(name, subs)
        except BaseException as exc:
            await self._shutdown(0.0)
            if isinstance(exc, KafkaError | OSError):  # what is wrong, naming the variable
                raise await self.topology.start_failure(exc) from exc
            raise

    async def _start_group(self, name: str, subs: list[Subscription]) -> None:
        cfg = self.config
        topics, pattern = self._topics_of(name, subs)
        dlq = self.dlq_topic(name)
        replay = self.replay_topic(name)
        await self.topology.ensure([*topics, dlq, replay])
        group = GroupConsumer(
            name,
            pipeline=self.pipeline,
            send_raw=self.publisher.send_raw,
            config=cfg,
            codec=self.codec,
            registry=self.registry,
            group_id=self.group_id(name),
            topics=topics,
            pattern=pattern,
            dlq_topic=dlq,
            replay_topic=replay,
            security=self.topology.security,
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
        await self.publisher.close()
        await self.topology.close()

    # Subscriptions changed on a running bus: restart that one group.
    def _subscribed(self, sub: Subscription) -> None:
        self._schedule_regroup(sub.name)

    def _unsubscribed(self, sub: Subscription) -> None:
        group = self.groups.get(sub.name)
        if group is not None and self.state is _RUNNING:
            group.halt()  # nothing more through the old table; the regroup stops it
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

    async def _settle(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait for scheduled regroups (subscription changes) to be applied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._regroups:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"subscription changes were not applied within {timeout}s "
                    "(consumer groups still stopping or starting)"
                )
            await asyncio.wait(set(self._regroups), timeout=remaining)

    # -- publishing ------------------------------------------------------------------
    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Send ``event``; return once Kafka acked it with ``acks=all``, else ``PublishError``."""
        admitted = await self.admission.admit(event, metadata, key, session)
        if admitted is not None:
            publisher = self.publisher
            await publisher.send_one(publisher.record(admitted))

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        """Send all events in one go (shared batches), return when all are acked."""
        admitted = await self.admission.admit_many(events, session)
        if admitted:
            publisher = self.publisher
            await publisher.send([publisher.draft(item) for item in admitted])

    async def send_encoded(self, items: Sequence[EncodedEvent]) -> None:
        """Send events encoded earlier (the outbox relay) as ``publish_many`` would, all at
        once; return when all are acked, else ``PublishError`` naming the ids. No
        admission, middleware or decoding: they were admitted when encoded."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        if items:
            publisher = self.publisher
            await publisher.send([publisher.encoded(item) for item in items])

    # -- capabilities: DeadLetterReader/Replayer, LagReporter, SubscriptionAdmin, Readiness
    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without consuming or committing) up to ``limit`` dead letters of
        ``subscription`` not replayed yet, oldest first; works on a stopped bus."""
        return await read_dead_letters(
            self.topology, self.names.own(subscription), limit=limit
        )

    async def replay_dead_letters(
        self,
        subscription: str,
        limit: int | None = None,
        *,
        event_type: str | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Send dead letters of ``subscription`` to its replay topic, which only its own
        consumer group reads (from attempt 1), and mark them replayed; a dead letter of a
        type not registered here is refused and kept. Needs a started bus (it writes)."""
        if self.state is not _RUNNING:
            self._raise_not_running()
        return await replay_dead_letters(
            self.topology,
            self.publisher.send_raw,
            self.registry,
            self.names.own(subscription),
            limit=limit,
            event_type=event_type,
            dry_run=dry_run,
        )

    async def lag(self, subscriptions: Iterable[str] | None = None) -> list[SubscriptionLag]:
        """Per subscription: end offsets minus the group's committed offsets, summed over
        partitions (detail per ``topic[partition]``), its replay topic included.

        Topics are those the group committed in, plus the topics this bus's own
        subscription of that name reads. ``waiting`` is ``None`` for a group that never
        committed and that this bus does not subscribe (nothing to measure against).
        Works on a stopped bus.
        """
        by_name = self.subscriptions.by_name()
        names = list(by_name) if subscriptions is None else list(subscriptions)
        from_start = self.config.auto_offset_reset == "earliest"
        found: list[SubscriptionLag] = []
        for name in names:
            subs = by_name.get(name)
            known = set()
            if subs:  # this bus subscribes it: the topics it reads count even uncommitted
                known = self._topics_of(name, subs)[0] | {self.replay_topic(name)}
            waiting, detail = await self.topology.group_lag(
                self.group_id(name), known, from_start=from_start
            )
            found.append(
                SubscriptionLag(name, self.subscription_address(name), waiting, None, detail)
            )
        return found

    def subscription_address(self, name: str) -> str:
        return f"consumer group {self.group_id(name)!r}"

    async def delete_subscription(self, name: str) -> list[str]:
        """Unsubscribe every handler of ``name``, wait until its group stopped, delete its
        dead-letter, replay and marker topics and (where the client can) its consumer group.

        Returns what is left on the broker. The event topics stay: other subscriptions
        and services read them.
        """
        for sub in self.subscriptions.by_name().get(name, []):
            self.unsubscribe(sub.target, sub.handler)
        if self._regroups:
            await self._settle(self.config.drain_timeout + 30.0)
        own = self.names.own(name)
        left = await self.topology.delete_topics([own.dlq, own.replay, own.replayed])
        left += await self.topology.delete_group(self.group_id(name))
        return left

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once subscription changes are applied, every group owns its partitions
        and knows its start offset in each (so ``auto_offset_reset="latest"`` misses
        nothing published after this returns). ``TimeoutError`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._settle(timeout)
        for group in list(self.groups.values()):
            try:
                await group.wait_live(max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise TimeoutError(
                    f"consumer group {group.group_id!r} did not get its partitions and start "
                    f"offsets within {timeout}s"
                ) from None
