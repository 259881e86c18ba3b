"""In-memory adapter (the default)."""

from hexbus.infrastructure.memory.bus import InMemoryEventBus
from hexbus.infrastructure.memory.config import MemoryConfig

__all__ = ["InMemoryEventBus", "MemoryConfig"]
