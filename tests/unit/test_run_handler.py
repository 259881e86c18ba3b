"""``run_handler``: one handler, run to completion for a broker delivery, raising."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from hexbus import DomainEvent
from hexbus.application.dispatch import run_handler
from hexbus.application.handlers import SubscriptionTable


class RunPing(DomainEvent, event_type="ut.run_handler.ping"):
    n: int = 0


flag: contextvars.ContextVar[str] = contextvars.ContextVar("flag", default="caller")


def _sub(handler: object) -> object:
    table = SubscriptionTable()
    sub = table.add(RunPing, handler)
    assert sub is not None
    return sub


async def test_errors_are_raised_before_and_after_a_suspension() -> None:
    async def eager_fail(event: RunPing) -> None:
        raise ValueError("eager")

    async def late_fail(event: RunPing) -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    with pytest.raises(ValueError, match="eager"):
        await run_handler(_sub(eager_fail), RunPing(), 1.0)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="late"):
        await run_handler(_sub(late_fail), RunPing(), 1.0)  # type: ignore[arg-type]


async def test_a_hanging_handler_times_out() -> None:
    async def hang(event: RunPing) -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        await run_handler(_sub(hang), RunPing(), 0.05)  # type: ignore[arg-type]


async def test_contextvar_changes_stay_inside_the_handler() -> None:
    seen: list[str] = []

    async def setter(event: RunPing) -> None:
        flag.set("handler")
        await asyncio.sleep(0)
        seen.append(flag.get())

    await run_handler(_sub(setter), RunPing(), 1.0)  # type: ignore[arg-type]
    assert seen == ["handler"]
    assert flag.get() == "caller"


async def test_asyncio_timeout_at_the_top_of_a_handler_times_out_the_handler() -> None:
    async def own_timeout(event: RunPing) -> None:
        async with asyncio.timeout(0.02):
            await asyncio.sleep(5)

    async with asyncio.timeout(3):
        with pytest.raises(TimeoutError):
            await run_handler(_sub(own_timeout), RunPing(), 10.0)  # type: ignore[arg-type]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_cancelling_the_caller_cancels_the_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(event: RunPing) -> None:
        started.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(run_handler(_sub(slow), RunPing(), 10.0))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_plain_def_handlers_run_in_a_thread_and_raise() -> None:
    def sync_fail(event: RunPing) -> None:
        raise RuntimeError("sync")

    with pytest.raises(RuntimeError, match="sync"):
        await run_handler(_sub(sync_fail), RunPing(), 1.0)  # type: ignore[arg-type]
