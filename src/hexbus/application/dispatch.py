"""Running handlers: concurrently, isolated, fail-open, fast.

Why not ``asyncio.gather(*(h(e) for h in handlers))``: it creates one Task per handler
per event, and most handlers (a counter, a cache delete, a log line) finish without ever
suspending. Creating and scheduling those Tasks costs ~15x the handler work. Instead
the handlers are started *eagerly*: they run at once, up to their first real
suspension; only handlers that do suspend get a Task that carries on from there. This is
what Python 3.12's eager task factory does; on 3.11 it is done by hand below, including
making ``asyncio.current_task()`` inside the eager part refer to the handler's own
(future) Task, so ``asyncio.timeout()`` at the top of a handler cancels the handler and
never the publisher.

How, cheaply: one *runner* (a generator-based coroutine stepped by hand) awaits the
handlers in turn in a copy of the publisher's context, so a handler that finishes at
once costs what ``await handler(event)`` in a plain loop costs. A handler that suspends
keeps that runner (it becomes the handler's Task); one that changes the context (sets a
contextvar) or cancels its "current task" ends it. Either way a new runner, in a fresh
copy, takes the handlers left, so no handler sees another's context changes, errors or
delays. Measured (``hexbus bench``, 4 no-op handlers): ~1.25 µs a publish, against
~1.6 µs for one ``ctx.run`` per handler and ~17 µs for ``gather``.

Compiled: where hexbus was installed with a C compiler, ``hexbus.application._eager``
does ``start``'s and ``deliver``'s steps in C (~0.4 µs for the same four handlers,
~0.7 µs for the whole publish: the interpreter stepping the runner was most of the
cost). The Python code here stays the
specification and the fallback: for an instrumented dispatcher, on interpreters where
the extension was not built, and with ``HEXBUS_PURE_PYTHON=1``. The compiled start
hands everything rare back to it: a handler that suspends (``_adopt``), a failure
(``failed``), a new current-task stand-in. ``Dispatcher.compiled`` says which runs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import operator
import os
import sys
import types
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass
from functools import partial
from threading import get_ident
from typing import TYPE_CHECKING, Any

from hexbus.application.handlers import Subscription
from hexbus.application.observing import trace_id_of, traced_call
from hexbus.application.publishing import stamp_causation
from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.events import DomainEvent

if TYPE_CHECKING:
    from hexbus.application import _eager
    from hexbus.application.observing import Instrumentation

Start = Callable[
    [DomainEvent, Sequence[Subscription], DeliveryContext], "list[asyncio.Task[None]] | None"
]
Deliver = Callable[
    [DomainEvent, Sequence[Subscription], Mapping[str, str], Any, "str | None"],
    "list[asyncio.Task[None]] | None",
]

__all__ = ["DispatchStats", "Dispatcher", "run_handler"]

logger = logging.getLogger("hexbus.dispatch")

_HAS_EAGER_TASKS = sys.version_info >= (3, 12)
# The registry behind asyncio.current_task() on Python 3.11, where eager start is done by
# hand. From 3.12 on, asyncio's own eager Tasks do it (and later versions keep the
# current task elsewhere), so the hand-made path is used on 3.11 only.
_current_tasks: dict[Any, Any] | None = (
    None if _HAS_EAGER_TASKS else getattr(asyncio.tasks, "_current_tasks", None)
)
_DONE: Any = object()  # what next() returns for a handler that finished without suspending
_set_delivery_context = delivery_context.set  # bound once: read per publish
_cancelled_eagerly: ContextVar[bool] = ContextVar("hexbus_cancelled_eagerly", default=False)

_ENGINE_API = 1  # the _eager.c this file was written against (its ENGINE_API)
# The DeliveryContext fields whose positions _eager.c's deliver() fills in.
_CONTEXT_FIELDS = (
    "event",
    "metadata",
    "attempt",
    "session",
    "explicit_key",
    "subscription",
    "cloudevent_id",
)
_new_context = tuple.__new__  # DeliveryContext(...) without NamedTuple's Python-level __new__
_current = delivery_context.get


def _compiled_engine() -> type[_eager.Engine] | None:
    """The compiled eager start, if built, current and wanted (see the module doc)."""
    if os.environ.get("HEXBUS_PURE_PYTHON"):
        return None
    try:
        _eager: Any = importlib.import_module("hexbus.application._eager")
    except ImportError:  # not built: no compiler at install, or another interpreter
        return None
    if DeliveryContext._fields != _CONTEXT_FIELDS:  # pragma: no cover - a change there
        logger.warning("DeliveryContext changed; _eager.c's deliver() must follow it")
        return None
    if getattr(_eager, "API", None) != _ENGINE_API:  # built from an older _eager.c
        logger.warning(
            "hexbus.application._eager is a stale build (API %s, expected %s); using the "
            "pure-Python dispatcher: reinstall hexbus to rebuild it",
            getattr(_eager, "API", None),
            _ENGINE_API,
        )
        return None
    return _eager.Engine  # type: ignore[no-any-return]


_Engine = _compiled_engine()


@dataclass(slots=True)
class DispatchStats:
    """Counters a bus exposes as ``bus.stats`` (for ``hexbus check`` and tests)."""

    published: int = 0
    handled: int = 0
    failed: int = 0
    timed_out: int = 0
    #: Retries sent (broker tiers, in-process back-off) and dead letters stored.
    retried: int = 0
    dead_lettered: int = 0
    #: Deliveries handed back to the broker unfinished (``stop()``, a lost channel).
    requeued: int = 0


class _EagerTaskStandIn:
    """What ``asyncio.current_task()`` returns while a handler runs eagerly.

    Code in the eager part (``asyncio.timeout``, ``TaskGroup``) keeps a reference to the
    current task and calls ``cancel``/``uncancel``/``cancelling`` on it later; once the
    handler suspends and gets its real Task, every call is forwarded to that Task.
    """

    __slots__ = ("_cancel_msg", "_cancels", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[None] | None = None
        self._cancels = 0
        self._cancel_msg: Any = None

    def bind(self, task: asyncio.Task[None]) -> None:
        self._task = task
        for _ in range(self._cancels):
            task.cancel(self._cancel_msg)

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        self._cancels += 1
        self._cancel_msg = msg
        # In the handler's own context (the eager part runs nowhere else): the runner
        # sees its context changed after this handler and starts the next one clean.
        _cancelled_eagerly.set(True)
        return True

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else self._cancels

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        self._cancels = max(0, self._cancels - 1)
        return self._cancels

    def done(self) -> bool:
        return self._task.done() if self._task is not None else False

    def cancelled(self) -> bool:
        return self._task.cancelled() if self._task is not None else False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    # Explicit forwarding rather than ``__getattr__``: a class with ``__getattr__`` makes
    # every attribute read on it slower, and the dispatcher reads ``_cancels`` per handler.
    def _bound(self, what: str) -> asyncio.Task[None]:
        if self._task is None:
            raise RuntimeError(
                f"current_task().{what}() is not available before the handler's first await "
                "(hexbus starts handlers eagerly); call it after an await"
            )
        return self._task

    def get_name(self) -> str:
        return self._bound("get_name").get_name()

    def set_name(self, value: object) -> None:
        self._bound("set_name").set_name(value)

    def get_coro(self) -> Any:
        return self._bound("get_coro").get_coro()

    def add_done_callback(self, fn: Callable[..., Any], *, context: Context | None = None) -> None:
        self._bound("add_done_callback").add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[..., Any]) -> int:
        return self._bound("remove_done_callback").remove_done_callback(fn)

    def result(self) -> None:
        return self._bound("result").result()

    def exception(self) -> BaseException | None:
        return self._bound("exception").exception()


@types.coroutine
def _resume_in(ctx: Context | None, coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """Carry on a coroutine that was stepped by hand and yielded ``yielded``.

    The task awaiting this first waits on what the coroutine was waiting on; every step
    of the coroutine runs in ``ctx`` (its own context, apart from the task's), and
    exceptions thrown in (cancellation, timeouts) are forwarded into it. ``ctx`` None:
    the caller steps this inside the coroutine's context already.
    """
    send, throw = coro.send, coro.throw
    if ctx is not None:
        send, throw = partial(ctx.run, send), partial(ctx.run, throw)
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - forwarded, not swallowed
            try:
                yielded = throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = send(value)
            except StopIteration as stop:
                return stop.value


def _close_coroutine(coro: Any, _task: object) -> None:
    coro.close()  # a no-op once the coroutine finished


async def run_handler(
    sub: Subscription, event: DomainEvent, timeout: float | None  # noqa: ASYNC109
) -> None:
    """Run one handler to completion in its own context copy, raising its error.

    Broker adapters call this per delivery and retry on the error. It starts the handler
    eagerly, in the caller's task: one that finishes without suspending costs no timer
    (an ``asyncio.timeout`` alone costs ~4 µs, more than a no-op handler); one that
    suspends carries on in the same task under ``timeout``. Staying in one task means
    ``asyncio.timeout`` at the top of a handler, and cancellation by ``stop()``, reach
    the handler itself.
    """
    ctx = copy_context()
    coro: Any = sub.call(event)
    yielded = ctx.run(next, coro.__await__(), _DONE)  # raises what the handler raised
    if yielded is _DONE:
        return
    async with asyncio.timeout(timeout):
        await _resume_in(ctx, coro, yielded)


class Dispatcher:
    """Fans one event out to its subscriptions; failures are logged and counted."""

    #: ``start(event, subs, context)``: the compiled eager start where it is in use,
    #: else ``start_in_python`` (see the module doc; ``compiled`` says which).
    start: Start
    #: ``deliver(event, subs, metadata, session, key)``: compiled, or ``deliver_in_python``.
    deliver: Deliver

    def __init__(self, *, handler_timeout: float | None = 30.0) -> None:
        if handler_timeout is not None and handler_timeout <= 0:
            raise ValueError("handler_timeout must be positive seconds or None")
        self.handler_timeout = handler_timeout
        #: The counters; the same object for the dispatcher's life (the compiled start
        #: holds it, and the memory adapter's consume pipeline shares it): update it,
        #: never replace it.
        self.stats = DispatchStats()
        #: Called after a failure is logged and counted, with the delivery's context:
        #: the memory adapter's opt-in retries and dead letters hang here.
        self.on_failure: (
            Callable[[Subscription, DomainEvent, BaseException, DeliveryContext], None] | None
        ) = None
        self._instrumentation: Instrumentation | None = None
        # Reused between publishes until a handler suspends and keeps it (see start()).
        self._stand_in: _EagerTaskStandIn | None = None
        self._restart = False  # set by a runner that stopped early (see _run_eagerly)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine = (
            None
            if _Engine is None or _current_tasks is None
            else _Engine(
                _current_tasks,
                asyncio.get_running_loop,
                delivery_context,
                asyncio.CancelledError,
                self.stats,
                Subscription,
                DeliveryContext,
                _EagerTaskStandIn,
                self._adopt,
                self._failed_eagerly,
                stamp_causation,
            )
        )
        self._use_engine(self._engine)

    @property
    def compiled(self) -> bool:
        """Whether ``start`` is the compiled one (``hexbus.application._eager``)."""
        return self._engine is not None and self._instrumentation is None

    @property
    def instrumentation(self) -> Instrumentation | None:
        """Spans and metrics (``hexbus.application.observing``); ``None``: off.

        An instrumented dispatcher starts handlers in Python (a span around each);
        setting it back to ``None`` brings the compiled start back where it is built.
        """
        return self._instrumentation

    @instrumentation.setter
    def instrumentation(self, value: Instrumentation | None) -> None:
        self._instrumentation = value
        self._use_engine(self._engine if value is None else None)

    def _use_engine(self, engine: _eager.Engine | None) -> None:
        if engine is None:
            self.start, self.deliver = self.start_in_python, self.deliver_in_python
        else:
            self.start, self.deliver = engine.start, engine.deliver

    def deliver_in_python(
        self,
        event: DomainEvent,
        subs: Sequence[Subscription],
        metadata: Mapping[str, str],
        session: Any,
        key: str | None,
    ) -> list[asyncio.Task[None]] | None:
        """Deliver a published event in process: ``delivery_of``, then ``start``.

        The memory adapter's publish in await mode, after its admission; returns the
        Tasks of handlers that suspended, as ``start`` does.
        """
        delivery = self.delivery_of(event, subs, metadata, session, key)
        if delivery is None:
            return None
        event, context = delivery
        return self.start(event, subs, context)

    def delivery_of(
        self,
        event: DomainEvent,
        subs: Sequence[Subscription],
        metadata: Mapping[str, str],
        session: Any,
        key: str | None,
    ) -> tuple[DomainEvent, DeliveryContext] | None:
        """A published event, counted, and its delivery context; ``None``: no handler.

        Publishing step 5 comes first: inside a handler, the event gets the handled one
        as its cause (``stamp_causation``), so the event returned may be a copy.
        """
        if _current().event is not None:  # inside a handler
            event = stamp_causation(event)
        self.stats.published += 1
        if not subs:
            return None
        return event, _new_context(DeliveryContext, (event, metadata, 1, session, key, None, None))

    def failed(
        self,
        sub: Subscription,
        event: DomainEvent,
        exc: BaseException,
        *,
        timed_out: bool = False,
        context: DeliveryContext | None = None,
    ) -> None:
        """Record a handler failure: never raised to the publisher (fail-open)."""
        stats = self.stats
        stats.failed += 1
        if timed_out:
            stats.timed_out += 1
        logger.error(
            "handler %s %s for %s event %s",
            sub.name,
            f"timed out after {self.handler_timeout}s" if timed_out else "failed",
            event.event_type,
            event.event_id,
            exc_info=None if timed_out else exc,
            extra={
                "event_id": str(event.event_id),
                "event_type": event.event_type,
                "handler": sub.name,
                "subscription": sub.name,
                "attempt": context.attempt if context is not None else 1,
                "trace_id": trace_id_of(context.metadata) if context is not None else None,
                "error": type(exc).__name__,
            },
        )
        hook = self.on_failure
        if hook is not None and context is not None and isinstance(exc, Exception):
            hook(sub, event, exc, context)

    async def dispatch(
        self, event: DomainEvent, subs: Sequence[Subscription], context: DeliveryContext
    ) -> None:
        """Run every subscription's handler for ``event``; return when all have finished."""
        pending = self.start(event, subs, context)
        if pending:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:  # stop() gave up on draining: stop the handlers
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
                raise

    def start_in_python(
        self, event: DomainEvent, subs: Sequence[Subscription], context: DeliveryContext
    ) -> list[asyncio.Task[None]] | None:
        """Start every handler eagerly; return Tasks for those that suspended.

        This is the hot path of the memory adapter, and what the compiled start does.
        The handlers are awaited one after the other by a *runner* coroutine
        (``_run_eagerly``) that is stepped by hand, so a handler that finishes without
        suspending costs what ``await handler(event)`` in a plain loop costs. When a
        handler suspends, the runner stepping it becomes a Task (it carries on that
        handler only) and a new runner, in a fresh context copy, takes the handlers
        left: they share one iterator, so each handler runs once.
        """
        registry = _current_tasks
        if registry is None:
            return self._start_portable(event, subs, context)
        loop: Any = self._loop
        try:
            # asyncio.get_running_loop() costs ~0.15 µs, a tenth of a publish; a loop
            # running in this thread is the running loop (one per thread), so check that.
            if loop._thread_id != get_ident():
                loop = self._loop = asyncio.get_running_loop()
        except AttributeError:  # no loop yet, or one without _thread_id
            loop = self._loop = asyncio.get_running_loop()
        stand_in = self._stand_in
        self._stand_in = None  # a publish from inside a handler must not share it
        if stand_in is None or stand_in._loop is not loop:
            stand_in = _EagerTaskStandIn(loop)
        pending: list[asyncio.Task[None]] | None = None
        remaining = iter(subs)
        previous = registry.get(loop)
        registry[loop] = stand_in
        try:
            while True:
                ctx = copy_context()
                runner = self._run_eagerly(remaining, event, context, ctx, stand_in)
                yielded = ctx.run(next, runner, _DONE)
                if yielded is _DONE:
                    if not self._restart:
                        break
                    # A handler changed the context or cancelled "itself": the handlers
                    # left start clean, in a fresh copy with a fresh stand-in.
                    self._restart = False
                    if stand_in._cancels:
                        stand_in = _EagerTaskStandIn(loop)
                        registry[loop] = stand_in
                    continue
                # A handler suspended: a Task carries its runner on, and the stand-in it
                # may have seen as its current task now forwards to that Task.
                sub = subs[len(subs) - 1 - operator.length_hint(remaining)]
                task = self._task_for(loop, ctx, runner, yielded, sub, event, stand_in)
                stand_in = _EagerTaskStandIn(loop)
                registry[loop] = stand_in
                if pending is None:
                    pending = [task]
                else:
                    pending.append(task)
        finally:
            if previous is None:
                registry.pop(loop, None)
            else:
                registry[loop] = previous
            self._stand_in = stand_in
        return pending

    @types.coroutine
    def _run_eagerly(
        self,
        remaining: Iterator[Subscription],
        event: DomainEvent,
        context: DeliveryContext,
        ctx: Context,
        stand_in: _EagerTaskStandIn,
    ) -> Generator[Any, Any, None]:
        """Await the handlers left in ``remaining`` in turn, inside ``ctx``.

        Runs inside ``ctx`` (``start`` steps it with ``ctx.run``); a handler that changes
        the context (a contextvar set) or cancels its stand-in makes the runner stop, so
        the next handler starts in a clean copy: handlers stay isolated.
        """
        _set_delivery_context(context)
        clean = ctx.copy()
        handled = 0  # added to the stats once: an attribute increment per handler costs
        traced = self.instrumentation
        for sub in remaining:
            try:
                if traced is None:
                    yield from sub.call(event)
                else:  # a process span around the handler (hexbus.application.observing)
                    yield from traced_call(traced, sub, event, context)
            except Exception as exc:  # noqa: BLE001 - fail-open by contract
                self.failed(sub, event, exc, context=context)
            except asyncio.CancelledError as exc:
                if stand_in._task is not None:  # cancelled in its Task: stop, or time out
                    self.stats.handled += handled
                    raise
                self.failed(sub, event, exc, context=context)  # raised by the handler itself
            else:
                handled += 1
            if ctx != clean:  # a contextvar set, or its stand-in cancelled (it sets one)
                # Still eager (no Task yet): the handlers left must not see this.
                # Resumed in a Task: the others were started already; nothing to do.
                self._restart = stand_in._task is None
                break
        self.stats.handled += handled

    def _task_for(  # noqa: PLR0917 - _adopt's arguments, in _adopt's order
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: Context,
        runner: Any,
        yielded: Any,
        sub: Subscription,
        event: DomainEvent,
        stand_in: _EagerTaskStandIn,
    ) -> asyncio.Task[None]:
        """The Task that carries on ``runner``, whose handler suspended on ``yielded``."""
        task = loop.create_task(self._finish(ctx, runner, yielded, sub, event))
        # Cancelled before its first step, the Task never throws into the handler: close
        # it then, so its finally blocks run now and not at garbage collection.
        task.add_done_callback(partial(_close_coroutine, runner))
        stand_in.bind(task)
        return task

    def _adopt(  # noqa: PLR0917 - called by _eager.c, positionally (vectorcall)
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: Context,
        coro: Any,
        yielded: Any,
        sub: Subscription,
        event: DomainEvent,
        context: DeliveryContext,
        stand_in: _EagerTaskStandIn,
    ) -> asyncio.Task[None]:
        """A Task for a handler the compiled start started and that suspended.

        ``coro`` waits on ``yielded``; a runner for it alone (``_carry``) does what
        ``_run_eagerly`` does for the handler it was stepping when that suspended.
        """
        runner = self._carry(coro, yielded, sub, event, context)
        ctx.run(next, runner)  # to its first yield (``yielded``): no handler code runs
        return self._task_for(loop, ctx, runner, yielded, sub, event, stand_in)

    @types.coroutine
    def _carry(
        self,
        coro: Any,
        yielded: Any,
        sub: Subscription,
        event: DomainEvent,
        context: DeliveryContext,
    ) -> Generator[Any, Any, None]:
        """``_run_eagerly``'s part for one handler, carried on from a suspension."""
        try:
            yield from _resume_in(None, coro, yielded)
        except Exception as exc:  # noqa: BLE001 - fail-open by contract
            self.failed(sub, event, exc, context=context)
        else:  # a CancelledError (stop, or the deadline) goes on to _finish
            self.stats.handled += 1

    def _failed_eagerly(
        self, sub: Subscription, event: DomainEvent, exc: BaseException, context: DeliveryContext
    ) -> None:
        """The compiled start's report of a handler that raised before suspending."""
        self.failed(sub, event, exc, context=context)

    async def _finish(
        self, ctx: Context, runner: Any, yielded: Any, sub: Subscription, event: DomainEvent
    ) -> None:
        """Carry on a runner whose handler suspended, under ``handler_timeout``.

        The runner counts the handler and logs its errors; what is left here is the
        deadline and a cancellation by ``stop()``, reported against that handler.
        """
        deadline = asyncio.timeout(self.handler_timeout)
        try:
            async with deadline:
                await _resume_in(ctx, runner, yielded)
        except Exception as exc:  # noqa: BLE001 - fail-open by contract
            self.failed(
                sub, event, exc, timed_out=deadline.expired(), context=ctx.get(delivery_context)
            )
        except asyncio.CancelledError as exc:
            self.failed(sub, event, exc)
            raise
        else:
            if deadline.expired():  # it turned the cancellation into an error of its own
                self.stats.timed_out += 1

    def _start_portable(
        self, event: DomainEvent, subs: Sequence[Subscription], context: DeliveryContext
    ) -> list[asyncio.Task[None]] | None:
        loop = asyncio.get_running_loop()
        token = delivery_context.set(context)
        traced = self.instrumentation
        try:
            return [
                self._spawn(
                    loop,
                    sub,
                    event,
                    sub.call(event) if traced is None else traced_call(traced, sub, event, context),
                    copy_context(),
                    context=context,
                )
                for sub in subs
            ] or None
        finally:
            delivery_context.reset(token)

    def _spawn(
        self,
        loop: asyncio.AbstractEventLoop,
        sub: Subscription,
        event: DomainEvent,
        coro: Awaitable[None],
        ctx: Context,
        *,
        context: DeliveryContext,
    ) -> asyncio.Task[None]:
        """Portable path: a (3.12+: eager) Task per handler."""

        async def run() -> None:
            deadline = asyncio.timeout(self.handler_timeout)
            try:
                async with deadline:
                    await coro
            except Exception as exc:  # noqa: BLE001 - fail-open by contract
                self.failed(sub, event, exc, timed_out=deadline.expired(), context=context)
            else:
                self.stats.handled += 1

        if _HAS_EAGER_TASKS:
            return asyncio.Task(run(), loop=loop, context=ctx, eager_start=True)  # type: ignore[call-arg]
        return loop.create_task(run(), context=ctx)
