"""``hexbus bench`` runs and reports the right shape; no timing assertions (CI is noisy)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import hexbus.application.dispatch as dispatch
from hexbus.cli import app
from hexbus.cli.bench import (
    CONTENDERS,
    BenchEvent,
    GatherBus,
    IsolatedLoop,
    dispatcher_kind,
    run_benchmark,
)
from hexbus.infrastructure.adapters import ADAPTERS, missing_extra

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_bench_json_has_every_contender_and_positive_numbers() -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "--adapter",
            "memory",
            "--events",
            "200",
            "--handlers",
            "1,4",
            "--repeats",
            "2",
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["adapter"] == "memory" and report["events"] == 200
    assert report["dispatcher"] in {"compiled", "python"}
    assert [row["handlers"] for row in report["results"]] == [1, 4]
    for row in report["results"]:
        assert row["ratio_hexbus_vs_gather"] > 0
        for name in CONTENDERS:
            assert row[name]["events_per_s"] > 0
            assert 0 < row[name]["p50_us"] <= row[name]["p99_us"]


def test_the_report_says_which_dispatcher_it_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    if dispatch._Engine is not None:
        assert dispatcher_kind() == "compiled"
    monkeypatch.setattr(dispatch, "_Engine", None)
    assert dispatcher_kind() == "python"


def test_bench_table_output() -> None:
    result = runner.invoke(app, ["bench", "--events", "100", "--handlers", "4", "--repeats", "1"])

    assert result.exit_code == 0, result.output
    assert "sequential" in result.output and "gather" in result.output


def test_bench_on_an_unreachable_broker_fails_without_leaking_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", "amqp://bench:s3cret-pw@127.0.0.1:1/")
    result = runner.invoke(app, ["bench", "--adapter", "rabbitmq", "--events", "10"])

    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.output
    assert "s3cret-pw" not in result.output


def test_bench_rejects_an_unknown_adapter() -> None:
    result = runner.invoke(app, ["bench", "--adapter", "redis", "--events", "10"])
    assert result.exit_code == 2
    assert "unknown adapter" in result.output
    assert ", ".join(ADAPTERS) in " ".join(result.output.split())


def test_bench_rejects_bad_handler_counts() -> None:
    result = runner.invoke(app, ["bench", "--handlers", "1,x"])
    assert result.exit_code == 2


async def test_run_benchmark_calls_every_handler_of_every_contender() -> None:
    progress: list[str] = []
    results = await run_benchmark(
        events=50,
        handler_counts=(3,),
        repeats=1,
        warmup=5,
        on_progress=lambda label, _: progress.append(label),
    )
    assert sorted(m.contender for m in results) == sorted(CONTENDERS)
    assert len(progress) == len(CONTENDERS)


async def test_gather_baseline_is_fail_open() -> None:
    seen: list[int] = []

    async def boom(event: BenchEvent) -> None:
        raise RuntimeError("x")

    async def ok(event: BenchEvent) -> None:
        seen.append(event.seq)

    bus = GatherBus()
    bus.subscribe(BenchEvent, boom)
    bus.subscribe(BenchEvent, ok)
    await bus.publish(BenchEvent(seq=7))
    assert seen == [7]


async def test_isolated_contender_isolates_errors_and_context_changes() -> None:
    """The ``isolated`` floor must do what it claims, or ``hexbus ÷ isolated`` means
    nothing: a failing handler does not stop the others, and a contextvar one handler
    sets is seen neither by the handlers after it nor by the publisher."""
    var: ContextVar[str] = ContextVar("bench_isolated", default="publisher")
    seen: list[str] = []

    async def boom(event: BenchEvent) -> None:
        var.set("boom")
        raise RuntimeError("x")

    async def setter(event: BenchEvent) -> None:
        var.set("setter")
        seen.append(var.get())

    async def reader(event: BenchEvent) -> None:
        seen.append(var.get())

    async def suspends(event: BenchEvent) -> None:
        await asyncio.sleep(0)
        seen.append(f"after await {event.seq}")

    loop = IsolatedLoop([boom, setter, reader, suspends, reader])
    await loop.publish(BenchEvent(seq=1))

    assert seen == ["setter", "publisher", "after await 1", "publisher"]
    assert var.get() == "publisher"


def test_standalone_script_runs() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_memory.py"),
            "--events",
            "50",
            "--handlers",
            "1",
            "--repeats",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout)["results"][0]["handlers"] == 1


def test_bench_without_the_extra_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "aiokafka" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result = runner.invoke(app, ["bench", "--adapter", "kafka", "--events", "10"])

    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert str(missing_extra(ADAPTERS["kafka"], "hexbus bench --adapter kafka")) in flat
    assert "Traceback" not in result.output
