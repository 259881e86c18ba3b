"""A subscription's dead letters on Kafka: read them (left in place) and replay them to
that subscription only.

Why a reader without a consumer group: listing dead letters must not move anything. A
group-less consumer is assigned every partition of the topic by hand, reads from the
beginning up to the end offsets it saw when it started, and commits nothing.

Replay, on topics that are shared and append-only (names in ``topology.py``):

1. the dead-letter topic is read from the beginning (group-less), skipping the dead
   letters already replayed (those with a marker, step 4);
2. each dead letter is selected (``event_type``, ``limit``) or refused: one whose type
   is not registered in this process (or that has no type at all) could only be
   dead-lettered again, so it is kept, unmarked, and reported with the reason;
3. a copy of each selected record (original key, value and headers, the failure
   headers removed except the origin, so a second failure still says where the event
   was first delivered) goes to the subscription's replay topic, which only that
   subscription's consumer group reads: the other subscriptions of the event do not
   run again. Attempts start at 1 (Kafka counts attempts in the consumer, not on the
   record);
4. once Kafka acked a copy, a marker is written to the compacted marker topic, keyed
   by the dead letter's partition, offset and timestamp (the timestamp tells a dead
   letter from a later one at the same offset, should the topic ever be recreated).

A crash between 3 and 4 leaves a dead letter replayed and not marked: the next replay
sends it again (at least once, as everywhere in hexbus); never the other way round (a
marker without a copy would lose the event). ``dry_run`` reads and reports only: no
copy, no marker, no topic created. Two replays of one subscription at the same time may
both send the same dead letters: run one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition

from hexbus.application.consuming import error_text
from hexbus.domain.errors import HexbusError
from hexbus.domain.events import EventRegistry
from hexbus.domain.ports import DeadLetter, ReplayReport
from hexbus.infrastructure.dead_letters import (
    FAILURE_HEADERS,
    ORIGIN_HEADER,
    dead_letter_from_headers,
    replay_refusal,
)
from hexbus.infrastructure.kafka.consumer import SendRaw
from hexbus.infrastructure.kafka.marshal import KAFKA_PREFIX, wire_identity
from hexbus.infrastructure.kafka.topology import COMPACTED, OwnTopics, Topology

__all__ = [
    "dead_letter_of",
    "read_dead_letters",
    "replay_dead_letters",
]

logger = logging.getLogger("hexbus.kafka")

_ID_HEADER = KAFKA_PREFIX + "id"
_FAILURE_HEADERS = frozenset(FAILURE_HEADERS)
#: How long reading a dead-letter topic (and its markers) may take before giving up on
#: the rest; what was read until then is used.
READ_TIMEOUT = 10.0
#: A replay reads everything (not only the first ``limit``): more time.
REPLAY_READ_TIMEOUT = 60.0


def dead_letter_of(subscription: str, record: Any) -> DeadLetter:
    """One record of a dead-letter topic as the adapter-independent ``DeadLetter``."""
    headers: dict[str, Any] = {}
    for name, value in record.headers or ():
        headers.setdefault(name, value)  # the first of a repeated header, as ``header()``
    # Binary mode names id and type in ce_ headers, structured mode in the value.
    event_id, event_type = wire_identity(record.headers, record.value)
    return dead_letter_from_headers(
        subscription,
        headers,
        record.value or b"",
        event_id=event_id,
        event_type=event_type,
        position=f"{record.topic}[{record.partition}]@{record.offset}",
    )


def _marker_key(record: Any) -> bytes:
    return f"{record.partition}@{record.offset}@{record.timestamp}".encode()


async def _read_all(
    consumer: Any,
    tps: list[TopicPartition],
    *,
    deadline: float,
    take: Callable[[Any], None],
    enough: Callable[[], bool] = lambda: False,
) -> bool:
    """Read ``tps`` from the beginning to the end offsets seen now, handing every record
    to ``take``; stop early once ``enough()`` or at ``deadline``. ``True`` when it read
    everything up to the end offsets."""
    if not tps:
        return True
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(tps)
    while time.monotonic() < deadline and not enough():
        positions = [await consumer.position(tp) for tp in tps]
        if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
            return True
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        for tp, batch in batches.items():
            for record in batch:
                if record.offset < end[tp]:
                    take(record)
    return False


async def _unreplayed(
    topology: Topology,
    topics: OwnTopics,
    *,
    limit: int | None,
    timeout: float,  # noqa: ASYNC109
) -> list[Any]:
    """The dead-letter records without a replay marker, oldest first (up to ``limit``)."""
    layout = await topology.partitions_of([topics.dlq, topics.replayed])
    if not layout.get(topics.dlq):
        return []
    deadline = time.monotonic() + timeout
    marked: set[bytes] = set()
    records: list[Any] = []

    def mark(record: Any) -> None:
        if record.key is not None and record.value is not None:  # a tombstone unmarks
            marked.add(record.key)

    def keep(record: Any) -> None:
        if _marker_key(record) not in marked:
            records.append(record)

    async with topology.reader("dlq-reader") as consumer:
        markers_read = await _read_all(
            consumer,
            [TopicPartition(topics.replayed, p) for p in layout.get(topics.replayed, [])],
            deadline=deadline,
            take=mark,
        )
        if not markers_read:  # without every marker, replayed ones would look pending
            raise HexbusError(
                f"reading the replay markers of {topics.subscription} ({topics.replayed!r}) "
                f"did not finish within {timeout:.0f}s; try again"
            )
        complete = await _read_all(
            consumer,
            [TopicPartition(topics.dlq, p) for p in layout[topics.dlq]],
            deadline=deadline,
            take=keep,
            enough=lambda: limit is not None and len(records) >= limit,
        )
    if not complete and (limit is None or len(records) < limit):
        logger.warning(
            "hexbus kafka: read %d dead letter(s) of %s within %.0fs, not all of them; "
            "the rest is left for the next read",
            len(records),
            topics.subscription,
            timeout,
        )
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return records if limit is None else records[:limit]


async def read_dead_letters(
    topology: Topology,
    topics: OwnTopics,
    *,
    limit: int = 100,
    timeout: float = READ_TIMEOUT,  # noqa: ASYNC109
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of the subscription not replayed yet, oldest first."""
    if limit <= 0:
        return []
    records = await _unreplayed(topology, topics, limit=limit, timeout=timeout)
    return [dead_letter_of(topics.subscription, r) for r in records]


def _replay_headers(record: Any) -> list[tuple[str, bytes]]:
    """The record's headers without the failure record, except where it was first seen."""
    headers = [(k, v) for k, v in record.headers or () if k not in _FAILURE_HEADERS]
    for name, value in record.headers or ():
        if name == ORIGIN_HEADER and value:
            headers.append((name, value))
            break
    return headers


def _marker_value(letter: DeadLetter, replay_topic: str) -> bytes:
    return json.dumps(
        {
            "position": letter.position,
            "event_id": letter.event_id,
            "event_type": letter.event_type,
            "replayed_to": replay_topic,
            "replayed_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


async def replay_dead_letters(
    topology: Topology,
    send_raw: SendRaw,
    registry: EventRegistry,
    topics: OwnTopics,
    *,
    limit: int | None,
    event_type: str | None,
    dry_run: bool,
    timeout: float = REPLAY_READ_TIMEOUT,  # noqa: ASYNC109
) -> ReplayReport:
    """Replay dead letters of ``topics.subscription`` (see the module docstring)."""
    subscription = topics.subscription
    chosen: list[tuple[Any, DeadLetter]] = []
    refused: list[tuple[DeadLetter, str]] = []
    if limit is not None and limit <= 0:
        return ReplayReport([], refused, dry_run)
    for record in await _unreplayed(topology, topics, limit=None, timeout=timeout):
        letter = dead_letter_of(subscription, record)
        if event_type is not None and letter.event_type != event_type:
            continue
        why = replay_refusal(letter, registry)
        if why is not None:
            refused.append((letter, why))
            continue
        if limit is not None and len(chosen) >= limit:
            break
        chosen.append((record, letter))
    if dry_run or not chosen:
        return ReplayReport([letter for _, letter in chosen], refused, dry_run)

    # 3. the copies, all at once (the producer batches them), each awaited.
    copies = await asyncio.gather(
        *(
            send_raw(topics.replay, record.value, record.key, _replay_headers(record))
            for record, _ in chosen
        ),
        return_exceptions=True,
    )
    sent: list[tuple[Any, DeadLetter]] = []
    for (record, letter), result in zip(chosen, copies, strict=True):
        if isinstance(result, BaseException):
            refused.append(
                (
                    letter,
                    f"writing it to {topics.replay!r} failed ({error_text(result)}); it is "
                    "kept: replay again",
                )
            )
        else:
            sent.append((record, letter))
    if not sent:
        return ReplayReport([], refused)

    # 4. the markers, once the copies are acked.
    await topology.ensure([topics.replayed], partitions=1, configs=COMPACTED)
    marks = await asyncio.gather(
        *(
            send_raw(topics.replayed, _marker_value(letter, topics.replay), _marker_key(r), [])
            for r, letter in sent
        ),
        return_exceptions=True,
    )
    for (_, letter), result in zip(sent, marks, strict=True):
        if isinstance(result, BaseException):
            logger.warning(
                "hexbus kafka: dead letter %s of %s was replayed but could not be marked "
                "(%s); a later replay will send it again",
                letter.position,
                subscription,
                error_text(result),
            )
    return ReplayReport([letter for _, letter in sent], refused)
