"""The broker benchmark harness and the soak, without a broker: rows, plan, medians,
ratios, JSON shape, interleaving, table. No timing assertions (figures are measured by
``hexbus bench``, never asserted)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from hexbus.bench import kafka, rabbitmq
from hexbus.bench.harness import (
    BODY_BYTES,
    ROWS,
    Consume,
    Plan,
    body_text,
    make_plan,
    median,
    parse_rows,
    percentile,
    plain_body,
    report,
    run_paced,
    run_plan,
    run_row,
    run_single,
)
from hexbus.bench.kafka import KafkaBenchEvent
from hexbus.bench.rabbitmq import BenchTick
from hexbus.bench.soak import checkpoints_for, memory_now, run_soak
from hexbus.cli import app
from hexbus.cli.bench import BROKER_ROWS, broker_notes, broker_table
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.settings import HexbusSettings

runner = CliRunner()


@pytest.mark.parametrize("seq", [0, 7, 42, 999, 123_456, 10**9])
def test_every_side_sends_a_200_byte_json_body(seq: int) -> None:
    assert len(plain_body(seq)) == BODY_BYTES
    assert json.loads(plain_body(seq)) == {"seq": seq, "text": body_text(seq)}
    codec = CloudEventCodec(source="bench")
    for event_cls in (BenchTick, KafkaBenchEvent):
        _, body = codec.encode(event_cls(seq=seq, text=body_text(seq)))
        assert body == plain_body(seq)  # hexbus's body is the plain side's, byte for byte


def test_the_plain_raw_sides_encode_each_event_in_its_publish_the_same_bytes_ones_not() -> None:
    """Every side but ``raw_same_bytes`` encodes its event inside the timing (a service
    cannot encode an event before it exists): the plain raw sides build a new message
    or record per publish, with the plain 200-byte body; the same-bytes sides hand out
    the message hexbus's encoder built beforehand."""
    plain = rabbitmq.RawSide("amqp://guest:guest@127.0.0.1:1/", "t", same_bytes=False)
    message = plain._messages(3)
    first, again = message(2), message(2)
    assert first is not again and first.body == again.body == plain_body(2)
    assert first.content_type == "application/json" and first.delivery_mode == 2
    same = rabbitmq.RawSide("amqp://guest:guest@127.0.0.1:1/", "t", same_bytes=True)
    prebuilt = same._messages(3)
    assert prebuilt(1) is prebuilt(1)
    assert prebuilt(1).headers and prebuilt(1).body == plain_body(1)

    cfg = kafka._config("127.0.0.1:1", "t")
    record, codec = kafka.RawSide("127.0.0.1:1", "t", same_bytes=False)._records(cfg, "top", 3)
    assert codec is None
    assert record(2) == ("top", b"2", plain_body(2), [])
    assert record(2)[2] is not record(2)[2]  # encoded again, not kept
    record, codec = kafka.RawSide("127.0.0.1:1", "t", same_bytes=True)._records(cfg, "top", 3)
    assert codec is not None and record(1) is record(1) and record(1)[2] == plain_body(1)


def test_rows_parse_in_canonical_order_and_reject_unknown_names() -> None:
    assert parse_rows("all") == ROWS == BROKER_ROWS
    assert parse_rows("") == ROWS
    assert parse_rows("paced, single") == ("single", "paced")
    with pytest.raises(ValueError, match="bogus"):
        parse_rows("single,bogus")


def test_make_plan_maps_events_to_the_counts_and_caps_single() -> None:
    default = make_plan()
    assert (default.repeats, default.rows) == (3, ROWS)
    plan = make_plan(rows="batch,e2e", repeats=2, events=5_000, rate=250)
    assert plan.rows == ("batch", "e2e")
    assert (plan.concurrency, plan.batch, plan.e2e, plan.single) == (5_000, 5_000, 5_000, 300)
    assert make_plan(events=40).single == 40
    assert plan.events("concurrent") == 5_000
    assert Plan(rate=250, paced_seconds=2).events("paced") == 500
    with pytest.raises(ValueError):
        Plan(repeats=0)
    with pytest.raises(ValueError):
        Plan(rows=("warp",))


def test_percentile_and_median() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) in (50.0, 51.0)
    assert percentile(values, 0.99) == 99.0
    assert percentile(list(reversed(values)), 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))


def _results() -> dict[str, dict[str, list[dict[str, float]]]]:
    return {
        "single": {
            "hexbus": [{"events_per_s": 90.0}, {"events_per_s": 110.0}, {"events_per_s": 100.0}],
            "raw_plain": [{"events_per_s": 200.0}] * 3,
            "raw_same_bytes": [{"events_per_s": 100.0}] * 3,
            "faststream": [{"events_per_s": 50.0}] * 3,
        },
        "paced": {
            "hexbus": [{"p50_ms": 2.0, "p99_ms": 9.0}] * 3,
            "raw_plain": [{"p50_ms": 1.0, "p99_ms": 5.0}] * 3,
            "raw_same_bytes": [],  # a side that produced nothing: null, not NaN
            "faststream": [{"p50_ms": 4.0, "p99_ms": 8.0}] * 3,
        },
    }


def test_report_has_medians_repeats_and_ratios_of_medians() -> None:
    out = report(
        _results(),
        adapter="rabbitmq",
        plan=Plan(rows=("single", "paced")),
        durability="confirms",
        notes={"hexbus": "batch: publish_many"},
        target="amqp://guest:***@host/",
    )
    text = json.dumps(out, allow_nan=False)  # strict JSON
    assert json.loads(text) == out
    assert out["adapter"] == "rabbitmq" and out["durability"] == "confirms"
    assert out["body_bytes"] == BODY_BYTES and out["repeats"] == 3
    assert list(out["sides"]) == ["hexbus", "raw_plain", "raw_same_bytes", "faststream"]
    single, paced = out["rows"]
    assert single["row"] == "single" and single["figure"] == "events_per_s"
    assert single["hexbus"]["events_per_s"] == 100.0
    assert [r["events_per_s"] for r in single["hexbus"]["repeats"]] == [90.0, 110.0, 100.0]
    assert single["ratios"] == {
        "hexbus/raw_plain": 0.5,
        "hexbus/raw_same_bytes": 1.0,
        "hexbus/faststream": 2.0,
    }
    assert paced["figure"] == "p50_ms"
    assert paced["ratios"]["hexbus/raw_plain"] == 2.0
    assert paced["ratios"]["hexbus/faststream"] == 0.5
    assert paced["ratios"]["hexbus/raw_same_bytes"] is None


def test_broker_table_shows_every_side_and_the_ratios() -> None:
    out = report(
        _results(), adapter="kafka", plan=Plan(), durability="acks=all", notes={}, target="k:9092"
    )
    console = Console(width=120, record=True)
    console.print(broker_table(out))
    for line in broker_notes(out):
        console.print(line)
    text = console.export_text()
    for label in ("hexbus", "raw plain", "raw same bytes", "FastStream", "acks=all", "k:9092"):
        assert label in text
    assert "0.50 / 1.00 / 2.00" in text
    assert "2.0/9.0" in text


class _FakeEndpoint:
    def __init__(self, log: list[str], name: str, consume: Consume | None) -> None:
        self.log, self.name, self.consume = log, name, consume
        self.sent: list[int] = []

    async def send(self, seq: int) -> None:
        await asyncio.sleep(0)
        self.sent.append(seq)
        self.log.append(f"send {self.name} {seq}")
        if self.consume is not None:
            asyncio.get_running_loop().call_soon(self.consume, seq)

    async def send_many(self, start: int, stop: int) -> None:
        for seq in range(start, stop):
            await self.send(seq)

    async def close(self) -> None:
        self.log.append(f"close {self.name}")


class _FakeSide:
    batch_note = "sends in turn"
    consumer_note = "in process"

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.endpoints: list[_FakeEndpoint] = []

    async def endpoint(self, items: int, consume: Consume | None) -> _FakeEndpoint:
        self.log.append(f"open {self.name} {items} {'consume' if consume else 'publish'}")
        endpoint = _FakeEndpoint(self.log, self.name, consume)
        self.endpoints.append(endpoint)
        return endpoint


async def test_run_plan_interleaves_sides_on_fresh_endpoints() -> None:
    log: list[str] = []
    sides = [_FakeSide(name, log) for name in ("hexbus", "raw_plain", "faststream")]
    plan = Plan(repeats=2, single=5, concurrency=6, batch=7, e2e=8, rate=5_000, paced_seconds=0.01)
    progress: list[str] = []

    results = await run_plan(sides, plan, progress.append)

    assert list(results) == list(ROWS)
    for row in ROWS:
        assert {side: len(samples) for side, samples in results[row].items()} == {
            "hexbus": 2,
            "raw_plain": 2,
            "faststream": 2,
        }
    for row in ROWS[:4]:
        assert all(s["events_per_s"] > 0 for v in results[row].values() for s in v)
    assert all(s["p50_ms"] <= s["p99_ms"] for v in results["paced"].values() for s in v)
    # one fresh endpoint per run, each closed; the first side changes between rows
    opens = [line for line in log if line.startswith("open")]
    assert len(opens) == len(ROWS) * 3 * 2
    assert log.count("close hexbus") == len(ROWS) * 2
    firsts = [opens[i].split()[1] for i in range(0, len(opens), 3)]
    assert len(set(firsts)) == 3
    # the consuming rows count every event; publish rows warm up, then send them all
    e2e_endpoint = sides[0].endpoints[ROWS.index("e2e")]
    assert e2e_endpoint.sent == list(range(8))
    batch_endpoint = sides[0].endpoints[ROWS.index("batch")]
    assert batch_endpoint.sent == list(range(7)) + list(range(7))
    assert len(progress) == len(ROWS) * 3 * 2


@pytest.mark.parametrize("row", ["single", "paced", "nonsense"])
async def test_run_row_refuses_the_rows_that_run_every_side_at_once(row: str) -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match=rf"not '{row}'.*run_single, run_paced"):
        await run_row(_FakeSide("a", log), row, Plan(single=3))
    assert log == []  # refused before any endpoint was opened


async def test_the_single_row_runs_the_sides_publish_by_publish_in_rotating_order() -> None:
    log: list[str] = []
    sides = [_FakeSide(name, log) for name in ("a", "b", "c")]
    plan = Plan(rows=("single",), repeats=1, single=4)

    results = await run_single(sides, plan)

    assert set(results) == {"a", "b", "c"}
    assert all(sample["events_per_s"] > 0 for sample in results.values())
    # every endpoint open before any is timed; each warmed (4 + 4), then the timed
    # publishes in turns: seq 0 a b c, seq 1 b c a, ...; every endpoint closed
    sends = [line for line in log if line.startswith("send")]
    assert [line.split()[1] for line in sends[:8]] == ["a"] * 8
    timed = sends[24:]
    assert timed == [
        f"send {name} {seq}"
        for seq in range(4)
        for name in [*"abc"[seq % 3 :], *"abc"[: seq % 3]]
    ]
    assert [line for line in log if line.startswith("close")] == ["close a", "close b", "close c"]
    assert log.index("open c 4 publish") < log.index("send a 0")


async def test_the_paced_row_runs_the_sides_in_stretches_in_rotating_order() -> None:
    log: list[str] = []
    sides = [_FakeSide(name, log) for name in ("a", "b", "c")]
    plan = Plan(rows=("paced",), repeats=1, rate=100_000, paced_seconds=0.0015)  # 150 each

    results = await run_paced(sides, plan)

    assert set(results) == {"a", "b", "c"}
    for sample in results.values():
        assert 0 <= sample["p50_ms"] <= sample["p99_ms"] <= sample["max_ms"]
    # every endpoint (with a consumer) open before anything is sent; each warmed with
    # seqs 0-9, then the timed seqs 10-159 in stretches of 100: round one a b c,
    # round two (the last 50 each) b c a; every endpoint closed
    assert log.index("open c 160 consume") < log.index("send a 0")
    sends = [line for line in log if line.startswith("send")]
    assert sends[:30] == [f"send {name} {seq}" for name in "abc" for seq in range(10)]
    stretch = [(name, range(10, 110)) for name in "abc"]
    stretch += [(name, range(110, 160)) for name in "bca"]
    assert sends[30:] == [f"send {name} {seq}" for name, seqs in stretch for seq in seqs]
    assert [line for line in log if line.startswith("close")] == ["close a", "close b", "close c"]
    # each side sent each of its 160 events once
    assert all(side.endpoints[0].sent == list(range(160)) for side in sides)


def test_soak_checkpoints_include_100k_500k_and_1m() -> None:
    assert checkpoints_for(1_000_000) == [10_000, 100_000, 500_000, 1_000_000]
    assert checkpoints_for(3) == [1, 3]
    figures = memory_now()
    assert figures["peak_rss_mib"] > 0


async def test_soak_on_memory_reads_memory_at_each_checkpoint() -> None:
    result = await run_soak(HexbusSettings(adapter="memory"), events=3_000, window=1_000)
    assert result["handled"] == 3_000 and result["adapter"] == "memory"
    assert [point["checkpoint"] for point in result["checkpoints"]] == [30, 300, 1_500, 3_000]
    for point in result["checkpoints"]:
        assert point["handled"] >= point["checkpoint"]
        assert point["peak_rss_mib"] >= point.get("rss_mib", 0) > 0
        assert point["gc_objects"] > 0
    assert isinstance(result["rss_growth_mib"], float)


def test_cli_soak_json() -> None:
    result = runner.invoke(app, ["bench", "--soak", "2000", "--json"])
    assert result.exit_code == 0, result.output
    report_: dict[str, Any] = json.loads(result.stdout)
    assert report_["handled"] == 2_000 and report_["target"] == "in process"
    assert report_["checkpoints"][-1]["handled"] == 2_000


def test_cli_rejects_unknown_rows_before_sending_anything() -> None:
    result = runner.invoke(app, ["bench", "--adapter", "rabbitmq", "--rows", "single,warp"])
    assert result.exit_code == 2
    assert "warp" in result.output


def test_memory_json_has_the_sequential_floor_ratio() -> None:
    result = runner.invoke(
        app, ["bench", "--events", "200", "--handlers", "4", "--repeats", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["results"][0]
    assert row["ratio_hexbus_vs_sequential"] == pytest.approx(
        row["hexbus"]["events_per_s"] / row["sequential"]["events_per_s"]
    )


def test_cli_soak_on_an_unreachable_broker_fails_without_leaking_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", "amqp://bench:s3cret-pw@127.0.0.1:1/")
    result = runner.invoke(app, ["bench", "--adapter", "rabbitmq", "--soak", "10"])

    assert result.exit_code == 1
    assert "127.0.0.1:1" in result.output
    assert "s3cret-pw" not in result.output
