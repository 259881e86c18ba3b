"""The shared deadline watchdog (``hexbus.application.deadlines``): a late publish is
cancelled and told apart from any other cancellation; a finished one is left alone."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from hexbus.application.deadlines import Deadlines


async def _guarded(deadlines: Deadlines, wait: asyncio.Future[None]) -> str:
    """A publish as the transports write it; says how it ended."""
    deadline = deadlines.start(asyncio.current_task())
    try:
        await wait
    except asyncio.CancelledError:
        if not deadline.timed_out():
            raise
    finally:
        deadline.end()
    return "timed out" if deadline.expired else "done"


async def test_a_late_call_times_out_and_its_task_is_not_left_cancelling() -> None:
    deadlines = Deadlines(0.1)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    began = time.monotonic()
    assert await _guarded(deadlines, never) == "timed out"
    assert 0.09 <= time.monotonic() - began < 5
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await deadlines.close()


async def test_a_call_that_finished_in_time_is_left_alone() -> None:
    deadlines = Deadlines(0.1)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(done.set_result, None)
    assert await _guarded(deadlines, done) == "done"
    # The watchdog passes it by: a later wait in the same task is not cancelled.
    later: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.3, later.set_result, None)
    await later
    await deadlines.close()


async def test_the_callers_own_cancellation_stays_a_cancellation() -> None:
    deadlines = Deadlines(5.0)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    call = asyncio.create_task(_guarded(deadlines, never))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await deadlines.close()


async def test_a_deadline_and_a_cancellation_together_stay_a_cancellation() -> None:
    """The caller cancels too (``stop()``): the deadline's cancellation is taken back,
    the caller's is not, so the call ends cancelled rather than timed out."""
    deadlines = Deadlines(0.1)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        deadline = deadlines.start(asyncio.current_task())
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the caller's own, before the deadline passes
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as a transport might
            await never
        try:
            await asyncio.sleep(5)  # the deadline passes while still cancelling
        except asyncio.CancelledError:
            if not deadline.timed_out():
                raise
        finally:
            deadline.end()
        return "timed out"

    task = asyncio.create_task(call())
    with pytest.raises(asyncio.CancelledError):
        await task
    await deadlines.close()
