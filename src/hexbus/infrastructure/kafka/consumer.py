"""One consumer group per durable subscription, one worker task per assigned partition.

How it runs: a fetch task calls ``getmany`` and hands each partition's records to that
partition's worker, pausing the partition until the worker has drained them (so memory
stays bounded and a slow partition never holds up the others). A worker handles its
records one after another (per-partition, hence per-key, order), retries a failing
handler in process with exponential backoff, dead-letters it after ``max_attempts``,
and commits the offset after the last *finished* record. On revocation and on
``stop()`` the workers finish the record in hand (or are abandoned after
``drain_timeout``), drop what they had not started, and commit what finished; the
next owner of the partition resumes from there. Delivery is therefore at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from hexbus.application.dispatch import run_handler
from hexbus.application.handlers import Subscription
from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.errors import DecodeError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.dead_letters import ATTEMPTS_HEADER as DLQ_ATTEMPTS_HEADER
from hexbus.infrastructure.dead_letters import ERROR_HEADER as DLQ_ERROR_HEADER
from hexbus.infrastructure.dead_letters import HANDLER_HEADER as DLQ_HANDLER_HEADER
from hexbus.infrastructure.kafka.marshal import decode_record
from hexbus.infrastructure.kafka.topics import subscription_accepts

if TYPE_CHECKING:
    from hexbus.infrastructure.kafka.bus import KafkaEventBus

__all__ = ["FAILURE_HEADERS", "GroupConsumer"]

logger = logging.getLogger("hexbus.kafka")

FAILURE_HEADERS = (
    DLQ_ERROR_HEADER,
    DLQ_ATTEMPTS_HEADER,
    DLQ_HANDLER_HEADER,
    "x-hexbus-original-topic",
    "x-hexbus-original-partition",
    "x-hexbus-original-offset",
)
_MAX_ERROR_LEN = 2000
_COMMIT_EVERY = 200  # records; a worker also commits whenever it runs dry
_COMMIT_TIMEOUT = 10.0
_TYPE_HEADER = "ce_type"


class _Abandoned(Exception):
    """The group is closing: leave this record uncommitted (it will be redelivered)."""


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_ERROR_LEN]


class _PartitionWorker:
    """Handles the records of one partition in order and commits what finished."""

    def __init__(self, group: GroupConsumer, tp: TopicPartition) -> None:
        self.group = group
        self.tp = tp
        self.pending: deque[Any] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False
        self.paused = False
        #: Set when the worker must give up on retries and backoffs (stop, revocation).
        self.abandon = asyncio.Event()
        #: Offset after the last finished record (what to commit), and what was committed.
        self.done: int | None = None
        self.committed: int | None = None
        self.task = asyncio.create_task(self._run(), name=f"hexbus-kafka-{tp.topic}-{tp.partition}")

    def push(self, records: list[Any]) -> None:
        self.pending.extend(records)
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
                return
            self.done = record.offset + 1
            since_commit += 1
            if since_commit >= _COMMIT_EVERY:
                group.commit_soon()
                since_commit = 0

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop after the record in hand (waiting up to ``timeout``), drop the rest."""
        self.closing = True
        self.abandon.set()
        self.pending.clear()
        self.wakeup.set()
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
        bus: KafkaEventBus,
        name: str,
        subs: list[Subscription],
        *,
        group_id: str,
        topics: set[str],
        pattern: str | None,
        dlq_topic: str,
    ) -> None:
        self.bus = bus
        self.name = name
        self.subs = subs
        self.group_id = group_id
        self.topics = topics
        self.pattern = pattern
        self.dlq_topic = dlq_topic
        self.workers: dict[TopicPartition, _PartitionWorker] = {}
        self._committer: asyncio.Task[None] | None = None
        self.assigned: set[TopicPartition] = set()
        self.assignment_seen = asyncio.Event()
        self.closing = asyncio.Event()
        self._routes: dict[type[DomainEvent], tuple[Subscription, ...]] = {}
        self._accepts: dict[str, bool] = {}
        self.high_water = bus.config.max_poll_records * 2
        self.low_water = bus.config.max_poll_records // 2
        self._consumer: Any = None
        self._fetcher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.bus.config
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
        )
        await self._consumer.start()
        listener = _Listener(self)
        if self.pattern is not None:
            self._consumer.subscribe(pattern=self.pattern, listener=listener)
        else:
            self._consumer.subscribe(topics=sorted(self.topics), listener=listener)
        self._fetcher = asyncio.create_task(
            self._fetch_loop(), name=f"hexbus-kafka-{self.group_id}"
        )

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
            deadline = time.monotonic() + self.bus.config.drain_timeout
        await asyncio.gather(
            *(w.close(max(0.0, deadline - time.monotonic())) for w in workers)
        )
        if self._committer is not None:  # its offsets are older: let it land first
            await asyncio.wait({self._committer})
        await self.commit({w.tp: w for w in workers})

    # -- fetching --------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        max_records = self.bus.config.max_poll_records
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
    def _accepts_type(self, event_type: str) -> bool:
        found = self._accepts.get(event_type)
        if found is None:
            found = self._accepts[event_type] = subscription_accepts(self.subs, event_type)
        return found

    def _subs_for(self, cls: type[DomainEvent]) -> tuple[Subscription, ...]:
        found = self._routes.get(cls)
        if found is None:
            found = self._routes[cls] = tuple(s for s in self.subs if s.matches(cls))
        return found

    async def process(self, record: Any, abandon: asyncio.Event) -> None:
        """Handle one record completely: handlers (with retries) or the dead-letter topic."""
        headers = record.headers
        type_header = _header(headers, _TYPE_HEADER)
        if type_header is not None:
            try:
                accepted = self._accepts_type(type_header.decode())
            except UnicodeDecodeError:
                accepted = True  # let the codec explain it in the dead letter
            if not accepted:
                return  # another type sharing this topic
        bus = self.bus
        try:
            event, metadata = decode_record(bus.codec, headers, record.value or b"")
        except DecodeError as exc:
            logger.error(
                "hexbus kafka: undecodable record %s[%d]@%d for %s: %s",
                record.topic, record.partition, record.offset, self.name, exc,
            )
            await self.dead_letter(record, f"DecodeError({exc.reason}): {exc}", 0, abandon)
            return
        subs = self._subs_for(type(event))
        if not subs:
            return
        key = record.key.decode(errors="replace") if record.key is not None else None
        for sub in subs:
            await self._handle(
                sub, event=event, metadata=metadata, key=key, record=record, abandon=abandon
            )

    async def _handle(
        self,
        sub: Subscription,
        *,
        event: DomainEvent,
        metadata: dict[str, str],
        key: str | None,
        record: Any,
        abandon: asyncio.Event,
    ) -> None:
        cfg = self.bus.config
        stats = self.bus.stats
        error: BaseException | None = None
        for attempt in range(1, cfg.max_attempts + 1):
            token = delivery_context.set(
                DeliveryContext(event, metadata, attempt, None, key, self.name)
            )
            try:
                await run_handler(sub, event, cfg.handler_timeout)
            except Exception as exc:  # noqa: BLE001 - retried, then dead-lettered
                error = exc
                stats.failed += 1
                logger.warning(
                    "hexbus kafka: handler %s failed for %s %s (attempt %d/%d): %s",
                    self.name, event.event_type, event.event_id, attempt, cfg.max_attempts,
                    _describe(exc),
                )
            else:
                stats.handled += 1
                return
            finally:
                delivery_context.reset(token)
            if attempt < cfg.max_attempts:
                stats.retried += 1
                await self._backoff(attempt, abandon)
        assert error is not None
        await self.dead_letter(
            record, _describe(error), cfg.max_attempts, abandon, handler=sub.name
        )

    async def _backoff(self, attempt: int, abandon: asyncio.Event) -> None:
        cfg = self.bus.config
        delay = min(cfg.retry_backoff_max, cfg.retry_backoff * 2 ** (attempt - 1))
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
        self,
        record: Any,
        error: str,
        attempts: int,
        abandon: asyncio.Event,
        *,
        handler: str | None = None,
    ) -> None:
        """Write the record, unchanged plus failure headers, to the DLQ; wait for the ack."""
        headers = [(k, v) for k, v in (record.headers or ()) if k not in FAILURE_HEADERS]
        headers += [
            (DLQ_ERROR_HEADER, error.encode(errors="replace")),
            (DLQ_ATTEMPTS_HEADER, str(attempts).encode()),
            (DLQ_HANDLER_HEADER, (handler or self.name).encode()),
            ("x-hexbus-original-topic", record.topic.encode()),
            ("x-hexbus-original-partition", str(record.partition).encode()),
            ("x-hexbus-original-offset", str(record.offset).encode()),
        ]
        failures = 0
        while True:
            try:
                await self.bus.send_raw(self.dlq_topic, record.value, record.key, headers)
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
            self.bus.stats.dead_lettered += 1
            return
