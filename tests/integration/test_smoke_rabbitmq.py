"""Smoke test: the RabbitMQ behind ``rabbitmq_url`` is real and does confirms.

Uses aio-pika directly (not hexbus) so a failure here points at the broker
set-up, not at the library.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

pytestmark = pytest.mark.integration

DEADLINE_S = 15.0


@pytest.mark.asyncio
async def test_publish_with_confirms_and_consume(rabbitmq_url: str, unique_name: str) -> None:
    connection = await asyncio.wait_for(aio_pika.connect_robust(rabbitmq_url), DEADLINE_S)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            f"{unique_name}-x", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            f"{unique_name}-q", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key="smoke.#")
        try:
            body = f"hello {unique_name}".encode()
            confirmation = await asyncio.wait_for(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=unique_name,
                        content_type="text/plain",
                    ),
                    routing_key="smoke.test",
                    mandatory=True,
                ),
                DEADLINE_S,
            )
            # With publisher confirms on, publish() resolves to the broker's Basic.Ack.
            assert isinstance(confirmation, Basic.Ack)

            received: asyncio.Future[AbstractIncomingMessage] = (
                asyncio.get_running_loop().create_future()
            )

            async def on_message(message: AbstractIncomingMessage) -> None:
                await message.ack()
                if not received.done():
                    received.set_result(message)

            tag = await queue.consume(on_message)
            message = await asyncio.wait_for(received, DEADLINE_S)
            await queue.cancel(tag)

            assert message.body == body
            assert message.message_id == unique_name
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
