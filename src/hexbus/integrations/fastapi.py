"""FastAPI glue: the bus lives exactly as long as the app; requests become publish metadata.

Needs the ``fastapi`` extra (``pip install 'hexbus[fastapi]'``). Three pieces, each
usable alone:

- ``hexbus_lifespan(container)`` for ``FastAPI(lifespan=...)``: wires the container's
  ``wiring_config`` modules, starts its resources (the bus with its handlers) before the
  first request and, on shutdown, drains the handlers in flight, stops the bus and
  unwires. Why the lifespan, not import time or the first request: a bus that cannot
  start (broker down, a bad ``HEXBUS_*`` value) must keep the app from serving, and a
  server's graceful shutdown (SIGTERM) must let handlers finish and buffered audit lines
  reach the disk.
- ``RequestContextMiddleware``: per request, a request id (``X-Request-ID``, generated
  when absent) and a correlation id (``X-Correlation-ID``, else the request id) in
  contextvars, echoed on the response. ``hexbus_lifespan`` gives the bus a
  ``hexbus.CorrelationIdMiddleware`` that reads it, so every event a request publishes
  carries the request's correlation id (and events its handlers publish inherit it).
- ``PublishMetadata``, ``Annotated[dict[str, str], Depends(request_metadata)]``: who
  asked, for ``publish(metadata=...)``: ``ip_address``, ``user_agent``, ``request_id``.

Usage::

    from dependency_injector.wiring import Provide, inject
    from fastapi import Depends, FastAPI
    from hexbus.integrations.fastapi import (
        PublishMetadata, RequestContextMiddleware, hexbus_lifespan,
    )

    container = ServiceContainer()  # a hexbus.Container subclass with a wiring_config
    app = FastAPI(lifespan=hexbus_lifespan(container))
    app.add_middleware(RequestContextMiddleware)

    @app.post("/users", status_code=201)
    @inject
    async def register(
        body: NewUser,
        metadata: PublishMetadata,
        register_user: RegisterUser = Depends(Provide[ServiceContainer.register_user]),
    ) -> UserOut:
        return await register_user(body.email, metadata=metadata)
"""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, cast

from hexbus.domain.errors import ConfigurationError

try:
    from fastapi import Depends, Request
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        "hexbus.integrations.fastapi needs FastAPI; install the extra: "
        "pip install 'hexbus[fastapi]'"
    ) from exc
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hexbus.application.middleware import CorrelationIdMiddleware
from hexbus.domain.ports import EventBus

if TYPE_CHECKING:
    from hexbus.infrastructure.container import Container

__all__ = [
    "CORRELATION_ID_HEADER",
    "REQUEST_ID_HEADER",
    "USER_AGENT_LIMIT",
    "PublishMetadata",
    "RequestContextMiddleware",
    "RequestMetadata",
    "add_correlation_middleware",
    "clean_id",
    "current_correlation_id",
    "current_request_id",
    "hexbus_lifespan",
    "new_request_id",
    "request_metadata",
]

logger = logging.getLogger("hexbus.integrations.fastapi")

REQUEST_ID_HEADER = "X-Request-ID"
CORRELATION_ID_HEADER = "X-Correlation-ID"
#: User agents are cut to this many characters: metadata travels as message headers on
#: every event, and a client chooses how long its header is.
USER_AGENT_LIMIT = 512
#: What an id taken from a header may look like (UUIDs, ULIDs, trace ids, ``svc:1234``).
_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("hexbus_request_id", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("hexbus_correlation_id", default=None)


def current_request_id() -> str | None:
    """The request id set by ``RequestContextMiddleware``; ``None`` outside a request."""
    return _request_id.get()


def current_correlation_id() -> str | None:
    """The correlation id of the request being served; ``None`` outside a request.

    The hook for ``hexbus.CorrelationIdMiddleware(current_correlation_id)``.
    """
    return _correlation_id.get()


def new_request_id() -> str:
    """A fresh request id (32 hex digits) for a request that brought none."""
    return uuid.uuid4().hex


def clean_id(value: str | None) -> str | None:
    """``value`` (stripped) if it is a plausible id, else ``None``.

    Why: a header is client input that ends up in logs, message headers and the audit
    trail; an id of 1-128 characters from ``[A-Za-z0-9._:@/+=-]`` cannot inject lines or
    bloat every event. A request whose id fails the check gets a generated one instead
    of an error: tracing is a convenience, not a reason to refuse the request.
    """
    if value is None:
        return None
    value = value.strip()
    return value if _ID.fullmatch(value) else None


class RequestContextMiddleware:
    """ASGI middleware: request and correlation ids per request, in contextvars.

    The request id is the ``X-Request-ID`` header or a generated one; the correlation
    id is ``X-Correlation-ID``, else the request id (a request with no caller-supplied
    conversation starts its own). Both are echoed on the response (unless ``echo`` is
    false) so a client can quote them. A plain ASGI middleware rather than a FastAPI
    dependency: a contextvar set by a dependency does not reliably reach the endpoint
    (sync dependencies run in a worker thread), and ``BaseHTTPMiddleware`` costs a task
    per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_id_header: str = REQUEST_ID_HEADER,
        correlation_id_header: str = CORRELATION_ID_HEADER,
        echo: bool = True,
    ) -> None:
        self.app = app
        self.request_id_header = request_id_header.lower()
        self.correlation_id_header = correlation_id_header.lower()
        self.echo = echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = clean_id(headers.get(self.request_id_header)) or new_request_id()
        correlation_id = clean_id(headers.get(self.correlation_id_header)) or request_id
        request_token = _request_id.set(request_id)
        correlation_token = _correlation_id.set(correlation_id)
        try:
            if self.echo and scope["type"] == "http":
                send = self._echoing(send, request_id, correlation_id)
            await self.app(scope, receive, send)
        finally:
            _correlation_id.reset(correlation_token)
            _request_id.reset(request_token)

    def _echoing(self, send: Send, request_id: str, correlation_id: str) -> Send:
        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.setdefault(self.request_id_header, request_id)
                headers.setdefault(self.correlation_id_header, correlation_id)
            await send(message)

        return send_with_ids


class RequestMetadata:
    """FastAPI dependency: the request's facts as ``publish(metadata=...)``.

    Returns ``ip_address`` (when known), ``user_agent`` (when sent, cut to
    ``user_agent_limit`` characters) and ``request_id`` (``RequestContextMiddleware``'s,
    else the ``X-Request-ID`` header, else a generated one); all ``str -> str``, the
    shape metadata must have to travel as message headers.

    ``X-Forwarded-For`` is ignored unless ``trusted_proxies`` says how many proxies of
    yours stand in front of the app: any client can send that header, so believing it
    by default would let anyone write any IP into your audit trail. With
    ``trusted_proxies=n`` the client is the n-th address from the right (each proxy
    appends the address it received the request from); a header with fewer entries, or
    an entry that is not an IP address, leaves the peer address in place. (Uvicorn's
    ``--proxy-headers --forwarded-allow-ips`` is the alternative: it rewrites the peer
    address itself, and then ``trusted_proxies`` stays 0.)
    """

    def __init__(
        self,
        *,
        trusted_proxies: int = 0,
        request_id_header: str = REQUEST_ID_HEADER,
        user_agent_limit: int = USER_AGENT_LIMIT,
    ) -> None:
        if trusted_proxies < 0:
            raise ValueError(
                f"trusted_proxies={trusted_proxies}: give the number of proxies in front "
                "of the app (0 = ignore X-Forwarded-For)"
            )
        if user_agent_limit < 1:
            raise ValueError(f"user_agent_limit={user_agent_limit}: must be at least 1")
        self.trusted_proxies = trusted_proxies
        self.request_id_header = request_id_header
        self.user_agent_limit = user_agent_limit

    async def __call__(self, request: Request) -> dict[str, str]:
        # async on purpose: FastAPI runs a sync dependency in a worker thread
        metadata: dict[str, str] = {}
        ip_address = self.client_ip(request)
        if ip_address:
            metadata["ip_address"] = ip_address
        user_agent = request.headers.get("user-agent")
        if user_agent:
            metadata["user_agent"] = user_agent[: self.user_agent_limit]
        metadata["request_id"] = (
            current_request_id()
            or clean_id(request.headers.get(self.request_id_header))
            or new_request_id()
        )
        return metadata

    def client_ip(self, request: Request) -> str | None:
        """The client's address: the peer, or the trusted proxies' view of it."""
        peer = request.client.host if request.client is not None else None
        if not self.trusted_proxies:
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getlist("x-forwarded-for")
            for hop in value.split(",")
            if hop.strip()
        ]
        if len(hops) < self.trusted_proxies:
            return peer
        candidate = hops[-self.trusted_proxies]
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            return peer


#: The default dependency instance (peer address only; no proxy trusted).
request_metadata = RequestMetadata()
#: ``metadata: PublishMetadata`` in an endpoint's parameters.
PublishMetadata = Annotated[dict[str, str], Depends(request_metadata)]


_correlated: weakref.WeakSet[EventBus] = weakref.WeakSet()


def add_correlation_middleware(bus: EventBus) -> None:
    """Give ``bus`` a ``CorrelationIdMiddleware`` reading ``current_correlation_id``.

    Once per bus: ``hexbus_lifespan`` calls it on every start, and one bus can see
    several (a test's ``container.event_bus.override(bus)`` outlives a lifespan run).
    """
    try:
        if bus in _correlated:
            return
        _correlated.add(bus)
    except TypeError:  # not weak-referenceable: the middleware is idempotent anyway
        pass
    bus.add_middleware(CorrelationIdMiddleware(current_correlation_id))


async def _settle(result: Awaitable[None] | None) -> None:
    """``init_resources()`` / ``shutdown_resources()`` return an awaitable only when the
    container has async resources."""
    if result is not None:
        await result


def hexbus_lifespan(
    container: Container, *, correlation_ids: bool = True
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` that runs ``container``'s bus.

    On start: build the bus (a bad ``HEXBUS_*`` value fails here, naming the variable),
    add the correlation middleware unless ``correlation_ids`` is false, wire the
    modules of the container's ``wiring_config`` (so ``Provide[...]`` in the routes
    resolves from *this* container), then ``init_resources()``: handlers subscribed,
    bus started. On stop: ``shutdown_resources()`` (the bus drains handlers in flight,
    registered handlers such as ``AuditLogHandler`` flush) and unwire.

    Running the lifespan again (one app entered by several tests, say) resets the
    container's singletons first: a stopped bus cannot be restarted and the handlers
    hold it, so the second run gets a new bus, new handlers and new in-memory adapters,
    like a restarted process. Until then the stopped ones stay inspectable.

    dependency-injector wires module-wide: two apps running at once must not share a
    routes module. To run your own start-up too, enter this inside your lifespan:
    ``async with hexbus_lifespan(container)(app): ...``.
    """

    started = False

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        nonlocal started
        if started:
            # A stopped bus cannot restart, and singletons (handlers, use cases' ports)
            # hold the old one: start afresh, as a restarted process would.
            container.reset_singletons()
        started = True
        if correlation_ids:
            add_correlation_middleware(cast(EventBus, container.event_bus()))
        container.wire()
        try:
            await _settle(container.init_resources())
        except BaseException:
            # release whatever did start (other resources of the container) and re-raise
            try:
                await _settle(container.shutdown_resources())
            except Exception:
                # the start-up error is the one to report; this one only gets logged
                logger.warning("shutting down after a failed start failed too", exc_info=True)
            finally:
                container.unwire()
            raise
        try:
            yield
        finally:
            try:
                await _settle(container.shutdown_resources())
            finally:
                container.unwire()

    return lifespan
