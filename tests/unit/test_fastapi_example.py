"""The FastAPI example service and ``hexbus.integrations.fastapi``, on the memory adapter.

Why httpx's ASGI client plus the app's own lifespan: the requests go through the whole
ASGI stack (middleware, validation, dependency injection, the use case, the bus) with
no server and no port, and the lifespan is the one uvicorn runs, so its start and drain
are tested too. One test does start uvicorn, to prove the example runs as documented.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the examples live beside src/, not in the package
    sys.path.insert(0, str(ROOT))

from examples.fastapi_service.app import create_app  # noqa: E402
from examples.fastapi_service.container import ServiceContainer  # noqa: E402
from examples.fastapi_service.events import UserRegistered, WelcomeMailSent  # noqa: E402

from hexbus import (  # noqa: E402
    BusState,
    ConfigurationError,
    EventBus,
    InvalidHandlerError,
    StatsReporter,
)
from hexbus.integrations.fastapi import (  # noqa: E402
    CORRELATION_ID_HEADER,
    REQUEST_ID_HEADER,
    PublishMetadata,
    RequestContextMiddleware,
    RequestMetadata,
    clean_id,
    current_correlation_id,
    hexbus_lifespan,
)
from hexbus.testing import RecordingEventBus, eventually  # noqa: E402

CLIENT_IP = "203.0.113.7"
ADA = {"email": "ada@example.com", "name": "Ada Lovelace"}


def _container(tmp_path: Path, **config: Any) -> ServiceContainer:
    container = ServiceContainer()
    container.config.from_dict(
        {"adapter": "memory", "audit_log_path": str(tmp_path / "audit.jsonl"), **config}
    )
    return container


@asynccontextmanager
async def _serving(app: FastAPI, client_ip: str = CLIENT_IP) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an httpx client that speaks ASGI to it directly."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50123))
        async with httpx.AsyncClient(transport=transport, base_url="http://accounts") as client:
            yield client


def _audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _of(records: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event_type"] == event_type]


def _stats(bus: EventBus) -> Any:
    assert isinstance(bus, StatsReporter)
    return bus.stats


# -- the example service ----------------------------------------------------------------


async def test_post_creates_the_user_the_handler_runs_and_the_audit_has_the_request(
    tmp_path: Path,
) -> None:
    container = _container(tmp_path)
    app = create_app(container)
    audit_path = tmp_path / "audit.jsonl"

    async with _serving(app) as client:
        response = await client.post(
            "/users",
            json=ADA,
            headers={"User-Agent": "pytest-agent/1.0", REQUEST_ID_HEADER: "req-42"},
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert body["email"] == ADA["email"]
        assert body["name"] == ADA["name"]
        assert response.headers[REQUEST_ID_HEADER] == "req-42"
        # the handler ran (memory, await mode: before the response) and saw the metadata
        [mail] = container.mailer().outbox
        assert mail.to == ADA["email"]
        assert CLIENT_IP in mail.body
        assert container.event_bus().state is BusState.RUNNING
        assert not audit_path.exists()  # buffered: written on flush or stop

    # the lifespan drained the bus: stopped, audit buffer flushed
    assert container.event_bus().state is BusState.CLOSED
    records = _audit(audit_path)
    [registered] = _of(records, UserRegistered.event_type)
    [sent] = _of(records, WelcomeMailSent.event_type)
    assert registered["user_id"] == body["user_id"]
    assert registered["metadata"] == {
        "ip_address": CLIENT_IP,
        "user_agent": "pytest-agent/1.0",
        "request_id": "req-42",
    }
    assert sent["causation_id"] == registered["event_id"]
    assert sent["correlation_id"] == registered["correlation_id"]


async def test_the_correlation_id_comes_from_the_request_header(tmp_path: Path) -> None:
    container = _container(tmp_path)
    app = create_app(container)

    async with _serving(app) as client:
        response = await client.post(
            "/users", json=ADA, headers={CORRELATION_ID_HEADER: "signup-flow-7"}
        )
        assert response.status_code == 201, response.text
        assert response.headers[CORRELATION_ID_HEADER] == "signup-flow-7"
        await container.audit_log().flush()

    records = _audit(tmp_path / "audit.jsonl")
    assert {r["event_type"]: r["correlation_id"] for r in records} == {
        UserRegistered.event_type: "signup-flow-7",
        WelcomeMailSent.event_type: "signup-flow-7",  # inherited inside the handler
    }


async def test_without_ids_the_request_id_is_generated_and_starts_the_correlation(
    tmp_path: Path,
) -> None:
    container = _container(tmp_path)
    app = create_app(container)

    async with _serving(app) as client:
        first = await client.post("/users", json=ADA)
        second = await client.post("/users", json={"email": "bob@example.com", "name": "Bob"})

    ids = [first.headers[REQUEST_ID_HEADER], second.headers[REQUEST_ID_HEADER]]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids[0] != ids[1]
    records = _of(_audit(tmp_path / "audit.jsonl"), UserRegistered.event_type)
    assert [r["metadata"]["request_id"] for r in records] == ids
    assert [r["correlation_id"] for r in records] == ids
    assert [first.headers[CORRELATION_ID_HEADER], second.headers[CORRELATION_ID_HEADER]] == ids


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-address", "name": "Ada"},
        {"email": "ada@example.com"},
        {"name": "Ada"},
        {"email": "ada@example.com", "name": ""},
        {},
    ],
    ids=["invalid-email", "missing-name", "missing-email", "empty-name", "empty"],
)
async def test_bad_input_is_422_and_nothing_is_published(
    tmp_path: Path, body: dict[str, str]
) -> None:
    container = _container(tmp_path)
    app = create_app(container)

    async with _serving(app) as client:
        response = await client.post("/users", json=body)
        assert response.status_code == 422, response.text
        assert _stats(container.event_bus()).published == 0

    assert container.mailer().outbox == []
    assert container.users().users == {}
    assert _audit(tmp_path / "audit.jsonl") == []


async def test_a_taken_address_is_409_and_published_once(tmp_path: Path) -> None:
    container = _container(tmp_path)
    app = create_app(container)

    async with _serving(app) as client:
        assert (await client.post("/users", json=ADA)).status_code == 201
        again = await client.post("/users", json={**ADA, "name": "Someone Else"})
        assert again.status_code == 409
        assert ADA["email"] in again.json()["detail"]

    assert len(_of(_audit(tmp_path / "audit.jsonl"), UserRegistered.event_type)) == 1
    assert len(container.mailer().outbox) == 1


async def test_health_answers_with_the_adapter(tmp_path: Path) -> None:
    app = create_app(_container(tmp_path))
    async with _serving(app) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "adapter": "memory"}


async def test_use_cases_get_the_bus_by_injection(tmp_path: Path) -> None:
    """Override the container's bus: the route's use case publishes to that one."""
    container = _container(tmp_path)
    recording = RecordingEventBus()
    app = create_app(container)

    with container.event_bus.override(recording):
        async with _serving(app) as client:
            response = await client.post(
                "/users", json=ADA, headers={CORRELATION_ID_HEADER: "c-1", "User-Agent": "t"}
            )
            assert response.status_code == 201, response.text

    event = recording.assert_published(UserRegistered, email=ADA["email"])
    assert event.correlation_id == "c-1"
    [record] = recording.records_of(UserRegistered)
    assert record.metadata["ip_address"] == CLIENT_IP
    assert record.key == response.json()["user_id"]
    assert container.mailer().outbox == []  # recorded, not dispatched


async def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(tmp_path: Path) -> None:
    container = _container(tmp_path)
    app = create_app(container)
    async with _serving(app) as client:
        response = await client.post(
            "/users", json=ADA, headers={"X-Forwarded-For": "198.51.100.99"}
        )
        assert response.status_code == 201
    [registered] = _of(_audit(tmp_path / "audit.jsonl"), UserRegistered.event_type)
    assert registered["metadata"]["ip_address"] == CLIENT_IP


async def test_a_bad_setting_stops_the_app_from_starting(tmp_path: Path) -> None:
    container = _container(tmp_path, adapter="carrier-pigeon")
    app = create_app(container)
    with pytest.raises(ConfigurationError, match="HEXBUS_ADAPTER"):
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - never reached


async def test_the_lifespan_can_run_twice_with_one_container(tmp_path: Path) -> None:
    """Tests start one app more than once: the second run gets a fresh bus (a stopped
    one cannot restart), handlers bound to it, the routes wired again, and one
    correlation middleware."""
    container = _container(tmp_path)
    app = create_app(container)
    buses = []
    for flow in ("first", "second"):
        async with _serving(app) as client:
            response = await client.post(
                "/users",
                json={"email": f"{flow}@example.com", "name": flow},
                headers={CORRELATION_ID_HEADER: flow},
            )
            assert response.status_code == 201, response.text
            assert [m.to for m in container.mailer().outbox] == [f"{flow}@example.com"]
            buses.append(container.event_bus())
    assert buses[0] is not buses[1]
    assert all(bus.state is BusState.CLOSED for bus in buses)
    records = _audit(tmp_path / "audit.jsonl")
    assert [r["correlation_id"] for r in records] == ["first", "first", "second", "second"]


async def test_the_example_runs_under_uvicorn_and_drains_on_sigterm(tmp_path: Path) -> None:
    """``uvicorn examples.fastapi_service.app:app`` from the repository root, as the
    README says; SIGTERM runs the lifespan's shutdown, which flushes the audit log."""
    audit_path = tmp_path / "audit.jsonl"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HEXBUS_ADAPTER": "memory",
        "HEXBUS_AUDIT_LOG_PATH": str(audit_path),
        "HEXBUS_SERVICE_NAME": "accounts",
    }
    command = [
        sys.executable, "-m", "uvicorn", "examples.fastapi_service.app:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    log = tmp_path / "uvicorn.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def healthy() -> bool:
                assert server.poll() is None, f"uvicorn exited:\n{log.read_text()}"
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=30, interval=0.1, message=log.read_text)
            response = await client.post("/users", json=ADA, headers={REQUEST_ID_HEADER: "r-1"})
            assert response.status_code == 201, response.text
        server.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.wait, 30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    # uvicorn re-raises the signal once shut down (newer releases): -15 is a clean exit too
    assert code in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    [registered] = _of(_audit(audit_path), UserRegistered.event_type)
    assert registered["metadata"]["ip_address"] == "127.0.0.1"
    assert registered["metadata"]["request_id"] == "r-1"
    assert registered["metadata"]["user_agent"].startswith("python-httpx/")


# -- hexbus.integrations.fastapi on its own ----------------------------------------------


def _echo_app(dependency: RequestMetadata | None = None) -> FastAPI:
    """A bare app that answers with what the integration extracted."""
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware)
    configured = dependency or RequestMetadata()

    @app.get("/facts")
    async def facts(metadata: PublishMetadata) -> dict[str, Any]:
        return {"metadata": metadata, "correlation_id": current_correlation_id()}

    @app.get("/custom")
    async def custom(metadata: dict[str, str] = Depends(configured)) -> dict[str, str]:  # noqa: B008
        return metadata

    return app


async def _get(app: FastAPI, path: str, headers: dict[str, str], ip: str = CLIENT_IP) -> Any:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "198.51.100.1", CLIENT_IP),  # not opted in: the header is anyone's to forge
        (1, "198.51.100.1", "198.51.100.1"),
        (1, "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # forged entry left of our proxy's
        (2, "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (2, "198.51.100.1", CLIENT_IP),  # fewer hops than proxies: keep the peer
        (1, "not-an-ip", CLIENT_IP),
        (1, "", CLIENT_IP),
    ],
)
async def test_client_ip_honours_x_forwarded_for_only_for_trusted_proxies(
    trusted: int, forwarded: str, expected: str
) -> None:
    app = _echo_app(RequestMetadata(trusted_proxies=trusted))
    response = await _get(app, "/custom", {"X-Forwarded-For": forwarded})
    assert response.json()["ip_address"] == expected


async def test_request_metadata_and_ids_from_headers() -> None:
    app = _echo_app()
    response = await _get(
        app,
        "/facts",
        {REQUEST_ID_HEADER: "r-9", CORRELATION_ID_HEADER: "c-9", "User-Agent": "x" * 600},
    )
    data = response.json()
    assert data["metadata"] == {
        "ip_address": CLIENT_IP,
        "user_agent": "x" * 512,
        "request_id": "r-9",
    }
    assert data["correlation_id"] == "c-9"
    assert response.headers[REQUEST_ID_HEADER] == "r-9"
    assert response.headers[CORRELATION_ID_HEADER] == "c-9"
    assert current_correlation_id() is None  # reset after the request


@pytest.mark.parametrize("value", ["has space", "x" * 129, "semi;colon", 'quote"d', ""])
async def test_an_implausible_request_id_is_replaced(value: str) -> None:
    response = await _get(_echo_app(), "/facts", {REQUEST_ID_HEADER: value})
    request_id = response.json()["metadata"]["request_id"]
    assert request_id != value
    assert clean_id(request_id) == request_id and len(request_id) == 32
    assert response.headers[REQUEST_ID_HEADER] == request_id


def test_clean_id_accepts_common_id_shapes() -> None:
    for value in (
        "0190f6a2-7c1e-7b3a-9d4e-2f1a0b3c4d5e",
        "01HZY3M4N5P6Q7R8S9T0V1W2X3",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "svc:1234",
    ):
        assert clean_id(f"  {value} ") == value


def test_request_metadata_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        RequestMetadata(trusted_proxies=-1)
    with pytest.raises(ValueError, match="user_agent_limit"):
        RequestMetadata(user_agent_limit=0)


async def test_a_failed_start_raises_the_cause_and_leaves_the_bus_stopped(
    tmp_path: Path,
) -> None:
    container = _container(tmp_path)
    container.handlers.add_args(object())  # not a handler: the bus refuses it on start
    app = FastAPI(lifespan=hexbus_lifespan(container))
    with pytest.raises(InvalidHandlerError, match="cannot register"):
        async with app.router.lifespan_context(app):
            pass  # pragma: no cover - never reached
    assert container.event_bus().state is BusState.NEW


def test_importing_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    monkeypatch.delitem(sys.modules, "hexbus.integrations.fastapi")
    with pytest.raises(ConfigurationError, match=r"pip install 'hexbus\[fastapi\]'"):
        importlib.import_module("hexbus.integrations.fastapi")
