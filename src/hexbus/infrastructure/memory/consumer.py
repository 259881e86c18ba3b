"""The memory adapter's redelivery: the opt-in retries and dead letters of a failure.

The first attempt of every handler runs in the publish itself (``Dispatcher``, the fast
path). When it fails and the bus was configured to redeliver (``MemoryConfig``), the
dispatcher hands the failure here; the consume pipeline decides (retry after a delay, or
dead-letter), and retries run in background tasks of the bus, so ``publish`` never
waits for a back-off. ``stop()`` cuts pending back-offs short: remaining attempts run at
once, within the drain timeout, and what still fails is dead-lettered, not forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from hexbus.application.consuming import Action, ConsumePipeline, Outcome
from hexbus.application.handlers import Subscription
from hexbus.domain.context import DeliveryContext
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import DeadLetter
from hexbus.infrastructure.memory.dead_letters import DeadLetterStore

__all__ = ["Redelivery"]


class Redelivery:
    """Retries and dead letters for one memory bus."""

    def __init__(
        self,
        pipeline: ConsumePipeline,
        store: DeadLetterStore,
        track: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self._track = track
        #: Set by ``stop()``: back-offs end at once so the drain can finish the retries.
        self.hurry = asyncio.Event()

    def failed(
        self, sub: Subscription, event: DomainEvent, exc: BaseException, ctx: DeliveryContext
    ) -> None:
        """The dispatcher's failure hook (already logged and counted there)."""
        outcome = self.pipeline.decide(sub.name, exc, ctx.attempt or 1)
        if outcome.action is Action.RETRY:
            self._spawn(self._carry_on((sub,), event, ctx, outcome))
        else:
            self._dead_letter(outcome, event, ctx)

    def replay(self, dead: list[DeadLetter]) -> None:
        """Deliver dead letters again, from attempt 1, to their subscription only
        (the bus reports which in its ``ReplayReport``; memory letters keep their event)."""
        for letter in dead:
            if letter.event is None:
                continue
            ctx = DeliveryContext(letter.event, dict(letter.headers), 1)
            self._spawn(self._deliver(letter.subscription, letter.event, ctx))

    def _spawn(self, coro: Any) -> None:
        self._track(asyncio.get_running_loop().create_task(coro))

    async def _deliver(self, name: str, event: DomainEvent, ctx: DeliveryContext) -> None:
        outcome = await self.pipeline.deliver(
            name, (event, ctx.metadata), attempt=1, key=ctx.explicit_key, session=ctx.session
        )
        subs = self.pipeline.subscriptions.for_delivery(name, type(event))
        await self._carry_on(subs, event, ctx, outcome)

    async def _carry_on(
        self,
        subs: tuple[Subscription, ...],
        event: DomainEvent,
        ctx: DeliveryContext,
        outcome: Outcome,
    ) -> None:
        pipeline = self.pipeline
        while outcome.action is Action.RETRY:
            if not self.hurry.is_set() and outcome.delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(outcome.delay):
                        await self.hurry.wait()
            pipeline.settled(outcome)
            outcome = await pipeline.run(
                subs,
                event,
                ctx.metadata,
                subscription=outcome.subscription or "",
                attempt=outcome.attempt + 1,
                key=ctx.explicit_key,
                session=ctx.session,
            )
        if outcome.action is Action.DEAD_LETTER:
            self._dead_letter(outcome, event, ctx)

    def _dead_letter(self, outcome: Outcome, event: DomainEvent, ctx: DeliveryContext) -> None:
        if self.store.add(outcome, event, ctx.metadata):
            self.pipeline.settled(outcome)
