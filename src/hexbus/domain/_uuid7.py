"""UUIDv7 (RFC 9562) from the standard library.

The domain layer may import only pydantic and the standard library, and Python 3.11
has no ``uuid.uuid7``; this is the RFC's "method 1" (a 12-bit counter in ``rand_a``
that keeps ids strictly increasing inside one millisecond and one process).
"""

from __future__ import annotations

import os
import threading
import time
from uuid import UUID

__all__ = ["uuid7"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> UUID:
    """A time-ordered UUID: later calls in this process give larger ids."""
    global _last_ms, _counter  # noqa: PLW0603 - the generator's state is its whole point
    rand = int.from_bytes(os.urandom(8), "big")
    with _lock:
        now = time.time_ns() // 1_000_000
        if now > _last_ms:
            _last_ms = now
            _counter = (rand >> 52) & 0x7FF  # random start, room left to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    return UUID(int=value)
