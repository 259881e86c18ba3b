"""Names on the broker (topics, dead-letter and replay topics, consumer groups), their admin
and what the broker says about them (partitions, offsets, lag).

Why one topic per event type: consumers subscribe to exactly what they handle, and
retention/partitioning can be tuned per event. Events that need one order across
types (``order.created`` then ``order.paid`` for the same order) share a topic by
declaring ``kafka_topic: ClassVar[str] = "orders"``; consumers then filter records
by their ``ce_type`` header, so a subscription never sees a type it did not ask for.

``Topology`` is the adapter's one admin client: it creates topics (auto-creation is
off on production brokers), lists a topic's partitions, and deletes what a
subscription declared. On a bus that is not started it opens a short-lived client of
its own, so dead letters can be read, lag measured and subscriptions deleted from a script.

Per (service, subscription ``n``), besides the event topics it reads::

    {prefix}{service}.n.dlq            dead letters (original record + failure headers)
    {prefix}{service}.n.replay         replayed dead letters; read by n's group only
    {prefix}{service}.n.dlq.replayed   one marker per replayed dead letter (compacted)

Why a replay topic per subscription: an event topic is read by every consumer group of
it, so writing a dead letter back there would re-run every subscription; the group of
``n`` also reads ``n.replay`` and nobody else does. Why markers: a Kafka topic is
append-only, a replayed record cannot leave the dead-letter topic; the marker (keyed by
the dead letter's partition, offset and timestamp) says it was replayed, so listing
skips it and a second replay does not send it again. The three are hexbus's own topics:
pattern subscriptions never match them (``subscription_topics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.metadata import MetadataRequest

from hexbus.application.handlers import Subscription
from hexbus.application.patterns import pattern_to_regex
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent, EventRegistry
from hexbus.infrastructure import security as _security
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.names import event_topic, group_id

__all__ = [
    "COMPACTED",
    "DLQ_SUFFIX",
    "REPLAYED_SUFFIX",
    "REPLAY_SUFFIX",
    "OwnTopics",
    "TopicNames",
    "Topology",
    "dlq_topic",
    "event_topic",
    "explain_start_failure",
    "group_id",
    "probe_session",
    "replay_topic",
    "replicated_topic_configs",
    "replayed_topic",
    "subscription_topics",
]

logger = logging.getLogger("hexbus.kafka")

DLQ_SUFFIX = ".dlq"
REPLAY_SUFFIX = ".replay"
REPLAYED_SUFFIX = ".dlq.replayed"
#: Topic settings of the replay markers: kept by key (each unique), never expired by age,
#: so a marker cannot vanish before the dead letter it marks.
COMPACTED: Mapping[str, str] = {"cleanup.policy": "compact"}
_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_NOT_CONTROLLER = 41
_RETRIABLE_CREATE = {7, _NOT_CONTROLLER}  # REQUEST_TIMED_OUT, NOT_CONTROLLER
#: hexbus's own topics (dead letters, replays, markers): never matched by a pattern.
_NOT_INTERNAL = (
    r"(?!.*(?:"
    + "|".join(re.escape(s) for s in (DLQ_SUFFIX, REPLAY_SUFFIX, REPLAYED_SUFFIX))
    + r")$)"
)


def dlq_topic(prefix: str, service: str, name: str) -> str:
    """The dead-letter topic of one (service, subscription) pair."""
    return f"{prefix}{service}.{_topic_safe(name)}{DLQ_SUFFIX}"


def replay_topic(prefix: str, service: str, name: str) -> str:
    """The topic replayed dead letters of one subscription go to (read by its group only)."""
    return f"{prefix}{service}.{_topic_safe(name)}{REPLAY_SUFFIX}"


def replayed_topic(prefix: str, service: str, name: str) -> str:
    """The compacted topic marking which dead letters of one subscription were replayed."""
    return f"{prefix}{service}.{_topic_safe(name)}{REPLAYED_SUFFIX}"


def _topic_safe(name: str) -> str:
    # Kafka topic names allow [a-zA-Z0-9._-]; handler names are module.qualname
    # (``<locals>`` and the like must go).
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class OwnTopics(NamedTuple):
    """hexbus's own topics of one subscription (dead letters, replays, replay markers)."""

    subscription: str
    dlq: str
    replay: str
    replayed: str


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

    def replay_topic(self, name: str) -> str:
        return replay_topic(self.prefix, self.service, name)

    def replayed_topic(self, name: str) -> str:
        return replayed_topic(self.prefix, self.service, name)

    def own(self, name: str) -> OwnTopics:
        return OwnTopics(
            name, self.dlq_topic(name), self.replay_topic(name), self.replayed_topic(name)
        )

    def group_id(self, name: str) -> str:
        return group_id(self.service, name)


def subscription_topics(
    prefix: str,
    subs: Iterable[Subscription],
    registry: EventRegistry,
    *,
    own: Iterable[str] = (),
) -> tuple[set[str], str | None]:
    """Topics one subscription group reads now, and a regex for pattern subscriptions.

    The set holds the topic of every registered event class any of ``subs`` matches
    (created at start so nothing is missed). The regex is ``None`` when every target is
    an exact class; otherwise it also matches topics of event types that appear later
    (``prefix`` + the pattern) and the group's ``own`` topics (its replay topic), never
    hexbus's own topics of other subscriptions (``.dlq``, ``.replay``, ``.dlq.replayed``).
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
    mine = "".join(re.escape(topic) + "|" for topic in sorted(own))
    return topics, "^(?:" + mine + _NOT_INTERNAL + "(?:" + "|".join(alternatives) + "))$"


def replicated_topic_configs(
    replication_factor: int, min_insync_replicas: int | None = None
) -> dict[str, str]:
    """The topic settings that make an ``acks=all`` ack mean "stored on several brokers".

    ``acks=all`` waits for the in-sync replicas only, and a broker's default
    ``min.insync.replicas`` is 1: after two replicas fell out of sync, an ack would mean
    one copy. So a replicated topic hexbus creates gets ``min.insync.replicas``
    explicitly: ``min_insync_replicas``, else a majority of ``replication_factor`` (2 of
    3). With fewer brokers in sync the broker refuses the write (``NotEnoughReplicas``)
    instead of acknowledging what a single failure could lose. Nothing for one replica.
    """
    if replication_factor <= 1:
        return {}
    wanted = min_insync_replicas or replication_factor // 2 + 1
    if not 1 <= wanted <= replication_factor:
        raise ConfigurationError(
            f"min_insync_replicas={wanted} must be between 1 and the replication factor "
            f"({replication_factor}): with more, no write could ever be acknowledged"
        )
    return {"min.insync.replicas": str(wanted)}


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
        min_insync_replicas: int | None = None,
        config: KafkaConfig | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._config = config
        #: TLS/SASL keyword arguments of every client of the bus (admin, producer,
        #: consumers): built once from ``config`` (one SSL context, one token provider).
        self.security: dict[str, Any] = config.client_security() if config else {}
        self._partitions = partitions
        self._replication = replication_factor
        self._replicated = replicated_topic_configs(
            replication_factor,
            min_insync_replicas or (config.min_insync_replicas if config else None),
        )
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
            **self.security,
        )

    async def start(self) -> None:
        admin = self._new_admin()
        await admin.start()
        self._admin = admin

    async def start_failure(self, exc: BaseException) -> ConfigurationError:
        """The error to raise for a bus that could not start with ``exc``: a
        ``SecurityError`` naming the variable to fix when TLS or SASL is the cause (see
        ``explain_start_failure``), else what the client said."""
        if self._config is not None:
            explained = await explain_start_failure(self._config, self.security)
            if explained is not None:
                return explained
        return ConfigurationError(f"cannot start the Kafka event bus at {self._bootstrap!r}: {exc}")

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

    async def ensure(
        self,
        topics: Iterable[str],
        *,
        partitions: int | None = None,
        configs: Mapping[str, str] | None = None,
    ) -> None:
        """Create every topic in ``topics`` that this process has not seen yet, with
        ``partitions`` (default: the bus's) and the topic ``configs`` given (an existing
        topic is left as it is)."""
        count = partitions or self._partitions
        settings = {**self._replicated, **(configs or {})} or None
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
                    [
                        NewTopic(t, count, self._replication, topic_configs=settings)
                        for t in wanted
                    ],
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
                            f"cannot create Kafka topic {topic!r} ({count} "
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

    async def explain(self, topics: Iterable[str], *, within: float = 1.0) -> str:
        """Why writes to ``topics`` may not be acknowledged now, as the brokers describe
        the topics: partitions without a leader, or with fewer replicas in sync than
        ``acks=all`` needs (``min.insync.replicas``). ``""`` when the description shows
        nothing wrong; a note when the brokers could not be asked within ``within`` s.

        Why: the producer retries ``NotEnoughReplicas`` and leaderless partitions
        silently until the publish timeout, so a timeout alone does not say whether the
        brokers are unreachable or the cluster lost the replicas it needs. Never raises.
        """
        wanted = sorted(set(topics))
        last: BaseException | None = None
        described: list[Any] | None = None
        try:
            async with asyncio.timeout(within), self._client() as admin:
                while described is None:
                    try:  # the client asks a random known broker: a stopped one fails
                        described = await admin.describe_topics(wanted)
                    except Exception as exc:  # noqa: BLE001 - ask another one
                        last = exc
                        await asyncio.sleep(0.02)
        except Exception as exc:  # noqa: BLE001 - an explanation must not fail the caller
            last = last or exc
        if described is None:
            return f"no Kafka broker answered a metadata request within {within}s ({last!r})"
        needed = self._replicated.get("min.insync.replicas")
        least = f"min.insync.replicas={needed}" if needed else "min.insync.replicas"
        problems: dict[str, list[str]] = {}  # what is wrong -> where (grouped)
        for entry in described:
            topic = entry.get("topic")
            if topic not in wanted:
                continue
            for p in sorted(entry.get("partitions") or (), key=lambda p: p.get("partition", 0)):
                replicas, isr = p.get("replicas") or [], p.get("isr") or []
                if p.get("leader", -1) < 0:
                    problem = "no leader (the brokers of its replicas are down)"
                elif len(isr) < len(replicas) and (needed is None or len(isr) < int(needed)):
                    problem = (
                        f"{len(isr)} of {len(replicas)} replicas in sync (brokers "
                        f"{sorted(isr)}), and acks=all needs {least} (NotEnoughReplicas)"
                    )
                else:
                    continue
                problems.setdefault(problem, []).append(f"{topic}[{p.get('partition')}]")
        return "; ".join(f"{', '.join(where)}: {problem}" for problem, where in problems.items())

    async def partitions(self, topic: str) -> list[int]:
        """The partition ids of ``topic``, sorted; ``[]`` when the topic does not exist."""
        return (await self.partitions_of([topic])).get(topic, [])

    async def partitions_of(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """The sorted partition ids of each of ``topics`` that exists (absent ones left out)."""
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        async with self._client() as admin:
            described = await admin.describe_topics(wanted)
        found: dict[str, list[int]] = {}
        for entry in described:
            topic = entry.get("topic")
            if topic not in wanted:
                continue
            code = entry.get("error_code", 0)
            if code == _UNKNOWN_TOPIC:
                continue
            if code:
                raise ConfigurationError(
                    f"cannot describe Kafka topic {topic!r}: broker error code {code}"
                )
            found[topic] = sorted(int(p["partition"]) for p in entry.get("partitions") or ())
        return found

    @contextlib.asynccontextmanager
    async def reader(self, role: str) -> AsyncIterator[Any]:
        """A started consumer without a group: it reads and asks for offsets by hand,
        never joins a group nor commits, so it moves nothing for anyone."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id=f"{self._client_id}-{role}",
            request_timeout_ms=int(self._timeout * 1000),
            **self.security,
        )
        await consumer.start()
        try:
            yield consumer
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        """The offsets consumer group ``group`` committed (``{}`` for an unknown group)."""
        async with self._client() as admin:
            offsets = await admin.list_consumer_group_offsets(group)
        return {tp: int(meta.offset) for tp, meta in offsets.items() if meta.offset >= 0}

    async def group_lag(
        self, group: str, topics: Iterable[str], *, from_start: bool
    ) -> tuple[int | None, dict[str, int]]:
        """How many records of its topics ``group`` has not committed yet, in total and
        per ``topic[partition]``.

        The topics are those the group committed offsets in, plus ``topics`` (the ones
        the subscription reads, when this process knows it). A partition without a
        committed offset counts from its first retained record when the group would
        start there (``from_start``, ``auto_offset_reset="earliest"``), else as 0.
        ``(None, {})``: the group has no committed offsets and no topic is known.
        """
        committed = await self.committed(group)
        existing = await self.partitions_of({tp.topic for tp in committed} | set(topics))
        tps = sorted(
            (TopicPartition(t, p) for t, parts in existing.items() for p in parts),
            key=lambda tp: (tp.topic, tp.partition),
        )
        if not tps:
            return None, {}
        async with self.reader("lag") as consumer:
            end = await consumer.end_offsets(tps)
            start = await consumer.beginning_offsets(tps)
        detail: dict[str, int] = {}
        for tp in tps:
            if tp in committed:
                base = max(committed[tp], start[tp])  # retention may have passed it
            else:
                base = start[tp] if from_start else end[tp]
            detail[f"{tp.topic}[{tp.partition}]"] = max(0, end[tp] - base)
        return sum(detail.values()), detail

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


# -- diagnosing a failed start ---------------------------------------------------------


async def probe_session(
    host: str,
    port: int,
    security: Mapping[str, Any],
    timeout: float = 10.0,  # noqa: ASYNC109
) -> BaseException | None:
    """Open one connection to ``host:port`` with the bus's TLS/SASL options and ask for
    metadata; the exception that failed it, or ``None``.

    Why: aiokafka's bootstrap logs why each broker failed and raises only "Unable to
    bootstrap"; this one connection shows the broker's own answer (e.g. SASL
    authentication failed, error 58) to ``security.explain_kafka_failure``.
    """
    conn: Any = None
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(
                host, port, request_timeout_ms=int(timeout * 1000), **security
            )
            await conn.send(MetadataRequest([]))
    except Exception as exc:  # noqa: BLE001 - the diagnosis is the exception
        return exc
    finally:
        if conn is not None:
            conn.close()
    return None


async def speaks_plaintext(host: str, port: int, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
    """Whether ``host:port`` answers a Kafka ApiVersions request without TLS."""
    conn: Any = None
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(host, port, request_timeout_ms=int(timeout * 1000))
    except Exception:  # noqa: BLE001 - any failure: not a plaintext Kafka listener
        return False
    finally:
        if conn is not None:
            conn.close()
    return True


def _servers(bootstrap_servers: str) -> list[tuple[str, int]]:
    found = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host:  # "localhost" without a port
            host, port = port, "9092"
        with contextlib.suppress(ValueError):
            found.append((host.strip("[]"), int(port)))
    return found


async def explain_start_failure(
    config: KafkaConfig, security: Mapping[str, Any]
) -> _security.SecurityError | None:
    """Why the bus of ``config`` could not start, when it is TLS or
    SASL: a ``SecurityError`` naming the variable to fix; ``None`` otherwise."""
    return await _security.explain_kafka_failure(
        servers=_servers(config.bootstrap_servers),
        protocol=config.security_protocol,
        mechanism=config.sasl_mechanism,
        username=config.sasl_username,
        tls=config.tls_files,
        context=security.get("ssl_context"),
        session=lambda host, port: probe_session(host, port, security),
        plaintext=speaks_plaintext,
    )

