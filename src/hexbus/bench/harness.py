"""The broker benchmark harness: rows, sides, interleaved repeats, medians, ratios.

Why one harness for both brokers: what is measured and how (which rows, the order of
the sides, the medians, the ratios, the JSON shape) must not differ between RabbitMQ
and Kafka, or the two tables could not be read side by side. Each broker module only
says how each *side* sends and receives (an ``Endpoint`` on a fresh queue or topic);
this module runs the rows. It imports no broker client, so it is unit-tested without a
broker (``tests/unit/test_bench_harness.py``).

The sides, in one process, against the same broker, with the same durability:

- ``hexbus``: the library's bus (``publish``, ``publish_many``, a subscription);
- ``raw_plain``: the raw client sending a plain 200-byte JSON body, what a hand-rolled
  service would send (no envelope, no headers beyond the content type);
- ``raw_same_bytes``: the raw client sending hexbus's exact message (the same CloudEvents
  headers, key and body, built by hexbus's own encoder), so ``hexbus / raw_same_bytes``
  is the cost of the library minus the cost of its wire format;
- ``faststream``: FastStream (a benchmark-only peer) with a pydantic model of the body.

The rows:

- ``single``: one awaited publish at a time (a request handler publishing one event);
  the sides take turns publish by publish (``run_single``), each on its own endpoint;
- ``concurrent``: ``concurrency`` publishes gathered at once (many requests at once);
- ``batch``: the side's batch path (``publish_many``; raw: N sends, then wait for all);
- ``e2e``: publish N through the batch path, one consumer counts N (events/s);
- ``paced``: ``rate`` events/s, open loop, with a consumer: publish→handler p50/p99;
  the sides take turns in stretches of 100 events (``run_paced``), each on its own
  endpoint and consumer.

Each repeat runs every row on every side, the sides in a rotating order (the first
side of a row is not always the same one), each run on a fresh queue/topic; figures are
medians over the repeats, ratios are hexbus's median over the other side's median.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "BODY_BYTES",
    "LATENCY_ROWS",
    "ROWS",
    "SIDES",
    "Endpoint",
    "Plan",
    "Side",
    "body_text",
    "encode_plain",
    "make_plan",
    "median",
    "parse_rows",
    "percentile",
    "plain_body",
    "plain_payload",
    "report",
    "run_paced",
    "run_plan",
    "run_single",
]

ROWS = ("single", "concurrent", "batch", "e2e", "paced")
LATENCY_ROWS = frozenset({"paced"})
SIDES = ("hexbus", "raw_plain", "raw_same_bytes", "faststream")
BODY_BYTES = 200
_TIMEOUT = 120.0  # seconds a run may take before the benchmark gives up on it

Consume = Callable[[int], None]
Progress = Callable[[str], None]


def body_text(seq: int) -> str:
    """The ``text`` that makes ``{"seq":<seq>,"text":"..."}`` exactly 200 bytes."""
    overhead = len('{"seq":,"text":""}') + len(str(seq))
    return "x" * max(0, BODY_BYTES - overhead)


def plain_payload(seq: int) -> dict[str, Any]:
    """The plain raw side's event as a hand-rolled service holds it before sending."""
    return {"seq": seq, "text": body_text(seq)}


def encode_plain(payload: Mapping[str, Any]) -> bytes:
    """How the plain raw side encodes its event, in every publish (compact JSON).

    Why inside the timing: a service cannot encode an event before it exists. hexbus
    and FastStream encode theirs in each publish; so does the plain raw side (until
    2026-11-25 it sent messages built before the timing, which measured the client
    without the work every service does). ``raw_same_bytes`` still sends prebuilt
    messages: it is the floor of the client alone with hexbus's bytes.
    """
    return json.dumps(payload, separators=(",", ":")).encode()


def plain_body(seq: int) -> bytes:
    """The raw side's body: the same JSON hexbus puts in its body (seq + text), 200 bytes."""
    return encode_plain(plain_payload(seq))


class Endpoint(Protocol):
    """One side on one fresh queue/topic: a publisher and, if asked, a consumer."""

    async def send(self, seq: int) -> None:
        """Publish item ``seq`` and return once the broker has it (confirm / ack)."""

    async def send_many(self, start: int, stop: int) -> None:
        """Publish items ``start..stop-1`` through the side's batch path; return when all
        are confirmed."""

    async def close(self) -> None:
        """Stop publishing and consuming; delete the queue/topic."""


class Side(Protocol):
    """How one contender talks to the broker (one per side per broker module)."""

    name: str
    #: What ``batch`` means for this side, and how its consumer runs (printed with the
    #: results, so a reader knows what was compared).
    batch_note: str
    consumer_note: str

    async def endpoint(self, items: int, consume: Consume | None) -> Endpoint:
        """A fresh endpoint with ``items`` events ready (made outside any timing; each
        side encodes them in its publishes, except ``raw_same_bytes``, prebuilt);
        with ``consume``, a consumer calls it with each message's ``seq`` and the
        endpoint is returned once that consumer is ready."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run; the defaults finish in about three minutes per broker.

    10,000 events per throughput row: with 2,000, one-off costs of a topic or queue made
    for the run (on Kafka a first large batch meeting a partition whose leader is still
    settling: a 100 ms retry) swung the figures of some sides 2-5x between runs.
    """

    rows: tuple[str, ...] = ROWS
    repeats: int = 3
    single: int = 300
    concurrency: int = 10_000
    batch: int = 10_000
    e2e: int = 10_000
    rate: float = 1_000.0
    paced_seconds: float = 1.0

    def __post_init__(self) -> None:
        unknown = [row for row in self.rows if row not in ROWS]
        if unknown or not self.rows:
            raise ValueError(f"unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
        counts = (self.repeats, self.single, self.concurrency, self.batch, self.e2e)
        if min(counts) < 1 or self.rate <= 0 or self.paced_seconds <= 0:
            raise ValueError("repeats, counts, rate and paced_seconds must be positive")

    def events(self, row: str) -> int:
        """How many events one run of ``row`` publishes."""
        if row == "paced":
            return max(1, round(self.rate * self.paced_seconds))
        return int(getattr(self, "concurrency" if row == "concurrent" else row))


def make_plan(
    *,
    rows: str = "all",
    repeats: int | None = None,
    events: int | None = None,
    rate: float | None = None,
) -> Plan:
    """The plan of ``hexbus bench --adapter <broker>``: ``events`` sets the concurrent,
    batch and end-to-end counts (single: at most 300, it waits a round trip per event);
    ``None`` keeps each default."""
    plan = Plan(rows=parse_rows(rows))
    changes: dict[str, Any] = {}
    if repeats is not None:
        changes["repeats"] = repeats
    if events is not None:
        changes.update(
            single=min(events, plan.single), concurrency=events, batch=events, e2e=events
        )
    if rate is not None:
        changes["rate"] = rate
    return replace(plan, **changes)


def parse_rows(raw: str) -> tuple[str, ...]:
    """``"single,e2e"`` → ``("single", "e2e")`` in the canonical order; ``all`` = every row."""
    wanted = {part.strip() for part in raw.split(",") if part.strip()}
    if not wanted or wanted == {"all"}:
        return ROWS
    unknown = sorted(wanted - set(ROWS))
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    return tuple(row for row in ROWS if row in wanted)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(slots=True)
class _Counter:
    """Counts consumed messages; latency per ``seq`` when send times are recorded."""

    expected: int
    sent_at: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seen: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, seq: int) -> None:
        sent = self.sent_at.get(seq)
        if sent is not None:
            self.latencies.append(time.perf_counter() - sent)
        self.seen += 1
        if self.seen >= self.expected:
            self.done.set()


#: Untimed one-at-a-time publishes before the ``single`` row is measured.
_SINGLE_WARM_UP = 50


async def _timed(run: Callable[[], Awaitable[None]], events: int) -> float:
    began = time.perf_counter()
    await asyncio.wait_for(run(), _TIMEOUT)
    return events / (time.perf_counter() - began)


@asynccontextmanager
async def _opened(
    sides: Sequence[Side], items: int, consumers: Sequence[Consume | None]
) -> AsyncIterator[list[Endpoint]]:
    """Every side's endpoint (``consumers[i]`` for side ``i``), all opened before the
    block runs and all closed when it ends: the rows whose sides take turns."""
    endpoints: list[Endpoint] = []
    try:
        for side, consume in zip(sides, consumers, strict=True):
            endpoints.append(await side.endpoint(items, consume))
        yield endpoints
    finally:
        for endpoint in endpoints:
            await endpoint.close()


async def run_single(sides: Sequence[Side], plan: Plan) -> dict[str, dict[str, float]]:
    """One run of the ``single`` row on every side at once: per side ``{"events_per_s":
    ...}``, the number of publishes over the time its own publishes took.

    Why the sides take turns publish by publish (side A's first, B's first, ..., then
    each side's second, the order rotating) instead of each doing its 300 in a block:
    one awaited publish is a broker round trip, which the broker's state sets (a log
    flush, the other core's load) and which drifts over seconds. In blocks, that drift
    swung one side's figure up to 2.6x between the repeats of one run and decided the
    ratios of sides a few per cent apart; publish by publish, every side meets the same
    broker. Each side still sends one publish at a time, on its own endpoint, warmed
    first.
    """
    n = plan.events("single")
    async with _opened(sides, n, [None] * len(sides)) as endpoints:
        for endpoint in endpoints:
            await endpoint.send_many(0, min(n, 10))  # connection and route warm, untimed
            # And the one-at-a-time path itself (a lone publish skips the batching of
            # the others): its first round trips to a topic just created vary
            # several-fold between runs on a busy broker.
            for seq in range(min(n, _SINGLE_WARM_UP)):
                await endpoint.send(seq)
        spent = [0.0] * len(endpoints)
        clock = time.perf_counter
        async with asyncio.timeout(_TIMEOUT * len(endpoints)):
            for seq in range(n):
                for turn in range(len(endpoints)):
                    index = (seq + turn) % len(endpoints)
                    began = clock()
                    await endpoints[index].send(seq)
                    spent[index] += clock() - began
        return {
            side.name: {"events_per_s": n / spent[index]} for index, side in enumerate(sides)
        }


async def run_row(side: Side, row: str, plan: Plan) -> dict[str, float]:
    """One run of a throughput row (``concurrent``, ``batch``, ``e2e``) on ``side``:
    ``{"events_per_s": ...}``. ``single`` and ``paced`` run every side at once
    (``run_single``, ``run_paced``)."""
    if row not in ("concurrent", "batch", "e2e"):
        raise ValueError(
            f"run_row runs the concurrent, batch and e2e rows, not {row!r}; "
            "single and paced run every side at once (run_single, run_paced)"
        )
    n = plan.events(row)
    counter = _Counter(n) if row == "e2e" else None
    async with _opened([side], n, [counter]) as (endpoint,):
        if counter is not None:
            consumed = counter.done

            async def run() -> None:
                await endpoint.send_many(0, n)
                await consumed.wait()

        else:
            await endpoint.send_many(0, min(n, 10))  # connection and route warm, untimed
            if row == "concurrent":

                async def run() -> None:
                    await asyncio.gather(*(endpoint.send(seq) for seq in range(n)))

            else:

                async def run() -> None:
                    await endpoint.send_many(0, n)

        return {"events_per_s": await _timed(run, n)}


#: Events one side sends at ``rate`` before the next side's turn in the ``paced`` row.
_PACED_STRETCH = 100
#: Untimed events each side sends and consumes before the ``paced`` row is measured.
_PACED_WARM_UP = 10


async def run_paced(sides: Sequence[Side], plan: Plan) -> dict[str, dict[str, float]]:
    """One run of the ``paced`` row on every side at once: per side publish→handler
    ``{"p50_ms", "p99_ms", "max_ms"}`` over its ``plan.events("paced")`` events.

    Why the sides take turns in stretches (side A sends 100 events at ``rate``, then B
    its 100, ..., then A its next 100, the order rotating each round) instead of each
    sending all its events in a block of its own: a round trip through the broker
    drifts over seconds (a log flush, a quorum queue's WAL, the other core's load), and
    in blocks the p50 of one side swung from 0.9 to 1.5 ms between repeats of one run,
    more than the sides differ. In stretches every side meets the same broker over the
    same seconds. What one side sees is unchanged: its events at ``rate``, one after
    another, each publish its own task (open loop), on its own endpoint and consumer,
    warmed first; the offered load on the broker stays ``rate``.
    """
    n = plan.events("paced")
    warm = _PACED_WARM_UP
    counters = [_Counter(warm) for _ in sides]  # first the warm-up, then n more
    async with _opened(sides, n + warm, counters) as endpoints:
        async with asyncio.timeout(_TIMEOUT):
            for endpoint in endpoints:  # connection, route and consumer warm, untimed
                await endpoint.send_many(0, warm)
            for counter in counters:
                await counter.done.wait()
                counter.expected, counter.done = warm + n, asyncio.Event()
        turns = _stretches(len(endpoints), n, warm)
        timeout = _TIMEOUT + len(turns) / plan.rate
        await asyncio.wait_for(_paced(endpoints, counters, turns, plan.rate), timeout)
        return {
            side.name: {
                "p50_ms": percentile(counter.latencies, 0.50) * 1000,
                "p99_ms": percentile(counter.latencies, 0.99) * 1000,
                "max_ms": max(counter.latencies, default=math.nan) * 1000,
            }
            for side, counter in zip(sides, counters, strict=True)
        }


def _stretches(sides: int, n: int, first: int) -> list[tuple[int, int]]:
    """(side index, seq) in sending order: stretches of ``_PACED_STRETCH`` per side, the
    side that starts a round rotating; each side's seqs ``first .. first + n - 1``."""
    turns: list[tuple[int, int]] = []
    for begin in range(0, n, _PACED_STRETCH):
        round_ = begin // _PACED_STRETCH
        for slot in range(sides):
            index = (slot + round_) % sides
            stretch = range(first + begin, first + min(n, begin + _PACED_STRETCH))
            turns.extend((index, seq) for seq in stretch)
    return turns


async def _paced(
    endpoints: Sequence[Endpoint],
    counters: Sequence[_Counter],
    turns: Sequence[tuple[int, int]],
    rate: float,
) -> None:
    """Open loop: turn ``i`` is sent at ``start + i / rate`` whatever earlier sends are
    doing (a slow confirm does not slow the offered load), each as its own task; then
    wait until every consumer has counted all its events."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sends: list[asyncio.Task[None]] = []
    i, total = 0, len(turns)
    while i < total:
        now = loop.time()
        due = min(total, int((now - start) * rate) + 1)
        while i < due:
            index, seq = turns[i]
            counters[index].sent_at[seq] = time.perf_counter()
            sends.append(asyncio.ensure_future(endpoints[index].send(seq)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    await asyncio.gather(*sends)
    for counter in counters:
        await counter.done.wait()


async def run_plan(
    sides: Sequence[Side], plan: Plan, progress: Progress | None = None
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every row on every side, ``plan.repeats`` times, interleaved: results[row][side].
    The ``single`` row runs its sides publish by publish (``run_single``), the
    ``paced`` row in stretches of events (``run_paced``)."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        row: {side.name: [] for side in sides} for row in plan.rows
    }
    for repeat in range(plan.repeats):
        for index, row in enumerate(plan.rows):
            shift = (repeat + index) % len(sides)
            ordered = [*sides[shift:], *sides[:shift]]
            # ``single`` and ``paced``: every side at once; the others side by side,
            # each reported as it finishes.
            together: dict[str, dict[str, float]] | None = None
            if row == "single":
                together = await run_single(ordered, plan)
            elif row == "paced":
                together = await run_paced(ordered, plan)
            for side in ordered:
                if together is None:
                    sample = await run_row(side, row, plan)
                else:
                    sample = together[side.name]
                results[row][side.name].append(sample)
                if progress is not None:
                    figures = ", ".join(f"{k}={v:,.1f}" for k, v in sample.items())
                    progress(f"repeat {repeat + 1}/{plan.repeats} {row:<10} {side.name}: {figures}")
    return results


def _main_figure(row: str) -> str:
    return "p50_ms" if row in LATENCY_ROWS else "events_per_s"


def report(
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
    *,
    adapter: str,
    plan: Plan,
    durability: str,
    notes: Mapping[str, str],
    target: str = "",
) -> dict[str, Any]:
    """The machine-readable report (``hexbus bench --adapter X --json``).

    Per row and side: the median of each figure and the per-repeat values; per row, the
    ratios ``hexbus / <side>`` of the medians of the row's main figure (events/s: above
    1 means hexbus is faster; latency rows compare p50: above 1 means hexbus is slower).
    """
    rows: list[dict[str, Any]] = []
    for row, per_side in results.items():
        main = _main_figure(row)
        entry: dict[str, Any] = {"row": row, "events": plan.events(row), "figure": main}
        medians: dict[str, float] = {}
        for side, samples in per_side.items():
            keys = sorted({k for sample in samples for k in sample})
            entry[side] = {
                **{k: median([s[k] for s in samples if k in s]) for k in keys},
                "repeats": [dict(sample) for sample in samples],
            }
            medians[side] = entry[side].get(main, math.nan)
        hexbus = medians.get("hexbus")
        entry["ratios"] = {
            f"hexbus/{side}": (hexbus / value if hexbus is not None and value else math.nan)
            for side, value in medians.items()
            if side != "hexbus"
        }
        rows.append(entry)
    out: dict[str, Any] = _finite(
        {
            "adapter": adapter,
            "target": target,
            "durability": durability,
            "body_bytes": BODY_BYTES,
            "repeats": plan.repeats,
            "rate_per_s": plan.rate,
            "python": platform.python_version(),
            "sides": {name: notes.get(name, "") for name in _sides_of(results)},
            "ratio_meaning": (
                "hexbus median / other side's median of the row's figure: events_per_s rows "
                "above 1 = hexbus faster; p50_ms rows above 1 = hexbus slower"
            ),
            "rows": rows,
        }
    )
    return out


def _finite(value: Any) -> Any:
    """NaN (a row with no samples) as ``null``: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _sides_of(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for per_side in results.values():
        names.extend(name for name in per_side if name not in names)
    return names
