"""A subscription's DLQ: read it (left in place) and replay it to that subscription only.

The failure record a dead letter carries is written by the consumer with the shared
header names (``hexbus.infrastructure.dead_letters``) and read back here into the one
``DeadLetter`` record every adapter returns. A subscription without a DLQ (never
subscribed, or deleted) simply has no dead letters: reading returns ``[]``, a replay an
empty report. A dead letter whose event type is not registered in the replaying process
is refused and stays in the DLQ (see ``hexbus.infrastructure.dead_letters.replay_refusal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from aio_pika.abc import AbstractRobustConnection as Connection

from hexbus.domain.errors import PublishError
from hexbus.domain.events import EventRegistry
from hexbus.domain.ports import DeadLetter, ReplayReport
from hexbus.infrastructure.dead_letters import (
    ORIGIN_HEADER,
    dead_letter_from_headers,
    header_text,
    replay_refusal,
)
from hexbus.infrastructure.rabbitmq import topology
from hexbus.infrastructure.rabbitmq.consumer import copy_headers, copy_message
from hexbus.infrastructure.rabbitmq.marshal import AMQP_PREFIX, wire_identity
from hexbus.infrastructure.rabbitmq.publisher import Publisher

__all__ = ["dead_letter_of", "read_dead_letters", "replay_dead_letters"]

_TYPE_HEADER = AMQP_PREFIX + "type"


def dead_letter_of(subscription: str, message: AbstractIncomingMessage) -> DeadLetter:
    """The ``DeadLetter`` of one DLQ message (its body and headers as they are)."""
    headers = dict(message.headers or {})
    # cloudEvents:/ce- headers in binary mode, the body in structured mode.
    wire_id, wire_type = wire_identity(headers, message.content_type, message.body)
    dead = dead_letter_from_headers(
        subscription,
        headers,
        message.body,
        event_id=wire_id or message.message_id,
        event_type=wire_type or message.type,
    )
    if dead.origin is None and topology.LEGACY_ORIGIN_HEADER in headers:
        dead = dataclasses.replace(
            dead, origin=header_text(headers[topology.LEGACY_ORIGIN_HEADER])
        )
    return dead


async def _open_dlq(channel: AbstractRobustChannel, dlq: str) -> AbstractQueue | None:
    """The DLQ, or ``None`` when it does not exist (a passive declare, nothing created)."""
    try:
        return await channel.declare_queue(dlq, passive=True, robust=False)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None


async def read_dead_letters(
    connection: Connection, subscription: str, dlq: str, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` messages of ``dlq``, oldest first, left in place (get + requeue)."""
    found: list[DeadLetter] = []
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await _open_dlq(channel, dlq)
        if queue is None:
            return found
        held: list[AbstractIncomingMessage] = []
        try:
            while len(held) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                held.append(message)
                found.append(dead_letter_of(subscription, message))
        finally:
            for message in held:
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return found


def _replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message at attempt 1, without its failure record, keeping where it came from."""
    headers = copy_headers(message)
    origin = headers.get(ORIGIN_HEADER) or headers.get(topology.LEGACY_ORIGIN_HEADER)
    for name in topology.DEAD_LETTER_HEADERS:
        headers.pop(name, None)
    headers[topology.ATTEMPT_HEADER] = 1
    if origin:  # a later failure still names where the event was first delivered
        headers[topology.ROUTING_KEY_HEADER] = origin
    return copy_message(message, headers)


async def replay_dead_letters(
    connection: Connection,
    publisher: Publisher,
    registry: EventRegistry,
    *,
    subscription: str,
    dlq: str,
    work_queue: str,
    limit: int | None,
    event_type: str | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Send up to ``limit`` messages of ``dlq`` (of ``event_type``) back to ``work_queue``
    at attempt 1.

    Only that subscription sees them again (they go to its queue, not the exchange);
    the failure headers are removed (the origin is kept for a later failure). Each is
    confirmed before it is acked in the DLQ, so nothing is lost mid-way (a crash in
    between means one is replayed twice). What is not replayed (another type, refused,
    everything with ``dry_run``) is held unacknowledged until the end and then put back
    (nack + requeue), so it is not met twice; the walk is bounded by the DLQ's message
    count at the start, so dead letters arriving meanwhile wait for the next replay.
    """
    replayed: list[DeadLetter] = []
    refused: list[tuple[DeadLetter, str]] = []
    if limit is not None and limit <= 0:
        return ReplayReport(replayed, refused, dry_run)
    channel = await connection.channel(publisher_confirms=True)
    held: list[AbstractIncomingMessage] = []
    try:
        queue = await _open_dlq(channel, dlq)
        if queue is None:
            return ReplayReport(replayed, refused, dry_run)
        total = queue.declaration_result.message_count or 0
        for _ in range(total):
            if limit is not None and len(replayed) >= limit:
                break
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letter = dead_letter_of(subscription, message)
            if event_type is not None and letter.event_type != event_type:
                held.append(message)
                continue
            why = replay_refusal(letter, registry)
            if why is not None or dry_run:
                held.append(message)
                if why is not None:
                    refused.append((letter, why))
                else:
                    replayed.append(letter)
                continue
            try:
                await publisher.send(
                    channel.default_exchange,
                    _replay_copy(message),
                    work_queue,
                    functools.partial(
                        "replay of {} to {}".format, message.message_id, work_queue
                    ),
                )
            except PublishError as exc:  # kept; the rest is not tried (same broker)
                held.append(message)
                why = f"sending it back failed ({exc}); it is kept: replay again"
                refused.append((letter, why))
                break
            await message.ack()
            replayed.append(letter)
    finally:
        for message in held:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        with contextlib.suppress(Exception):
            await channel.close()
    return ReplayReport(replayed, refused, dry_run)
