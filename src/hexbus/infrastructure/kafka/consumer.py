"""One consumer group per durable subscription, one worker task per assigned partition.

How it runs: a fetch task calls ``getmany`` and hands each partition's records to that
partition's worker, pausing the partition until the worker has drained them (so memory
stays bounded and a slow partition never holds up the others). A worker takes its
records one after another (per-partition, hence per-key, order): decode, hand to the
consume pipeline, carry out the outcome, and commit the offset after the last
*finished* record:

- ``ACK``: the record is done;
- ``RETRY``: wait ``outcome.delay`` here (the partition waits with it: per-key order),
  deliver again as the next attempt;
- ``DEAD_LETTER``: the original value, key and headers plus the failure headers go to
  the subscription's dead-letter topic, retried until Kafka acked them.

The group also reads the subscription's replay topic (``dead_letters.py`` writes
replayed dead letters there, for this group only). A replayed record runs from attempt
1 like any other; it is never skipped as "another subscription's type" (it was sent to
this subscription: if it no longer wants the type, the record is dead-lettered again as
``no_handler``, not lost), and a second failure keeps the origin of the first.

On revocation and on ``stop()`` the workers finish the record in hand (or are abandoned
after ``drain_timeout``; a back-off in progress is cut short), drop what they had not
started, and commit what finished; the next owner of the partition resumes from there.
Delivery is therefore at least once.

What this module needs from the bus comes in as arguments (the pipeline, ``send_raw``,
the config), so it never imports ``bus.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from hexbus.application.consuming import Action, ConsumePipeline, Decoded, Outcome
from hexbus.domain.errors import DecodeError
from hexbus.domain.events import EventRegistry
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.dead_letters import FAILURE_HEADERS, ORIGIN_HEADER, failure_headers
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import TYPE_HEADER, header, read_record

__all__ = ["GroupConsumer", "SendRaw"]

logger = logging.getLogger("hexbus.kafka")

#: ``send_raw(topic, value, key, headers)``: write one record as is, return once acked.
SendRaw = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]

_COMMIT_EVERY = 200  # records; a worker also commits whenever it runs dry
_COMMIT_TIMEOUT = 10.0
_FAILURE_HEADERS = frozenset(FAILURE_HEADERS)


class _Abandoned(Exception):
    """The group is closing: leave this record uncommitted (it will be redelivered)."""


class _PartitionWorker:
    """Handles the records of one partition in order and commits what finished."""

    def __init__(self, group: GroupConsumer, tp: TopicPartition) -> None:
        self.group = group
        self.tp = tp
        self.pending: deque[Any] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False
        self.paused = False
        #: Set when the worker must give up on retries and back-offs (stop, revocation).
        self.abandon = asyncio.Event()
        #: Offset after the last finished record (what to commit), and what was committed.
        self.done: int | None = None
        self.committed: int | None = None
        self.task = asyncio.create_task(self._run(), name=f"hexbus-kafka-{tp.topic}-{tp.partition}")

    def push(self, records: list[Any]) -> None:
        self.pending.extend(records)
        self.wakeup.set()

    def halt(self) -> None:
        """Start no further record; cut a back-off in progress short."""
        self.closing = True
        self.abandon.set()
        self.pending.clear()
        self.wakeup.set()

    async def _run(self) -> None:
        group = self.group
        since_commit = 0
        while not self.closing:
            if not self.pending:
                if self.done != self.committed:
                    group.commit_soon()  # one request for every partition that ran dry
                    since_commit = 0
                if self.closing:
                    break
                # No await between this check and wait(): push() cannot slip in unseen.
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            if self.paused and len(self.pending) <= group.low_water:
                self.paused = False
                group.resume(self.tp)
            record = self.pending.popleft()
            try:
                await group.process(record, self.abandon)
            except _Abandoned:
                group.pipeline.stats.requeued += 1  # left uncommitted: redelivered
                return
            self.done = record.offset + 1
            since_commit += 1
            if since_commit >= _COMMIT_EVERY:
                group.commit_soon()
                since_commit = 0

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop after the record in hand (waiting up to ``timeout``), drop the rest."""
        self.halt()
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            logger.warning(
                "hexbus kafka: handler for %s[%d] still running after %.1fs; abandoning it "
                "(the record will be redelivered)",
                self.tp.topic,
                self.tp.partition,
                timeout,
            )
            self.task.cancel()
            await asyncio.wait({self.task})
            self.group.pipeline.stats.requeued += 1  # the record in hand: redelivered
        elif not self.task.cancelled() and self.task.exception() is not None:
            logger.error("hexbus kafka: worker %s failed", self.tp, exc_info=self.task.exception())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: GroupConsumer) -> None:
        self.group = group

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.group.release(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.group.assigned.update(assigned)
        self.group.assignment_seen.set()


class GroupConsumer:
    """The consumer group of one durable subscription name."""

    def __init__(
        self,
        name: str,
        *,
        pipeline: ConsumePipeline,
        send_raw: SendRaw,
        config: KafkaConfig,
        codec: CloudEventCodec,
        registry: EventRegistry,
        group_id: str,
        topics: set[str],
        pattern: str | None,
        dlq_topic: str,
        replay_topic: str,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        #: TLS/SASL keyword arguments of the client (``KafkaConfig.client_security``).
        self.security = dict(security or {})
        self.pipeline = pipeline
        self.send_raw = send_raw
        self.config = config
        self.codec = codec
        self.registry = registry
        self.group_id = group_id
        self.topics = topics
        self.pattern = pattern
        self.dlq_topic = dlq_topic
        self.replay_topic = replay_topic
        self.workers: dict[TopicPartition, _PartitionWorker] = {}
        self._committer: asyncio.Task[None] | None = None
        self.assigned: set[TopicPartition] = set()
        self.assignment_seen = asyncio.Event()
        self.closing = asyncio.Event()
        self.high_water = config.max_poll_records * 2
        self.low_water = config.max_poll_records // 2
        self._consumer: Any = None
        self._fetcher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"hexbus-{self.group_id}",
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            metadata_max_age_ms=cfg.metadata_max_age_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=max(300_000, int((cfg.handler_timeout or 300) * 1000 * 2)),
            fetch_max_wait_ms=100,
            **self.security,
        )
        await self._consumer.start()
        listener = _Listener(self)
        if self.pattern is not None:
            self._consumer.subscribe(pattern=self.pattern, listener=listener)
        else:
            self._consumer.subscribe(
                topics=sorted(self.topics | {self.replay_topic}), listener=listener
            )
        self._fetcher = asyncio.create_task(
            self._fetch_loop(), name=f"hexbus-kafka-{self.group_id}"
        )

    def halt(self) -> None:
        """Start no further record (the subscription changed; ``stop`` follows).

        Called synchronously by ``unsubscribe``: records already fetched must not meet
        the changed subscription table (they would be dead-lettered as ``no_handler``);
        they stay uncommitted and go to the group that replaces this one.
        """
        self.closing.set()
        for worker in self.workers.values():
            worker.halt()

    async def stop(self, drain_timeout: float) -> None:
        """Stop fetching, finish or abandon in-flight records, commit, leave the group."""
        self.closing.set()
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.wait({self._fetcher})
        deadline = time.monotonic() + drain_timeout
        await self.release(set(self.workers), deadline=deadline)
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await consumer.stop()  # leaves the group
            except Exception as exc:  # noqa: BLE001 - closing anyway
                logger.warning("hexbus kafka: closing consumer %s: %s", self.group_id, exc)

    async def release(self, tps: set[TopicPartition], *, deadline: float | None = None) -> None:
        """Revocation / stop: let the workers of ``tps`` finish, then commit for them."""
        self.assigned.difference_update(tps)
        workers = [w for tp in tps if (w := self.workers.pop(tp, None)) is not None]
        if not workers:
            return
        if deadline is None:
            deadline = time.monotonic() + self.config.drain_timeout
        await asyncio.gather(
            *(w.close(max(0.0, deadline - time.monotonic())) for w in workers)
        )
        if self._committer is not None:  # its offsets are older: let it land first
            await asyncio.wait({self._committer})
        await self.commit({w.tp: w for w in workers})

    async def wait_live(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once the group owns partitions and knows where it starts in each.

        ``auto_offset_reset="latest"`` is resolved lazily, on the first fetch; an event
        published before that would be skipped. Asking for every assigned partition's
        position resolves it now, so what is published after this returns is seen.
        """
        async with asyncio.timeout(timeout):
            await self.assignment_seen.wait()
            consumer = self._consumer
            if consumer is None:
                return
            for tp in sorted(consumer.assignment()):
                try:
                    await consumer.position(tp)
                except IllegalStateError:
                    continue  # revoked meanwhile: the next owner resolves it

    # -- fetching --------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        max_records = self.config.max_poll_records
        failures = 0
        while not self.closing.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive broker trouble
                failures += 1
                logger.warning(
                    "hexbus kafka: fetching for %s failed (%s); retrying", self.group_id, exc
                )
                await asyncio.sleep(min(5.0, 0.2 * failures))
                continue
            if self.closing.is_set():
                return  # halted meanwhile: these records go to the next owner
            for tp, records in batches.items():
                if not records:
                    continue
                worker = self.workers.get(tp)
                if worker is None:
                    worker = self.workers[tp] = _PartitionWorker(self, tp)
                worker.push(records)
                if len(worker.pending) >= self.high_water and not worker.paused:
                    # Back-pressure: stop fetching this partition until the worker caught up.
                    worker.paused = True
                    consumer.pause(tp)

    def resume(self, tp: TopicPartition) -> None:
        consumer = self._consumer
        if consumer is None or self.closing.is_set():
            return
        try:
            if tp in consumer.assignment():
                consumer.resume(tp)
        except Exception as exc:  # noqa: BLE001 - reassigned meanwhile; nothing to resume
            logger.debug("hexbus kafka: resume %s: %s", tp, exc)

    def commit_soon(self) -> None:
        """Commit what every worker has finished, in one request, once the workers that
        are running now had their turn (they often run dry together after a fetch)."""
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_all())

    async def _commit_all(self) -> None:
        await asyncio.sleep(0)
        try:
            await self.commit(dict(self.workers))
        except Exception:  # not fatal: what is not committed is redelivered
            logger.exception("hexbus kafka: commit for %s failed", self.group_id)

    async def commit(self, workers: dict[TopicPartition, _PartitionWorker]) -> None:
        offsets = {
            tp: w.done
            for tp, w in workers.items()
            if w.done is not None and w.done != w.committed
        }
        if not offsets or self._consumer is None:
            return
        try:
            async with asyncio.timeout(_COMMIT_TIMEOUT):
                await self._consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            # Not fatal: the records are redelivered to whoever owns the partition next.
            logger.warning("hexbus kafka: commit for %s failed: %s", self.group_id, exc)
            return
        for tp, offset in offsets.items():
            workers[tp].committed = offset

    # -- handling --------------------------------------------------------------------
    def _skips(self, type_header: bytes) -> bool:
        """Is this a record of a known type that this subscription does not want?

        A topic shared by several types (``kafka_topic``) carries types other groups
        handle: those are skipped here, before decoding. A type nobody registered is not
        skipped: decoding turns it into ``DecodeError("unknown_type")``, dead-lettered.
        """
        try:
            wire_type = type_header.decode()
        except UnicodeDecodeError:
            return False  # decoding explains it in the dead letter
        return self._skips_type(wire_type)

    def _skips_type(self, wire_type: str) -> bool:
        return (
            not self.pipeline.subscriptions.accepts(self.name, wire_type)
            and wire_type in self.registry
        )

    async def process(self, record: Any, abandon: asyncio.Event) -> None:
        """Handle one record completely: the pipeline's outcome, carried out."""
        headers = record.headers
        replayed = record.topic == self.replay_topic
        type_header = header(headers, TYPE_HEADER)
        if not replayed and type_header is not None and self._skips(type_header):
            logger.debug(
                "hexbus kafka: %s skips %s at %s[%d]@%d (another subscription's type)",
                self.name, type_header, record.topic, record.partition, record.offset,
            )
            return
        decoded: Decoded | DecodeError
        try:
            decoded = read_record(self.codec, headers, record.value or b"")
        except DecodeError as exc:
            decoded = exc
        else:
            if type_header is None and not replayed and self._skips_type(decoded[0].event_type):
                return  # structured mode names its type in the value: skipped only now
        key = record.key.decode(errors="replace") if record.key is not None else None
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        origin = where
        if replayed:  # where the event was first delivered, not the replay topic
            first = header(headers, ORIGIN_HEADER)
            if first:
                origin = first.decode(errors="replace")
        pipeline = self.pipeline
        attempt = 1
        while True:
            outcome = await pipeline.deliver(
                self.name, decoded, attempt=attempt, key=key, where=where
            )
            action = outcome.action
            if action is Action.ACK:
                return
            if action is Action.RETRY:
                await self._back_off(outcome.delay, abandon)
                pipeline.settled(outcome)
                attempt = outcome.attempt + 1
                continue
            await self.dead_letter(record, outcome, origin, abandon)
            pipeline.settled(outcome)
            return

    @staticmethod
    async def _back_off(delay: float, abandon: asyncio.Event) -> None:
        if abandon.is_set():
            raise _Abandoned
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await abandon.wait()
        except TimeoutError:
            return
        raise _Abandoned

    async def dead_letter(
        self, record: Any, outcome: Outcome, origin: str, abandon: asyncio.Event
    ) -> None:
        """Write the record, unchanged plus failure headers, to the DLQ; wait for the ack."""
        headers = [(k, v) for k, v in (record.headers or ()) if k not in _FAILURE_HEADERS]
        headers += [
            (name, value.encode(errors="replace"))
            for name, value in failure_headers(outcome, origin=origin).items()
        ]
        failures = 0
        while True:
            try:
                await self.send_raw(self.dlq_topic, record.value, record.key, headers)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                logger.error(
                    "hexbus kafka: writing dead letter to %s failed (%s); retrying",
                    self.dlq_topic, exc,
                )
                if abandon.is_set():
                    raise _Abandoned from exc
                await asyncio.sleep(min(5.0, 0.5 * failures))
                continue
            return
