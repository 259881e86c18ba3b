"""A long run through one hexbus consumer; memory (RSS now / peak) at checkpoints.

    python benchmarks/soak.py --adapter memory|rabbitmq|kafka [--events 1000000] [--json]

Connection settings are the usual ``HEXBUS_*`` variables. The same as
``hexbus bench --adapter X --soak N``; the code is ``hexbus.bench.soak``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from hexbus.bench.soak import run_soak
from hexbus.infrastructure.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--adapter", default="memory", choices=("memory", "rabbitmq", "kafka"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    settings = load_settings().model_copy(update={"adapter": args.adapter})
    result = asyncio.run(
        run_soak(settings, events=args.events, progress=None if args.json else print)
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['handled']:,} events in {result['seconds']}s "
            f"({result['events_per_s']:,}/s); RSS growth {result['rss_growth_mib']} MiB"
        )


if __name__ == "__main__":
    main()
