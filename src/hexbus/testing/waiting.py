"""Polling with a deadline: the only honest way to assert on asynchronous delivery.

Why not ``await asyncio.sleep(0.5); assert ...``: a fixed sleep is either too short on a
loaded CI machine (flaky) or too long everywhere else (slow). ``eventually`` re-checks a
condition until it holds or a deadline passes, so a test is as fast as the transport
allows and fails only when the behaviour is really missing.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]

#: A condition: returns something truthy when satisfied (or raises ``AssertionError``
#: while it is not yet); may be ``async``.
Condition = Callable[[], object | Awaitable[object]]


async def eventually(
    condition: Condition,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> None:
    """Wait until ``condition()`` is truthy, failing the test after ``timeout`` seconds.

    ``condition`` may return a bool (``lambda: len(seen) == 3``) or contain plain
    ``assert`` statements: an ``AssertionError`` counts as "not yet", and the last one is
    re-raised (chained) when the deadline passes, so the failure shows the real
    difference. ``message`` (or a callable producing it, evaluated only on failure)
    describes what was awaited, e.g. what the handler has seen so far.

    The condition is checked once more after the deadline, so a slow event loop never
    turns a satisfied condition into a failure.
    """
    if timeout <= 0:
        raise ValueError("eventually(timeout=...) must be positive seconds")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: AssertionError | None = None
    while True:
        expired = loop.time() >= deadline
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            last_error = exc
        else:
            if result:
                return
            last_error = None
        if expired:
            break
        await asyncio.sleep(interval)
    text = message() if callable(message) else message
    what = text or getattr(condition, "__qualname__", repr(condition))
    detail = f": {last_error}" if last_error is not None else ""
    raise AssertionError(
        f"condition not met within {timeout:g}s ({what}){detail}"
    ) from last_error
