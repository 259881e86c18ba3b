"""``hexbus bench``: what does the memory bus cost per publish, against honest baselines?

Four contenders, measured in one run on the same pre-built events:

- ``hexbus``: ``InMemoryEventBus`` in await mode (the real thing);
- ``gather``: the 20-line bus people write by hand — ``dict[type, list]`` and
  ``asyncio.gather(..., return_exceptions=True)`` — the baseline to beat;
- ``isolated``: the least an isolated bus does (``IsolatedLoop``): the handlers run
  eagerly in a context copy of their own, each one's error caught, a context change
  kept from the next; nothing else (no admission, stats, delivery context, Tasks);
- ``sequential``: ``for h in handlers: await h(e)``, no isolation at all — the floor.

Why interleaved repeats and medians: a laptop's clock and a shared CI box drift; running
the contenders in turn, several times, and taking medians keeps that noise out of the
ratio. Functions, not a script, so ``benchmarks/bench_memory.py`` reuses them.

``--adapter rabbitmq|kafka`` measures hexbus against the raw client (a plain body, and
hexbus's own bytes) and FastStream on the configured broker, row by row (single,
concurrent, batch, end-to-end, paced latency); ``--soak N`` runs N events through one
consumer and reads the process's memory as it goes. That work is in ``hexbus.bench``
(``harness``, ``<adapter>``, ``soak``), loaded lazily by name (``importlib``): those
modules import their broker client and FastStream, which the CLI must not
(import-linter contract, and the extras are optional); here it is only rendered. Which
adapters exist and which extra each needs is the adapter registry's (``ADAPTERS``,
``availability``, ``missing_extra``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import json
import operator
import platform
import statistics
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Sequence
from contextlib import contextmanager
from contextvars import Context, copy_context
from dataclasses import asdict, dataclass
from typing import Annotated, Any, cast

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hexbus.cli._common import EXIT_UNAVAILABLE, fail, out_console, redact
from hexbus.cli.app import AppOption, settings_of
from hexbus.cli.outbox import outbox_bench
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.adapters import ADAPTERS, AdapterInfo, availability, missing_extra
from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.infrastructure.settings import HexbusSettings, load_settings, redact_url

__all__ = [
    "BROKER_ROWS",
    "CONTENDERS",
    "BenchEvent",
    "BrokerOptions",
    "GatherBus",
    "IsolatedLoop",
    "Measurement",
    "bench_command",
    "broker_notes",
    "broker_table",
    "measure",
    "results_table",
    "run_benchmark",
    "to_json",
]

CONTENDERS = ("hexbus", "gather", "isolated", "sequential")
#: The broker benchmark's rows (``hexbus.bench.harness.ROWS``, which the CLI may not
#: import: it loads the broker benchmarks by name only).
BROKER_ROWS = ("single", "concurrent", "batch", "e2e", "paced")
Publish = Callable[[DomainEvent], Awaitable[None]]
AsyncHandler = Callable[[DomainEvent], Awaitable[None]]
ProgressHook = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """The broker benchmark's options as given (``None``: the benchmark's default)."""

    rows: str = "all"
    repeats: int | None = None
    events: int | None = None
    rate: float | None = None


class BenchEvent(DomainEvent, event_type="hexbus.bench.ping", abstract=True):
    """``abstract=True`` keeps it out of the event registry: it is no part of any
    service's catalogue (``hexbus asyncapi``, ``publish``), and exact-class
    subscriptions do not need the registry."""

    seq: int


class GatherBus:
    """The hand-written baseline: a dict of handler lists and ``asyncio.gather``."""

    def __init__(self) -> None:
        self.handlers: dict[type[DomainEvent], list[AsyncHandler]] = {}

    def subscribe(self, event_type: type[DomainEvent], handler: AsyncHandler) -> None:
        self.handlers.setdefault(event_type, []).append(handler)

    async def publish(self, event: DomainEvent) -> None:
        handlers = self.handlers.get(type(event), ())
        # return_exceptions: one failing handler must not fail the publisher (fail-open).
        await asyncio.gather(*(h(event) for h in handlers), return_exceptions=True)


_FINISHED: Any = object()  # what next() returns for a runner whose handlers all finished


class IsolatedLoop:
    """The least an isolated bus does, as a benchmark contender (not a usable bus).

    What isolation costs and nothing else: each publish runs the handlers eagerly, one
    after the other, in a fresh copy of the publisher's context (stepped by hand, as
    hexbus's dispatcher does); each handler's error is caught; a handler that changes
    the context (sets a contextvar) leaves a fresh copy to the handlers after it. No
    admission, stats, delivery context or ``current_task`` stand-in; a handler that
    suspends is waited for before the next one starts (hexbus gives it a Task instead:
    the no-op handlers of the benchmark never suspend). ``hexbus ÷ isolated`` is what
    the library's own features cost on top of isolation.
    """

    def __init__(self, handlers: Sequence[AsyncHandler]) -> None:
        self.handlers = tuple(handlers)

    async def publish(self, event: DomainEvent) -> None:
        remaining = iter(self.handlers)
        while True:
            ctx = copy_context()
            runner = _isolated_runner(remaining, event, ctx)
            yielded = ctx.run(next, runner, _FINISHED)
            if yielded is _FINISHED:
                if operator.length_hint(remaining) == 0:
                    return
                continue  # a handler changed the context: the others start clean
            await _carry_on(ctx, runner, yielded)
            if operator.length_hint(remaining) == 0:
                return


@types.coroutine
def _isolated_runner(
    remaining: Iterator[AsyncHandler], event: DomainEvent, ctx: Context
) -> Generator[Any, Any, None]:
    clean = ctx.copy()
    for handler in remaining:
        try:  # noqa: SIM105 - try costs nothing here, a suppress() block would
            yield from cast("Coroutine[Any, Any, None]", handler(event))
        except Exception:  # noqa: BLE001 - fail-open, as a bus must be
            pass
        if ctx != clean:
            return


@types.coroutine
def _carry_on(ctx: Context, runner: Any, yielded: Any) -> Generator[Any, Any, None]:
    """Step ``runner`` on in ``ctx`` from where it suspended, to its end."""
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # noqa: BLE001 - forwarded into the runner
            try:
                yielded = ctx.run(runner.throw, exc)
            except StopIteration:
                return
        else:
            try:
                yielded = ctx.run(runner.send, value)
            except StopIteration:
                return


def _noop_handlers(count: int) -> list[AsyncHandler]:
    """Distinct no-op handlers (the same function twice would be subscribed once)."""

    def make() -> AsyncHandler:
        async def noop(event: DomainEvent) -> None:
            return None

        return noop

    return [make() for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Measurement:
    """One contender at one handler count: medians over the repeats."""

    contender: str
    handlers: int
    events: int
    events_per_s: float
    p50_us: float
    p99_us: float


async def measure(publish: Publish, events: Sequence[DomainEvent]) -> tuple[float, list[int]]:
    """(events/s, per-publish latencies in ns) for ``events``.

    Two passes: throughput from a tight loop with no clock reads inside it (two
    ``perf_counter_ns`` calls per event cost ~0.15 µs, a tenth of a fast publish, and
    would flatten every ratio), then latencies from a second, instrumented pass.
    """
    clock = time.perf_counter_ns
    start = clock()
    for event in events:
        await publish(event)
    elapsed = clock() - start
    latencies = [0] * len(events)
    for i, event in enumerate(events):
        t0 = clock()
        await publish(event)
        latencies[i] = clock() - t0
    return len(events) / (elapsed / 1e9), latencies


def _percentile(sorted_ns: Sequence[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[index] / 1000.0


@contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _contenders(handler_count: int) -> tuple[dict[str, Publish], InMemoryEventBus]:
    handlers = _noop_handlers(handler_count)
    bus = InMemoryEventBus(mode="await")
    for i, handler in enumerate(handlers):
        bus.subscribe(BenchEvent, handler, name=f"hexbus.bench.noop{i}")
    await bus.start()
    gather_bus = GatherBus()
    for handler in handlers:
        gather_bus.subscribe(BenchEvent, handler)

    async def sequential(event: DomainEvent) -> None:
        for h in handlers:
            await h(event)

    publishers: dict[str, Publish] = {
        "hexbus": bus.publish,
        "gather": gather_bus.publish,
        "isolated": IsolatedLoop(handlers).publish,
        "sequential": sequential,
    }
    return publishers, bus


async def run_benchmark(
    *,
    events: int = 20_000,
    handler_counts: Sequence[int] = (1, 4, 16),
    repeats: int = 5,
    warmup: int | None = None,
    on_progress: ProgressHook | None = None,
) -> list[Measurement]:
    """Measure every contender at every handler count; repeats interleave contenders."""
    if events < 1 or repeats < 1 or not handler_counts:
        raise ValueError("events and repeats must be >= 1, with at least one handler count")
    prebuilt = [BenchEvent(seq=i) for i in range(events)]
    warm = prebuilt[: warmup if warmup is not None else min(events, 2_000)]
    results: list[Measurement] = []
    for count in handler_counts:
        publishers, bus = await _contenders(count)
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CONTENDERS}
        try:
            for name in CONTENDERS:  # warm-up: caches, route tables, the allocator
                await measure(publishers[name], warm)
            for _ in range(repeats):
                for name in CONTENDERS:
                    with _no_gc():
                        rate, latencies = await measure(publishers[name], prebuilt)
                    latencies.sort()
                    runs[name].append(
                        (rate, _percentile(latencies, 0.50), _percentile(latencies, 0.99))
                    )
                    if on_progress is not None:
                        on_progress(f"{count} handler(s): {name}", 1)
        finally:
            await bus.stop()
        for name in CONTENDERS:
            rates, p50s, p99s = zip(*runs[name], strict=True)
            results.append(
                Measurement(
                    contender=name,
                    handlers=count,
                    events=events,
                    events_per_s=statistics.median(rates),
                    p50_us=statistics.median(p50s),
                    p99_us=statistics.median(p99s),
                )
            )
    return results


def _by_count(results: Sequence[Measurement]) -> dict[int, dict[str, Measurement]]:
    out: dict[int, dict[str, Measurement]] = {}
    for m in results:
        out.setdefault(m.handlers, {})[m.contender] = m
    return out


def dispatcher_kind() -> str:
    """Which eager start the memory bus runs here: ``compiled`` (``_eager.c``, built at
    install) or ``python`` (not built, or ``HEXBUS_PURE_PYTHON=1``). Figures of the two
    differ by ~2x at 4 handlers, so every report says which it measured."""
    return "compiled" if InMemoryEventBus().dispatcher.compiled else "python"


def to_json(results: Sequence[Measurement], *, events: int, repeats: int) -> dict[str, Any]:
    """Stable, machine-readable shape (what ``--json`` prints and CI can diff)."""
    rows = []
    for count, per in sorted(_by_count(results).items()):
        row: dict[str, Any] = {"handlers": count}
        for name, m in per.items():
            row[name] = {k: v for k, v in asdict(m).items() if k not in ("contender", "handlers")}
        row["ratio_hexbus_vs_gather"] = per["hexbus"].events_per_s / per["gather"].events_per_s
        row["ratio_hexbus_vs_isolated"] = per["hexbus"].events_per_s / per["isolated"].events_per_s
        row["ratio_hexbus_vs_sequential"] = (
            per["hexbus"].events_per_s / per["sequential"].events_per_s
        )
        rows.append(row)
    return {
        "adapter": "memory",
        "events": events,
        "repeats": repeats,
        "python": platform.python_version(),
        "dispatcher": dispatcher_kind(),
        "results": rows,
    }


def results_table(results: Sequence[Measurement]) -> Table:
    table = Table(title="hexbus memory adapter vs baselines (medians)")
    table.add_column("handlers", justify="right")
    table.add_column("contender", no_wrap=True)
    table.add_column("events/s", justify="right", no_wrap=True)
    table.add_column("p50 µs", justify="right")
    table.add_column("p99 µs", justify="right")
    table.add_column("÷ gather", justify="right")
    table.add_column("÷ isolated", justify="right")
    table.add_column("÷ sequential", justify="right")
    for count, per in sorted(_by_count(results).items()):
        gather_rate = per["gather"].events_per_s
        isolated_rate = per["isolated"].events_per_s
        floor_rate = per["sequential"].events_per_s
        for name in CONTENDERS:
            m = per[name]
            table.add_row(
                str(count),
                name,
                f"{m.events_per_s:,.0f}",
                f"{m.p50_us:.1f}",
                f"{m.p99_us:.1f}",
                f"{m.events_per_s / gather_rate:.2f}x",
                f"{m.events_per_s / isolated_rate:.0%}",
                f"{m.events_per_s / floor_rate:.0%}",
                end_section=name == CONTENDERS[-1],
            )
    return table


def _parse_counts(raw: str) -> list[int]:
    try:
        counts = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter("use comma-separated integers, e.g. 1,4,16") from None
    if not counts or any(c < 1 for c in counts):
        raise typer.BadParameter("handler counts must be positive integers")
    return counts


def _bench_module(info: AdapterInfo) -> Any:
    """``hexbus.bench.<adapter>``, imported only now (it imports the broker client)."""
    module = f"hexbus.bench.{info.name}"
    if importlib.util.find_spec(module) is None:
        fail(
            f"there is no benchmark for the {info.name} adapter; --adapter takes one of: "
            + ", ".join(name for name in ADAPTERS if _has_bench(name)),
            EXIT_UNAVAILABLE,
        )
    usable, _ = availability(info.name)
    if not usable:
        fail(str(missing_extra(info, f"hexbus bench --adapter {info.name}")))
    return importlib.import_module(module)


def _has_bench(name: str) -> bool:
    return name == "memory" or importlib.util.find_spec(f"hexbus.bench.{name}") is not None


SIDE_LABELS = {
    "hexbus": "hexbus",
    "raw_plain": "raw plain",
    "raw_same_bytes": "raw same bytes",
    "faststream": "FastStream",
}
SHORT_LABELS = {"raw_plain": "plain", "raw_same_bytes": "same", "faststream": "FS"}


def _broker_bench(
    info: AdapterInfo,
    options: BrokerOptions,
    as_json: bool,
    app_settings: HexbusSettings | None = None,
) -> None:
    """hexbus against the raw client (two ways) and FastStream on the configured broker
    (``HEXBUS_*`` settings, or the ``--app`` container's)."""
    settings = _settings(app_settings)
    adapter = info.name
    bench = _bench_module(info)  # no benchmark / no extra: say so before the spinner
    target = _target(adapter, settings)
    console = out_console()
    with console.status(f"benchmarking {adapter} against {target}", spinner="dots") as status:
        try:
            result: dict[str, Any] = asyncio.run(
                bench.run_bench(
                    settings,
                    prefix=f"hexbus-bench-{uuid.uuid4().hex[:8]}",
                    rows=options.rows,
                    repeats=options.repeats,
                    events=options.events,
                    rate=options.rate,
                    target=target,
                    progress=lambda text: status.update(f"{adapter}: {text}"),
                )
            )
        except ValueError as exc:  # the options (rows, counts): nothing was sent
            raise typer.BadParameter(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the raw clients raise their own errors
            message = redact(settings, f"{type(exc).__name__}: {exc}")
            fail(f"bench --adapter {adapter} against {target} failed: {message}")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(broker_table(result))
    for line in broker_notes(result):
        console.print(line)


def broker_table(result: dict[str, Any]) -> Table:
    """The ``--adapter rabbitmq|kafka`` report as a table: one line per row, the ratios
    of hexbus to each other side in one column (narrow enough for 80 columns)."""
    sides = list(result["sides"])
    others = sides[1:]
    table = Table(
        title=f"hexbus on {result['adapter']} vs raw client and FastStream "
        f"(medians of {result['repeats']} interleaved repeats)",
        caption="events/s; paced: publish→handler p50/p99 ms",
    )
    table.add_column("row")
    for side in sides:
        table.add_column(SIDE_LABELS.get(side, side), justify="right")
    table.add_column(
        "hexbus ÷ " + " / ".join(SHORT_LABELS.get(side, side) for side in others),
        justify="right",
    )
    for row in result["rows"]:
        latency = row["figure"] != "events_per_s"
        cells = [row["row"]]
        for side in sides:
            figures = row.get(side, {})
            if latency:
                cells.append(f"{_num(figures.get('p50_ms'), 1)}/{_num(figures.get('p99_ms'), 1)}")
            else:
                cells.append(_num(figures.get("events_per_s"), 0))
        cells.append(" / ".join(_ratio(row["ratios"].get(f"hexbus/{side}")) for side in others))
        table.add_row(*cells)
    return table


def broker_notes(result: dict[str, Any]) -> list[str]:
    """What the table's figures mean: durability, body, batch paths, ratio direction."""
    return [
        f"{result['target']}: {result['durability']}; {result['body_bytes']}-byte JSON bodies; "
        f"paced row at {result['rate_per_s']:,.0f} events/s.",
        *(f"{SIDE_LABELS.get(side, side)}: {note}" for side, note in result["sides"].items()),
        "hexbus ÷ plain / same / FS: hexbus's median over raw plain's, raw same bytes' and "
        "FastStream's; events/s above 1 = hexbus faster, latency (p50) above 1 = slower.",
    ]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _settings(app_settings: HexbusSettings | None) -> HexbusSettings:
    if app_settings is not None:
        return app_settings
    try:
        return load_settings()
    except ConfigurationError as exc:
        fail(str(exc))


def _soak(
    adapter: str, events: int, as_json: bool, app_settings: HexbusSettings | None = None
) -> None:
    """``--soak N``: N events through one hexbus consumer; memory at checkpoints."""
    info = ADAPTERS[adapter]
    if info.name != "memory":
        usable, _ = availability(info.name)
        if not usable:
            fail(str(missing_extra(info, f"hexbus bench --adapter {info.name} --soak")))
    settings = _settings(app_settings).model_copy(update={"adapter": adapter})
    soak = importlib.import_module("hexbus.bench.soak")  # lazily, as the broker benches
    target = "in process" if adapter == "memory" else _target(adapter, settings)
    console = out_console()
    with console.status(f"soak: {events:,} events on {adapter}", spinner="dots") as status:
        try:
            result: dict[str, Any] = asyncio.run(
                soak.run_soak(
                    settings,
                    events=events,
                    progress=lambda text: status.update(f"soak {adapter}: {text}"),
                )
            )
        except Exception as exc:  # noqa: BLE001 - the raw clients raise their own errors
            message = redact(settings, f"{type(exc).__name__}: {exc}")
            fail(f"bench --soak on {adapter} ({target}) failed: {message}")
    result["target"] = target
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"soak: {events:,} events through one hexbus consumer on {adapter}")
    for column in ("handled", "seconds", "RSS MiB", "peak RSS MiB", "gc objects"):
        table.add_column(column, justify="right")
    for point in result["checkpoints"]:
        table.add_row(
            f"{point['handled']:,}",
            f"{point['seconds']:.1f}",
            _num(point.get("rss_mib"), 1),
            _num(point.get("peak_rss_mib"), 1),
            f"{point['gc_objects']:,}",
        )
    console.print(table)
    console.print(
        f"{result['events_per_s']:,} events/s; RSS growth from the first checkpoint to the "
        f"last: {_num(result['rss_growth_mib'], 1)} MiB ({target})."
    )


def _target(adapter: str, settings: HexbusSettings) -> str:
    """Where the benchmark sends traffic, printable (password masked)."""
    if adapter == "rabbitmq":
        return redact_url(settings.rabbitmq_url)
    return str(settings.kafka_bootstrap_servers)


def bench_command(
    adapter: Annotated[
        str, typer.Option(help=f"Transport to measure: {', '.join(ADAPTERS)}.")
    ] = "memory",
    events: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Events per measurement (memory: 20,000; brokers: 10,000 for the concurrent, "
            "batch and end-to-end rows, single at most 300).",
        ),
    ] = None,
    handlers: Annotated[
        str, typer.Option(help="Memory: comma-separated handler counts.")
    ] = "1,4,16",
    repeats: Annotated[
        int | None,
        typer.Option(min=1, max=20, help="Interleaved repeats (memory 5, brokers 3)."),
    ] = None,
    rows: Annotated[
        str,
        typer.Option(help="Brokers: rows to run, comma-separated: " + ", ".join(BROKER_ROWS)),
    ] = "all",
    rate: Annotated[
        float, typer.Option(min=1, help="Brokers: events/s of the paced latency row.")
    ] = 1_000.0,
    soak: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Instead: publish and consume this many events through one hexbus "
            "consumer (e.g. 1000000) and report memory at checkpoints.",
        ),
    ] = None,
    outbox: Annotated[
        str | None,
        typer.Option(
            "--outbox",
            help="Instead: the transactional outbox on this database (sqlite+aiosqlite:/// "
            "or postgresql+asyncpg:// URL): relay vs publish_many, the write's cost, "
            "commit-to-handler latency, on --adapter (20,000 events unless --events).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable results.")] = False,
    app: AppOption = None,
) -> None:
    """Throughput and latency: memory against gather and a plain loop; brokers against
    their raw client (plain body and hexbus's bytes) and FastStream, with the same
    durability; ``--soak N``: memory of a long-running consumer."""
    info = ADAPTERS.get(adapter)
    if info is None:
        fail(f"unknown adapter {adapter!r}; choose one of: {', '.join(ADAPTERS)}", EXIT_UNAVAILABLE)
    if soak is not None:
        _soak(info.name, soak, as_json, settings_of(app))
        return
    if outbox is not None:
        outbox_bench(
            _settings(settings_of(app)).model_copy(update={"adapter": info.name}),
            outbox,
            events=events or 20_000,
            rounds=repeats or 3,
            as_json=as_json,
        )
        return
    if info.name != "memory":
        options = BrokerOptions(rows=rows, repeats=repeats, events=events, rate=rate)
        _broker_bench(info, options, as_json, settings_of(app))
        return
    events = events or 20_000
    repeats = repeats or 5
    counts = _parse_counts(handlers)
    console = out_console()
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("warming up", total=len(counts) * repeats * len(CONTENDERS))

        def advance(label: str, steps: int) -> None:
            progress.update(task, advance=steps, description=label)

        results = asyncio.run(
            run_benchmark(
                events=events, handler_counts=counts, repeats=repeats, on_progress=advance
            )
        )
    if as_json:
        print(json.dumps(to_json(results, events=events, repeats=repeats), indent=2))
        return
    console.print(results_table(results))
    console.print(
        f"{events:,} events per run, {repeats} interleaved repeats, Python "
        f"{platform.python_version()}, {dispatcher_kind()} dispatcher; latency = one "
        "publish, all handlers done."
    )
