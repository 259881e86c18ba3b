"""Shared by ``bench_rabbitmq.py`` and ``bench_kafka.py``: options, run, print.

The measuring code is ``hexbus.bench`` (the same as ``hexbus bench --adapter X``), the
table is the command's (``hexbus.cli.bench.broker_table``): the scripts and the command
cannot disagree about what is measured or how it is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

from rich.console import Console

from hexbus.bench.harness import ROWS
from hexbus.cli.bench import broker_notes, broker_table
from hexbus.infrastructure.settings import HexbusSettings


def main(adapter: str, description: str, settings: HexbusSettings, target: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", default="all", help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    bench: Any = __import__(f"hexbus.bench.{adapter}", fromlist=["run_bench"])
    result = asyncio.run(
        bench.run_bench(
            settings,
            prefix=f"hexbus-bench-{uuid.uuid4().hex[:8]}",
            rows=args.rows,
            repeats=args.repeats,
            events=args.events,
            rate=args.rate,
            target=target,
            progress=lambda text: print(f"  {text}", file=sys.stderr),
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console = Console()
    console.print(broker_table(result))
    for line in broker_notes(result):
        console.print(line)
    return 0
