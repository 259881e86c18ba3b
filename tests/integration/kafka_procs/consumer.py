"""A Kafka consumer in its own process: handles ``KafkaFaultEvent``, appends ids to a file.

Prints ``ready`` once its consumer group owns partitions; stops cleanly on SIGTERM. The
id is written before the handler returns, i.e. before the offset commit: a crash can
repeat an id (at-least-once), never drop one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus
from kafka_procs import KafkaFaultEvent


async def main(args: argparse.Namespace) -> None:
    fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def record(event: KafkaFaultEvent) -> None:
        if args.delay:
            await asyncio.sleep(args.delay)
        os.write(fd, f"{event.event_id}\n".encode())

    bus = KafkaEventBus(
        KafkaConfig(
            bootstrap_servers=args.bootstrap,
            topic_prefix=args.prefix,
            service_name=args.service,
            max_attempts=3,
            retry_backoff=0.05,
            metadata_max_age_ms=1000,
            session_timeout_ms=6000,
            drain_timeout=10.0,
        )
    )
    bus.subscribe(KafkaFaultEvent, record, name="recorder")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bus:
        await bus.wait_ready(60)
        print("ready", flush=True)
        await stop.wait()
    os.close(fd)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
