"""The FastAPI app: one container, its bus started and drained by the app's lifespan.

Run from the repository root::

    uvicorn examples.fastapi_service.app:app                          # memory
    HEXBUS_ADAPTER=rabbitmq uvicorn examples.fastapi_service.app:app  # or kafka

Why ``create_app(container)``: tests build the app around a container they configured
(``container.config.from_dict(...)``) and can look into (the mailer, the audit log);
``app`` is the one uvicorn serves, configured by the ``HEXBUS_*`` environment.
"""

from __future__ import annotations

from fastapi import FastAPI

from examples.fastapi_service import routes
from examples.fastapi_service.container import ServiceContainer
from hexbus.integrations.fastapi import RequestContextMiddleware, hexbus_lifespan

__all__ = ["app", "create_app"]


def create_app(container: ServiceContainer | None = None) -> FastAPI:
    """The app around ``container`` (default: a new one reading ``HEXBUS_*``)."""
    container = container or ServiceContainer()
    app = FastAPI(title="accounts (hexbus FastAPI example)", lifespan=hexbus_lifespan(container))
    # request id and correlation id per request; the lifespan makes the bus stamp events
    app.add_middleware(RequestContextMiddleware)
    app.include_router(routes.router)
    app.state.container = container
    return app


app = create_app()
