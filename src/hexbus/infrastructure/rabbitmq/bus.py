"""The RabbitMQ adapter: durable, at-least-once, retried with back-off, dead-lettered.

This class wires the parts and owns the lifecycle; each part is a module of its own:

- ``topology.py``: one durable topic exchange (routing key = event type); per (service,
  subscription name) a durable quorum queue bound with the subscription's event types /
  patterns, back-off tiers that dead-letter back into it, and a DLQ;
- ``publisher.py``: persistent messages, publisher confirms, ``PublishError`` on a nack,
  a timeout or a broker that stays away;
- ``consumer.py``: decode → ``ConsumePipeline.deliver`` → ack, retry tier or DLQ;
- ``dead_letters.py``: reading and replaying a subscription's DLQ;
- ``marshal.py``: the CloudEvents AMQP binding.

Publishing runs the shared admission (``self.admission``) and then, RabbitMQ's own
step, waits for subscription changes still being applied, so a subscribe followed by a
publish finds the binding in place. No ``mandatory`` flag and no alternate exchange: an
event nobody subscribes to is not an error (as on the memory adapter); the broker
confirms it and drops it. Subscriptions exist as durable queues from the first
``start()`` of the consuming service on, so events published while it is down are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import aiormq
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection

from hexbus.application.bus import BusState, EventBusBase, merged_config
from hexbus.application.consuming import ConsumePipeline, error_text
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import Subscription
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent, EventRegistry, event_registry
from hexbus.domain.ports import DeadLetter, ReplayReport, SubscriptionLag
from hexbus.infrastructure.codec import CloudEventCodec, EncodedEvent
from hexbus.infrastructure.rabbitmq import dead_letters, topology
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig, config_from_settings
from hexbus.infrastructure.rabbitmq.consumer import ConsumerConnection, Consumers
from hexbus.infrastructure.rabbitmq.publisher import Publisher, Unreachable, connect_first, mask
from hexbus.infrastructure.settings import redact_url

if TYPE_CHECKING:
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["RabbitMQEventBus"]

_AUTH_ERRORS = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
)


class RabbitMQEventBus(EventBusBase):
    """``EventBus`` over RabbitMQ (aio-pika, robust connections, publisher confirms).

    Also a ``DeadLetterReader``, ``DeadLetterReplayer``, ``LagReporter``,
    ``SubscriptionAdmin`` and ``Readiness`` (``hexbus.domain.ports``).
    """

    adapter_name = "rabbitmq"

    def __init__(
        self,
        config: RabbitMQConfig | None = None,
        *,
        registry: EventRegistry = event_registry,
        **overrides: Any,
    ) -> None:
        super().__init__(registry=registry)
        self.config = cfg = merged_config(RabbitMQConfig, config, overrides)
        self.codec = CloudEventCodec(source=cfg.service_name, registry=registry)
        self.stats = DispatchStats()
        self.pipeline = ConsumePipeline(
            self.subscriptions,
            policy=cfg.retry_policy,
            handler_timeout=cfg.handler_timeout,
            stats=self.stats,
            adapter=self.adapter_name,
        )
        self.publisher = Publisher(cfg, self.codec, self.stats)
        self.consumers = Consumers(cfg, self.codec, self.pipeline, self.publisher)
        self._url = cfg.redacted_url
        self._tls = cfg.tls_context()  # for amqps:// nodes; one context for all connections
        self._connection: AbstractRobustConnection | None = None
        self._consumer_connection: AbstractRobustConnection | None = None

    @classmethod
    def from_settings(cls, settings: HexbusSettings, **overrides: Any) -> Self:
        """The bus the container builds from ``HEXBUS_*`` settings."""
        return cls(config_from_settings(settings), **overrides)

    # -- names ---------------------------------------------------------------------------
    def queue_name(self, subscription_name: str) -> str:
        """The durable work queue of a subscription (``{service}.{name}``)."""
        return topology.work_queue_name(self.config.service_name, subscription_name)

    def dlq_name(self, subscription_name: str) -> str:
        return topology.dlq_name(self.queue_name(subscription_name))

    @property
    def declared_queues(self) -> frozenset[str]:
        """Every queue this bus declared (work, retry tiers, DLQ), e.g. for test clean-up."""
        delays = self.config.retry_delays
        return frozenset(
            name
            for work_queue in self.consumers.declared
            for name in topology.subscription_queues(work_queue, delays)
        )

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The publishing connection while running (for tools that talk to the broker)."""
        return self._connection

    # -- lifecycle -----------------------------------------------------------------------
    async def _connect(self, role: str) -> AbstractRobustConnection:
        """A robust connection to the first node of ``config.urls`` that answers (the
        others are failed over to later, see ``publisher.connect_first``)."""
        config = self.config
        try:
            return await connect_first(
                config.urls,
                connect_timeout=config.connect_timeout,
                reconnect_interval=config.reconnect_interval,
                client_properties={"connection_name": f"hexbus {config.service_name} {role}"},
                ssl_context=self._tls,
                connection_class=ConsumerConnection if role == "consumer" else RobustConnection,
            )
        except Unreachable as exc:
            explained = await config.security_failure(exc.failures, self._tls)  # TLS, password
            raise explained or ConfigurationError(self._unreachable(exc.failures)) from None

    def _unreachable(self, failures: list[tuple[str, BaseException]]) -> str:
        """Why no node could be connected to, node by node, without the passwords."""
        urls, timeout = self.config.urls, self.config.connect_timeout
        reasons = []
        for url, exc in failures:
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout}s"
            else:
                reason = mask(error_text(exc), urls)
            if isinstance(exc, _AUTH_ERRORS):
                reason += "; check the user name and password in HEXBUS_RABBITMQ_URL"
            reasons.append((redact_url(url), reason))
        if len(reasons) == 1:
            where, reason = reasons[0]
            named = "" if "HEXBUS_RABBITMQ_URL" in reason else " (HEXBUS_RABBITMQ_URL)"
            return f"cannot connect to RabbitMQ at {where}: {reason}{named}"
        return f"cannot connect to any of the {len(reasons)} RabbitMQ nodes of " + (
            "HEXBUS_RABBITMQ_URL: " + "; ".join(f"{where}: {reason}" for where, reason in reasons)
        )

    async def _start(self) -> None:
        self._connection = await self._connect("publisher")
        try:
            self._consumer_connection = await self._connect("consumer")
            await self.publisher.open(self._connection)
            keys = {
                name: {s.routing_key for s in subs}
                for name, subs in self.subscriptions.by_name().items()
            }
            await self.consumers.start(self._consumer_connection, keys)
        except BaseException:
            await self._close_connections()
            self.consumers.forget()
            raise

    async def _stop(self) -> None:
        try:
            await self.consumers.stop()
        finally:
            await self.publisher.drain()
            await self._close_connections()

    async def _close_connections(self) -> None:
        for connection in (self._consumer_connection, self._connection):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        self._consumer_connection = self._connection = None
        await self.publisher.close()

    def _subscribed(self, sub: Subscription) -> None:
        if self.state is BusState.RUNNING:
            self.consumers.schedule(lambda: self.consumers.open(sub.name, {sub.routing_key}))

    def _unsubscribed(self, sub: Subscription) -> None:
        if self.state is BusState.RUNNING:
            self.consumers.schedule(lambda: self.consumers.close(sub.name))

    # -- publishing ------------------------------------------------------------------------
    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        """Publish ``event``; return once RabbitMQ confirmed it (``PublishError`` if not)."""
        admitted = await self.admission.admit(event, metadata, key, session)
        if admitted is None:
            return
        if self.consumers.pending:
            await self.consumers.settle()  # subscribe-then-publish: the binding exists
        await self.publisher.publish(admitted)

    async def publish_many(self, events: Iterable[DomainEvent], *, session: Any = None) -> None:
        """Publish all concurrently (confirms pipelined); return when all are confirmed.

        Each queue receives them in list order. If some are not confirmed,
        ``PublishError`` names them; the others are published.
        """
        admitted = await self.admission.admit_many(events, session)
        if not admitted:
            return
        if self.consumers.pending:
            await self.consumers.settle()
        await self.publisher.publish_many(admitted)

    async def send_encoded(self, items: Sequence[EncodedEvent]) -> None:
        """Send events encoded earlier (the outbox relay) as ``publish_many`` would have
        sent them; return when all are confirmed, else ``PublishError`` naming the ids.
        No admission, no middleware, no decoding: they were admitted when encoded."""
        if self.state is not BusState.RUNNING:
            self._raise_not_running()
        if self.consumers.pending:
            await self.consumers.settle()
        await self.publisher.send_encoded(items)

    # -- capabilities: DeadLetterReader, DeadLetterReplayer, SubscriptionAdmin, Readiness --
    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` messages of the subscription's DLQ, left in place."""
        connection = self._require_connection()
        return await dead_letters.read_dead_letters(
            connection, subscription, self.dlq_name(subscription), limit
        )

    async def replay_dead_letters(
        self,
        subscription: str,
        limit: int | None = None,
        *,
        event_type: str | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        """Send up to ``limit`` (default all) dead letters (of ``event_type``) back to the
        subscription's own queue at attempt 1; each leaves the DLQ once its copy is
        confirmed. A type not registered here is refused and kept; ``dry_run`` moves
        nothing."""
        connection = self._require_connection()
        return await dead_letters.replay_dead_letters(
            connection,
            self.publisher,
            self.registry,
            subscription=subscription,
            dlq=self.dlq_name(subscription),
            work_queue=self.queue_name(subscription),
            limit=limit,
            event_type=event_type,
            dry_run=dry_run,
        )

    async def lag(self, subscriptions: Iterable[str] | None = None) -> list[SubscriptionLag]:
        """Per subscription: the ready messages of its work queue (``waiting``; ``None``
        when the queue does not exist), and in ``detail`` those of its retry tiers and
        DLQ. ``in_flight`` is ``None``: AMQP does not report unacknowledged messages."""
        connection = self._require_connection()
        names = self.subscriptions.names() if subscriptions is None else list(subscriptions)
        found: list[SubscriptionLag] = []
        for name in names:
            work_queue = self.queue_name(name)
            queues = topology.subscription_queues(work_queue, self.config.retry_delays)
            counts = await topology.message_counts(connection, queues)
            waiting = counts.pop(work_queue)
            detail = {queue: n for queue, n in counts.items() if n is not None}
            address = self.subscription_address(name)
            found.append(SubscriptionLag(name, address, waiting, None, detail))
        return found

    def subscription_address(self, name: str) -> str:
        return f"queue {self.queue_name(name)!r}"

    async def delete_subscription(self, name: str) -> list[str]:
        """Unsubscribe every handler of ``name``, wait until its consumer is cancelled,
        then delete its work queue, retry tiers and DLQ (dead letters included).

        Returns the queues that could not be deleted; ``[]`` when all went.
        """
        connection = self._require_connection()
        for sub in self.subscriptions.by_name().get(name, []):
            self.unsubscribe(sub.target, sub.handler)
        await self.consumers.settle()
        work_queue = self.queue_name(name)
        self.consumers.declared.discard(work_queue)
        queues = topology.subscription_queues(work_queue, self.config.retry_delays)
        return await topology.delete_queues(connection, queues)

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Return once subscription changes made since start are applied (queues declared,
        bound, consuming). Raises the first change that failed since the last call, and
        ``TimeoutError`` after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self.consumers.settle()
        except TimeoutError:
            raise TimeoutError(
                f"RabbitMQ subscription changes not applied within {timeout}s ({self._url})"
            ) from None
        failures = self.consumers.take_failures()
        if failures:
            raise failures[0]

    def _require_connection(self) -> AbstractRobustConnection:
        if self.state is not BusState.RUNNING or self._connection is None:
            self._raise_not_running()
        assert self._connection is not None
        return self._connection

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._url} exchange={self.config.exchange!r} "
            f"service={self.config.service_name!r} state={self.state.value} "
            f"subscriptions={len(self.subscriptions)}>"
        )
