"""Concurrent single publishes, handed to the transport together.

Why: a service under load makes many ``publish()`` calls at once (one per request), and
each paying the transport's per-call cost (a lock, a timer, a future, a write of its
own) is what made thousands of concurrent publishes several times slower than one
``publish_many`` of the same events. So the calls made in one event-loop iteration join
one *group*; a task opened by the first of them runs after the others of that iteration
joined (a task's first step comes after every callback already scheduled) and hands
the whole group to the transport's ``flush``, which writes it the way ``publish_many``
does. A call with nothing queued ahead of it skips the group (``direct``): one awaited
publish at a time, or a steady stream of them, waits for no task.

Each caller waits on a future of its own, settled from its own item's outcome, so a
caller that times out or is cancelled cancels only its own wait, and is told about its
own event only. How and when the outcomes come is the transport's: Kafka settles each
member as its batch is acknowledged, RabbitMQ once the group's confirms are in.

One coalescer per publisher, used by every broker adapter; the transports write the
groups, the rules of forming and settling them are here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Self, TypeVar

from hexbus.domain.errors import PublishError

__all__ = ["Coalescer", "Group"]

T = TypeVar("T")


class Group(Generic[T]):
    """The single publishes of one event-loop iteration, in the order they joined.

    ``waiters[i]`` is the future the caller of ``items[i]`` waits on; ``state`` is what
    the transport keeps about the group while it writes it (Kafka: the producer used).
    """

    __slots__ = ("items", "state", "waiters")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.state: Any = None

    def settle(self, index: int, outcome: BaseException | None) -> None:
        """Tell the caller of ``items[index]``: published (``None``) or why not."""
        waiter = self.waiters[index]
        if not waiter.done():  # a caller that gave up has cancelled its waiter
            if outcome is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(outcome)

    def settle_all(self, outcomes: Sequence[BaseException | None]) -> None:
        """``settle`` every member, ``outcomes`` in the order of ``items``."""
        for index, outcome in enumerate(outcomes):
            self.settle(index, outcome)

    def fail(self, exc: BaseException) -> None:
        """Tell every member not settled yet that its publish failed with ``exc``."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(exc)


class Coalescer(Generic[T]):
    """Forms the groups of one publisher and runs ``flush`` on each, one task a group.

    ``flush(group)`` writes the group's items and settles each member, now or later
    (from a callback); if it raises, every member not settled yet gets that error, and
    if its task is cancelled (the bus stopped), a ``PublishError`` saying ``cancelled``.
    """

    def __init__(self, flush: Callable[[Group[T]], Awaitable[None]], *, cancelled: str) -> None:
        self._flush = flush
        self._cancelled = cancelled
        #: The group this iteration's publishes join, until its task takes it.
        self._group: Group[T] | None = None
        #: Calls inside ``calling()``: with none but the caller, no group.
        self._in_flight = 0
        #: A call with company went straight in this event-loop iteration.
        self._direct = False
        self._tasks: set[asyncio.Task[None]] = set()

    def calling(self) -> Self:
        """``with coalescer.calling():`` counts the caller as in flight for the block
        (see ``direct``). A plain ``__enter__``/``__exit__``, not a ``@contextmanager``
        generator: that would cost a few µs on every publish."""
        return self

    def __enter__(self) -> None:
        self._in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._in_flight -= 1

    def direct(self) -> bool:
        """Should the caller (inside ``calling()``) go straight to the transport rather
        than join a group? Yes when nothing is queued ahead of it: no group forming or
        being written, and no other call with company went straight in this event-loop
        iteration. Publishes that only wait for their acks do not count: a steady stream
        (a publish a millisecond, the previous confirm still out) goes straight to the
        wire instead of paying a task and a loop turn for a group of one. A burst sends
        its first two calls straight and groups the rest; a lone call (one awaited
        publish at a time) never waits for a task.
        """
        if self._in_flight == 1:
            return self._group is None
        if self._group is not None or self._tasks or self._direct:
            return False
        # One straight call with company per iteration: the next ones of this
        # iteration (a burst) form a group.
        self._direct = True
        asyncio.get_running_loop().call_soon(self._next_iteration)
        return True

    def _next_iteration(self) -> None:
        self._direct = False

    def join(self, item: T) -> tuple[Group[T], asyncio.Future[None]]:
        """Add ``item`` to this iteration's group (opening it, and its task, if none is
        forming); the group and the future its caller waits on."""
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None:
            group = self._group = Group()
            task = loop.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        waiter: asyncio.Future[None] = loop.create_future()
        group.items.append(item)
        group.waiters.append(waiter)
        return group, waiter

    async def drain(self) -> None:
        """Wait until every group formed so far was handed to the transport (and, where
        ``flush`` waits for them, its outcomes are in)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def cancel(self) -> None:
        """Cancel the groups' tasks (a publisher closed without draining): their members
        get the ``cancelled`` error."""
        for task in self._tasks:
            task.cancel()

    async def _run(self, group: Group[T]) -> None:
        if self._group is group:
            self._group = None  # closed: later publishes form the next group
        try:
            await self._flush(group)
        except asyncio.CancelledError:
            group.fail(PublishError(self._cancelled))
            raise
        except BaseException as exc:  # noqa: BLE001 - every member is told
            group.fail(exc)
