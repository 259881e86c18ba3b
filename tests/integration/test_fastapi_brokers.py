"""The FastAPI example service on RabbitMQ and Kafka: only ``HEXBUS_ADAPTER`` changes.

Why through the environment: that is how the service is deployed (``HEXBUS_ADAPTER=kafka
uvicorn examples.fastapi_service.app:app``), so the test configures nothing in code. The
service name, exchange and topic prefix are per test only to keep tests apart on the
shared brokers; what the service declared there is deleted afterwards.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from bus_makers import delete_topics
from fastapi import FastAPI

from hexbus import BusState, Readiness, SubscriptionAdmin
from hexbus.integrations.fastapi import CORRELATION_ID_HEADER, REQUEST_ID_HEADER
from hexbus.testing import eventually

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the examples live beside src/, not in the package
    sys.path.insert(0, str(ROOT))

from examples.fastapi_service.app import create_app  # noqa: E402
from examples.fastapi_service.container import ServiceContainer  # noqa: E402
from examples.fastapi_service.events import UserRegistered, WelcomeMailSent  # noqa: E402

pytestmark = pytest.mark.integration

CLIENT_IP = "198.51.100.23"
#: The service's durable subscriptions (``WelcomeMail`` and the ``AuditLogHandler``).
SUBSCRIPTIONS = ("accounts.welcome_mail", "hexbus.audit")
DELIVERY_TIMEOUT = 60.0


@asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50123))
        async with httpx.AsyncClient(transport=transport, base_url="http://accounts") as client:
            yield client


def _audit(path: Path) -> dict[str, dict[str, Any]]:
    """Audit records by event type (the test publishes one event of each)."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["event_type"]: r for r in records}


async def _remove_broker_resources(
    adapter: str, rabbitmq_url: str, kafka_bootstrap_servers: str, namespace: str
) -> None:
    """What the subscriptions did not take with them: the exchange, the event topics."""
    if adapter == "rabbitmq":
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(f"{namespace}.events")
    else:
        await delete_topics(kafka_bootstrap_servers, f"{namespace}.")


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
async def test_post_users_flows_through_the_broker(
    adapter: str,
    rabbitmq_url: str,
    kafka_bootstrap_servers: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    audit_path = tmp_path / "audit.jsonl"
    environment = {
        "HEXBUS_ADAPTER": adapter,
        "HEXBUS_RABBITMQ_URL": rabbitmq_url,
        "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        # isolation on the shared brokers, nothing the service needs:
        "HEXBUS_SERVICE_NAME": unique_name,
        "HEXBUS_RABBITMQ_EXCHANGE": f"{unique_name}.events",
        "HEXBUS_KAFKA_TOPIC_PREFIX": f"{unique_name}.",
        "HEXBUS_AUDIT_LOG_PATH": str(audit_path),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    container = ServiceContainer()  # reads HEXBUS_* like the deployed service
    app = create_app(container)

    try:
        async with _serving(app) as client:
            bus = container.event_bus()
            try:
                health = await client.get("/health")
                assert health.json() == {"status": "ok", "adapter": adapter}
                if isinstance(bus, Readiness):
                    await bus.wait_ready(DELIVERY_TIMEOUT)

                response = await client.post(
                    "/users",
                    json={"email": "grace@example.com", "name": "Grace Hopper"},
                    headers={
                        "User-Agent": "integration/1.0",
                        REQUEST_ID_HEADER: "req-broker-1",
                        CORRELATION_ID_HEADER: "signup-77",
                    },
                )
                assert response.status_code == 201, response.text
                user_id = response.json()["user_id"]

                # the handler ran in the bus's consumer, with the request's metadata
                mailer = container.mailer()
                await eventually(
                    lambda: len(mailer.outbox) == 1,
                    timeout=DELIVERY_TIMEOUT,
                    message=lambda: f"mails so far: {mailer.outbox}",
                )
                assert mailer.outbox[0].to == "grace@example.com"
                assert CLIENT_IP in mailer.outbox[0].body

                async def both_audited() -> bool:
                    await container.audit_log().flush()
                    return set(_audit(audit_path)) == {
                        UserRegistered.event_type,
                        WelcomeMailSent.event_type,
                    }

                await eventually(
                    both_audited,
                    timeout=DELIVERY_TIMEOUT,
                    interval=0.1,
                    message=lambda: f"audited so far: {list(_audit(audit_path))}",
                )
            finally:
                if bus.state is BusState.RUNNING and isinstance(bus, SubscriptionAdmin):
                    for name in SUBSCRIPTIONS:
                        await bus.delete_subscription(name)
    finally:
        await _remove_broker_resources(adapter, rabbitmq_url, kafka_bootstrap_servers, unique_name)

    records = _audit(audit_path)
    registered = records[UserRegistered.event_type]
    sent = records[WelcomeMailSent.event_type]
    assert registered["user_id"] == user_id
    assert registered["metadata"] == {
        "ip_address": CLIENT_IP,
        "user_agent": "integration/1.0",
        "request_id": "req-broker-1",
    }
    assert registered["correlation_id"] == "signup-77"
    assert sent["correlation_id"] == "signup-77"
    assert sent["causation_id"] == registered["event_id"]
