"""Memory adapter vs a hand-written ``gather`` bus, the least isolated loop, a plain loop.

Standalone: ``python benchmarks/bench_memory.py [--events N] [--handlers 1,4,16] [--json]``.
The measuring code lives in ``hexbus.cli.bench`` (shared with ``hexbus bench``), so the
script and the command can never disagree about what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console

from hexbus.cli.bench import results_table, run_benchmark, to_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--handlers", default="1,4,16", help="comma-separated handler counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    counts = [int(part) for part in args.handlers.split(",")]
    results = asyncio.run(
        run_benchmark(events=args.events, handler_counts=counts, repeats=args.repeats)
    )
    if args.json:
        print(json.dumps(to_json(results, events=args.events, repeats=args.repeats), indent=2))
    else:
        Console().print(results_table(results))


if __name__ == "__main__":
    main()
