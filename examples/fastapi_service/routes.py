"""HTTP routes: parse the request, call a use case, map its outcome to a response.

Why the use case comes from ``Provide[...]``: dependency-injector builds it per request
from the container (``providers.Factory``) with the running bus injected; the route never
sees which transport that is. ``PublishMetadata`` hands the request facts (client IP,
user agent, request id) to the use case, which passes them to ``publish(metadata=...)``.
"""

# No ``from __future__ import annotations`` here: dependency-injector's ``@inject`` finds
# ``Provide[...]`` inside ``Annotated[...]`` only in evaluated annotations.
from typing import Annotated
from uuid import UUID

from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from examples.fastapi_service.container import ServiceContainer
from examples.fastapi_service.use_cases import EmailTakenError, RegisterUser
from hexbus import HexbusSettings
from hexbus.integrations.fastapi import PublishMetadata

__all__ = ["NewUser", "UserOut", "router"]

#: Shape check only (no deliverability lookup, no extra dependency): something@domain.tld.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

router = APIRouter()


class NewUser(BaseModel):
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254)
    name: str = Field(min_length=1, max_length=100)


class UserOut(BaseModel):
    user_id: UUID
    email: str
    name: str


class Health(BaseModel):
    status: str
    adapter: str


@router.post("/users", status_code=status.HTTP_201_CREATED)
@inject
async def register_user(
    body: NewUser,
    metadata: PublishMetadata,
    register: Annotated[RegisterUser, Depends(Provide[ServiceContainer.register_user])],
) -> UserOut:
    """Register a user; ``UserRegistered`` is published with the request's metadata."""
    try:
        user = await register(body.email, body.name, metadata=metadata)
    except EmailTakenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return UserOut(user_id=user.user_id, email=user.email, name=user.name)


@router.get("/health")
@inject
async def health(
    settings: Annotated[HexbusSettings, Depends(Provide[ServiceContainer.settings])],
) -> Health:
    """Answers once the lifespan started the bus (the app serves nothing before)."""
    return Health(status="ok", adapter=settings.adapter)
