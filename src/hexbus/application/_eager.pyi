"""Types of the compiled eager start (``_eager.c``); see ``hexbus.application.dispatch``."""

import asyncio
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

API: int

class Engine:
    def __init__(
        self,
        registry: dict[Any, Any],
        get_running_loop: Callable[[], asyncio.AbstractEventLoop],
        delivery_var: ContextVar[Any],
        cancelled_error: type[BaseException],
        stats: Any,
        subscription_type: type,
        context_type: type,
        new_stand_in: Callable[[asyncio.AbstractEventLoop], Any],
        adopt: Callable[..., asyncio.Task[None]],
        failed: Callable[..., None],
        stamp_causation: Callable[[Any], Any],
    ) -> None: ...
    def start(
        self, event: Any, subs: Sequence[Any], context: Any, /
    ) -> list[asyncio.Task[None]] | None: ...
    def deliver(
        self, event: Any, subs: Sequence[Any], metadata: Any, session: Any, key: str | None, /
    ) -> list[asyncio.Task[None]] | None: ...
