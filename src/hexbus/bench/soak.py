"""The soak benchmark: a million events through one consumer, memory read as it goes.

What it shows: that a long-running consumer's memory stays flat — nothing per event is
kept (no growing dedupe set, stats list, task set, context or log buffer). One process
publishes ``events`` events in chunks and consumes them through a hexbus subscription
on the configured adapter (built by the adapter registry, like any application's bus);
at checkpoints (by events *handled*) it reads the process's resident set size now
(``VmRSS``) and its peak so far (``VmHWM``, from ``/proc/self/status``; ``ru_maxrss``
where there is no ``/proc``), and the number of objects the garbage collector tracks.

Publishing is kept at most ``window`` events ahead of the consumer, so the broker's
queue (and the publisher's buffers) stay bounded and what grows, if anything, is the
consumer. Every run uses a fresh exchange / topic prefix and service name.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hexbus.bench.harness import body_text
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import Readiness
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["SoakTick", "checkpoints_for", "memory_now", "run_soak"]

CHUNK = 500


class SoakTick(DomainEvent, event_type="hexbus.bench.soak.tick"):
    """The soak's event: the benchmark's 200-byte body."""

    seq: int
    text: str


def memory_now() -> dict[str, float]:
    """Resident set size now and at its peak, in MiB (``/proc``; else ``ru_maxrss``)."""
    figures: dict[str, float] = {}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = (
                    int(value.split()[0]) / 1024
                )
    if "peak_rss_mib" not in figures:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is KiB on Linux, bytes on macOS
        figures["peak_rss_mib"] = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return figures


def checkpoints_for(events: int) -> list[int]:
    """Where to read memory: 1%, 10%, 50% and 100% of the run (100k/500k/1M at 1M),
    without repeats, always ending with ``events``."""
    marks = sorted({max(1, events * pct // 100) for pct in (1, 10, 50, 100)})
    return marks


def _settings_for(settings: HexbusSettings, tag: str) -> HexbusSettings:
    """The configured connection, on names of this run's own (nothing shared)."""
    return settings.model_copy(
        update={
            "service_name": f"hexbus-soak-{tag}",
            "rabbitmq_exchange": f"hexbus-soak.{tag}",
            "kafka_topic_prefix": f"hexbus-soak.{tag}.",
            "max_attempts": 1,
        }
    )


async def run_soak(
    settings: HexbusSettings,
    *,
    events: int = 1_000_000,
    window: int = 5_000,
    checkpoints: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Publish and consume ``events`` on ``settings.adapter``; memory at checkpoints."""
    if events < 1 or window < CHUNK:
        raise ValueError(f"events must be >= 1 and window >= {CHUNK}")
    marks = sorted(set(checkpoints or checkpoints_for(events)))
    tag = uuid.uuid4().hex[:10]
    run_settings = _settings_for(settings, tag)
    bus = build_bus(run_settings)
    handled = 0
    progressed = asyncio.Event()

    async def count(event: SoakTick) -> None:
        nonlocal handled
        handled += 1
        progressed.set()

    bus.subscribe(SoakTick, count, name="soak")
    readings: list[dict[str, Any]] = []
    began = time.perf_counter()
    start_memory = memory_now()
    await bus.start()
    try:
        if isinstance(bus, Readiness):
            await bus.wait_ready(60)
        published = 0
        next_mark = 0
        while handled < events:
            if published < events and published - handled < window:
                chunk = range(published, min(events, published + CHUNK))
                await bus.publish_many(SoakTick(seq=i, text=body_text(i)) for i in chunk)
                published = chunk.stop
            else:
                progressed.clear()
                await asyncio.wait_for(progressed.wait(), 120)
            while next_mark < len(marks) and handled >= marks[next_mark]:
                reading: dict[str, Any] = {
                    "checkpoint": marks[next_mark],
                    "handled": handled,  # read after the chunk that crossed it
                    "seconds": round(time.perf_counter() - began, 1),
                    **memory_now(),
                    "gc_objects": len(gc.get_objects()),
                }
                readings.append(reading)
                next_mark += 1
                if progress is not None:
                    progress(
                        f"{handled:,} handled: rss {reading['rss_mib']:.1f} MiB, "
                        f"peak {reading['peak_rss_mib']:.1f} MiB, "
                        f"{reading['gc_objects']:,} gc objects"
                    )
        elapsed = time.perf_counter() - began
    finally:
        await _clean_up(bus, run_settings)
        await bus.stop()
    return {
        "adapter": settings.adapter,
        "events": events,
        "handled": handled,
        "seconds": round(elapsed, 1),
        "events_per_s": round(handled / elapsed),
        "before_start": start_memory,
        "checkpoints": readings,
        "rss_growth_mib": _growth(readings),
    }


def _growth(readings: Sequence[dict[str, Any]]) -> float | None:
    """RSS at the last checkpoint minus RSS at the first (warm) one."""
    if len(readings) < 2 or "rss_mib" not in readings[0]:
        return None
    return round(float(readings[-1]["rss_mib"]) - float(readings[0]["rss_mib"]), 1)


async def _clean_up(bus: Any, settings: HexbusSettings) -> None:
    """Delete the run's queues, exchange, topics (best effort: a failed clean-up must not
    hide the figures). The broker helpers are imported only for their adapter."""
    try:
        async with asyncio.timeout(60):
            delete = getattr(bus, "delete_subscription", None)
            if delete is not None:
                await delete("soak")
            if settings.adapter != "memory":
                broker = importlib.import_module(f"hexbus.bench.{settings.adapter}")
                await broker.delete_run(settings)
    except Exception:  # noqa: BLE001 - clean-up is best effort
        return
