"""The demo's entities: plain mutable dataclasses owned by the repositories.

Why not pydantic: entities change over their life (a new name, a failed login); events,
which are facts, are the immutable ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from uuid import UUID, uuid4

__all__ = ["Item", "User", "hash_password"]


def hash_password(password: str, salt: str) -> str:
    """Good enough for a demo; a real service uses argon2/bcrypt."""
    return hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()


@dataclass
class User:
    email: str
    name: str
    password_hash: str
    user_id: UUID = field(default_factory=uuid4)
    failed_logins: int = 0
    logged_in: bool = False

    def check_password(self, password: str) -> bool:
        return hash_password(password, str(self.user_id)) == self.password_hash


@dataclass
class Item:
    owner_id: UUID
    name: str
    price_cents: int
    item_id: UUID = field(default_factory=uuid4)
