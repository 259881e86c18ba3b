"""Names on the broker (topics, dead-letter topics, consumer groups) and their admin.

Why one topic per event type: consumers subscribe to exactly what they handle, and
retention/partitioning can be tuned per event. Events that need one order across
types (``order.created`` then ``order.paid`` for the same order) share a topic by
declaring ``kafka_topic: ClassVar[str] = "orders"``; consumers then filter records
by their ``ce_type`` header, so a subscription never sees a type it did not ask for.

``Topology`` is the adapter's one admin client: it creates topics (auto-creation is
off on production brokers), lists a topic's partitions, and deletes what a
subscription declared. On a bus that is not started it opens a short-lived client of
its own, so dead letters can be read and subscriptions deleted from a script.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from hexbus.application.handlers import Subscription
from hexbus.application.patterns import pattern_to_regex
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent, EventRegistry

__all__ = [
    "DLQ_SUFFIX",
    "TopicNames",
    "Topology",
    "dlq_topic",
    "event_topic",
    "group_id",
    "subscription_topics",
]

logger = logging.getLogger("hexbus.kafka")

DLQ_SUFFIX = ".dlq"
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_NOT_CONTROLLER = 41
_RETRIABLE_CREATE = {7, _NOT_CONTROLLER}  # REQUEST_TIMED_OUT, NOT_CONTROLLER
_NOT_DLQ = r"(?!.*" + re.escape(DLQ_SUFFIX) + r"$)"


def event_topic(prefix: str, cls: type[DomainEvent]) -> str:
    """``prefix`` + the class's ``kafka_topic`` (if it declares one) or its ``event_type``."""
    override = getattr(cls, "kafka_topic", None)
    return prefix + (override if isinstance(override, str) and override else cls.event_type)


def dlq_topic(prefix: str, service: str, name: str) -> str:
    """The dead-letter topic of one (service, subscription) pair."""
    return f"{prefix}{service}.{_topic_safe(name)}{DLQ_SUFFIX}"


def group_id(service: str, name: str) -> str:
    """One consumer group per (service, durable subscription name)."""
    return f"{service}.{name}"


def _topic_safe(name: str) -> str:
    # Kafka topic names allow [a-zA-Z0-9._-]; handler names are module.qualname
    # (``<locals>`` and the like must go).
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class TopicNames:
    """The names of one bus (prefix, service); event topics cached per class (hot path)."""

    __slots__ = ("_topic_of", "prefix", "service")

    def __init__(self, prefix: str, service: str) -> None:
        self.prefix = prefix
        self.service = service
        self._topic_of: dict[type[DomainEvent], str] = {}

    def topic_for(self, cls: type[DomainEvent]) -> str:
        topic = self._topic_of.get(cls)
        if topic is None:
            topic = self._topic_of[cls] = event_topic(self.prefix, cls)
        return topic

    def dlq_topic(self, name: str) -> str:
        return dlq_topic(self.prefix, self.service, name)

    def group_id(self, name: str) -> str:
        return group_id(self.service, name)


def subscription_topics(
    prefix: str, subs: Iterable[Subscription], registry: EventRegistry
) -> tuple[set[str], str | None]:
    """Topics one subscription group reads now, and a regex for pattern subscriptions.

    The set holds the topic of every registered event class any of ``subs`` matches
    (created at start so nothing is missed). The regex is ``None`` when every target is
    an exact class; otherwise it also matches topics of event types that appear later
    (``prefix`` + the pattern), never dead-letter topics.
    """
    topics: set[str] = set()
    alternatives: list[str] = []
    has_pattern = False
    for sub in subs:
        if isinstance(sub.target, str):
            has_pattern = True
            alternatives.append(re.escape(prefix) + pattern_to_regex(sub.target)[1:-1])
            for cls in registry:
                if sub.matches(cls):
                    topics.add(event_topic(prefix, cls))
        else:
            topics.add(event_topic(prefix, sub.target))
    if not has_pattern:
        return topics, None
    alternatives.extend(re.escape(topic) for topic in sorted(topics))
    return topics, "^" + _NOT_DLQ + "(?:" + "|".join(alternatives) + ")$"


def _aiokafka_version() -> str:
    try:
        return version("aiokafka")
    except PackageNotFoundError:  # pragma: no cover - installed without metadata
        return "?"


class Topology:
    """Creates topics once each, lists partitions, deletes topics and groups."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        partitions: int,
        replication_factor: int,
        client_id: str,
        request_timeout: float = 30.0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._partitions = partitions
        self._replication = replication_factor
        self._client_id = client_id
        self._timeout = request_timeout
        self._admin: Any = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    def known(self, topic: str) -> bool:
        return topic in self._known

    def _new_admin(self) -> Any:
        return AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=int(self._timeout * 1000),
        )

    async def start(self) -> None:
        admin = self._new_admin()
        await admin.start()
        self._admin = admin

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Any]:
        """The running admin client, or a short-lived one when the bus is not started."""
        if self._admin is not None:
            yield self._admin
            return
        admin = self._new_admin()
        await admin.start()
        try:
            yield admin
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create every topic in ``topics`` that this process has not seen yet."""
        wanted = sorted(set(topics) - self._known)
        if not wanted:
            return
        async with self._lock:
            wanted = [t for t in wanted if t not in self._known]
            if not wanted:
                return
            if self._admin is None:
                raise ConfigurationError("the Kafka topic manager is not started")
            for attempt in range(5):
                response = await self._admin.create_topics(
                    [NewTopic(t, self._partitions, self._replication) for t in wanted],
                    timeout_ms=int(self._timeout * 1000),
                )
                retry: list[str] = []
                for entry in response.topic_errors:
                    topic, code = entry[0], entry[1]
                    message = entry[2] if len(entry) > 2 else ""
                    if code in (0, _TOPIC_ALREADY_EXISTS):
                        self._known.add(topic)
                    elif code in _RETRIABLE_CREATE:
                        retry.append(topic)
                    else:
                        raise ConfigurationError(
                            f"cannot create Kafka topic {topic!r} ({self._partitions} "
                            f"partitions, replication {self._replication}): error {code} "
                            f"{message or ''}".rstrip()
                        )
                if not retry:
                    await self._wait_for_leaders(wanted)
                    return
                wanted = retry
                await asyncio.sleep(0.2 * (attempt + 1))
            raise ConfigurationError(
                f"cannot create Kafka topics {wanted}: the broker kept timing out"
            )

    async def _wait_for_leaders(self, topics: list[str], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the broker's metadata lists every topic with a leader per partition.

        Why: a consumer that joins its group before the new topic shows up in metadata
        gets no partitions for it, and only picks them up at the next metadata refresh
        (a rebalance seconds later); producers would retry ``NotLeaderForPartition``.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        pending = set(topics)
        while pending:
            try:
                described = await self._admin.describe_topics(sorted(pending))
            except Exception as exc:  # noqa: BLE001 - best effort; consumers retry anyway
                logger.debug("hexbus kafka: describe_topics failed: %s", exc)
                described = []
            for entry in described:
                partitions = entry.get("partitions") or []
                if entry.get("error_code") == 0 and partitions and all(
                    p.get("leader", -1) >= 0 for p in partitions
                ):
                    pending.discard(entry.get("topic"))
            if not pending or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.05)

    async def partitions(self, topic: str) -> list[int]:
        """The partition ids of ``topic``, sorted; ``[]`` when the topic does not exist."""
        async with self._client() as admin:
            described = await admin.describe_topics([topic])
        for entry in described:
            if entry.get("topic") != topic:
                continue
            code = entry.get("error_code", 0)
            if code == _UNKNOWN_TOPIC:
                return []
            if code:
                raise ConfigurationError(
                    f"cannot describe Kafka topic {topic!r}: broker error code {code}"
                )
            return sorted(int(p["partition"]) for p in entry.get("partitions") or ())
        return []

    async def delete_topics(self, topics: list[str]) -> list[str]:
        """Delete ``topics`` (absent ones count as deleted); return what is still there,
        each with the broker's reason."""
        if not topics:
            return []
        async with self._client() as admin:
            response = await admin.delete_topics(topics, timeout_ms=int(self._timeout * 1000))
        left: list[str] = []
        for entry in response.topic_error_codes:
            topic, code = entry[0], entry[1]
            self._known.discard(topic)
            if code not in (0, _UNKNOWN_TOPIC):
                left.append(f"topic {topic!r} (broker error code {code})")
        return left

    async def delete_group(self, group: str) -> list[str]:
        """Delete consumer group ``group`` where the client can; else say it is left.

        aiokafka's admin client (0.14) has no ``delete_consumer_groups``; it is used as soon
        as the installed version has one. Without it the group's committed offsets stay
        until the broker expires them (``offsets.retention.minutes``).
        """
        if not callable(getattr(AIOKafkaAdminClient, "delete_consumer_groups", None)):
            return [
                f"consumer group {group!r} (aiokafka {_aiokafka_version()} cannot delete "
                "consumer groups; the broker drops its committed offsets after "
                "offsets.retention.minutes, or run: kafka-consumer-groups.sh --delete "
                f"--group {group})"
            ]
        try:
            async with self._client() as admin:
                await admin.delete_consumer_groups([group])
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return [f"consumer group {group!r} ({type(exc).__name__}: {exc})"]
        return []
