"""A consumer in its own process: handles ``FaultEvent``, appends each id to a file.

Prints ``ready`` once its bus is started; stops cleanly on SIGTERM. The id is written
(and flushed) before the handler returns, i.e. before the ack: a crash can repeat an id
(at-least-once), never drop one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus
from rabbitmq_procs import FaultEvent


async def main(args: argparse.Namespace) -> None:
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - line-buffered log

    async def record(event: FaultEvent) -> None:
        if args.delay:
            await asyncio.sleep(args.delay)
        out.write(f"{event.event_id}\n")

    bus = RabbitMQEventBus(
        RabbitMQConfig(
            url=args.url,
            exchange=args.exchange,
            service_name=args.service,
            prefetch=args.prefetch,
            retry_delays=(0.05, 0.1),
            reconnect_interval=0.5,
        )
    )
    bus.subscribe(FaultEvent, record, name="recorder")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bus:
        print("ready", flush=True)
        await stop.wait()
    out.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--prefetch", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
