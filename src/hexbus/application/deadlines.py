"""One timer for every publish in flight, instead of an ``asyncio.timeout`` each.

Why: a per-publish ``asyncio.timeout`` costs ~4 µs of timer handling (a timer handle, a
heap push, its cancellation and the heap's later clean-up), a tenth of a broker
adapter's CPU per publish, and one awaited publish at a time pays it on every event.
All publishes of one publisher share one timeout (``publish_timeout``), so their
deadlines come in the order they started: a watchdog task wakes every ``timeout / 10``
(at most 0.5 s), and cancels the tasks whose deadline passed; the deadline's state tells
that cancellation from any other. A publish may so run up to ``timeout`` + one interval.

How a publish uses it (``send`` of the RabbitMQ and Kafka publishers)::

    deadline = deadlines.start(asyncio.current_task())
    try:
        await put_it_on_the_wire()
    except asyncio.CancelledError:
        if not deadline.timed_out():
            raise  # the caller's own cancellation: stays one
    finally:
        deadline.end()
    if deadline.expired:
        raise PublishError(...)  # "not acknowledged within publish_timeout"

One watchdog per publisher; the transports own what a timed-out publish means.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from typing import Any

__all__ = ["Deadline", "Deadlines"]

_PENDING, _DONE, _EXPIRED = 0, 1, 2


class Deadline:
    """The deadline of one publish: pending until ``end()``, or expired (its task was
    cancelled by the watchdog)."""

    __slots__ = ("at", "state", "task")

    def __init__(self, at: float, task: Any) -> None:
        self.at = at
        #: The publishing task (``asyncio.Task``, or what ``current_task()`` gave inside
        #: an eagerly started handler, which forwards ``cancel`` to its Task).
        self.task = task
        self.state = _PENDING

    @property
    def expired(self) -> bool:
        """The watchdog cancelled the task for this deadline."""
        return self.state == _EXPIRED

    def timed_out(self) -> bool:
        """In ``except CancelledError``: ``True`` when the cancellation is this deadline's
        alone; it is then taken back (the task is no longer cancelling) and the caller
        raises its timeout error instead. ``False``: re-raise, the task was cancelled by
        someone else too (``stop()``, a caller's own timeout)."""
        return self.state == _EXPIRED and self.task.uncancel() == 0

    def end(self) -> None:
        """The publish finished (in a ``finally``): the watchdog leaves its task alone."""
        if self.state == _PENDING:
            self.state = _DONE


class Deadlines:
    """The shared watchdog of one publisher: ``start`` a deadline per publish."""

    __slots__ = ("_entries", "_interval", "_task", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._interval = min(0.5, timeout / 10)
        self._entries: deque[Deadline] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self, task: Any) -> Deadline:
        """A deadline ``timeout`` seconds from now for ``task`` (the current task)."""
        entries = self._entries
        while entries and entries[0].state != _PENDING:
            entries.popleft()
        deadline = Deadline(time.monotonic() + self.timeout, task)
        entries.append(deadline)
        if self._task is None:
            # In a context of its own: not the first publisher's (its span, its delivery).
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), context=contextvars.Context()
            )
        return deadline

    async def _watch(self) -> None:
        entries = self._entries
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            while entries and (entries[0].state != _PENDING or entries[0].at <= now):
                deadline = entries.popleft()
                if deadline.state == _PENDING:
                    deadline.state = _EXPIRED
                    deadline.task.cancel()

    async def close(self) -> None:
        """Stop the watchdog (the publisher closes); a later ``start`` starts a new one."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
