"""The secure broker set as the tests see it (shared by conftest.py and the tests).

Why a module of its own: test modules cannot import ``conftest`` reliably (pytest keeps
one module of that name at a time), and the harness package lives under ``scripts/``.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

#: ``scripts/harness/tls.py``: the throw-away CA and certificate files.
tls: Any = importlib.import_module("harness.tls")


@dataclass(frozen=True)
class SecureBrokers:
    """The running secure set: its ``HEXBUS_*`` variables and its certificate files."""

    env: dict[str, str]
    state_dir: Path

    @property
    def authority(self) -> Any:
        return tls.Authority(self.state_dir / tls.TLS_DIR)

    def kafka_controller_port(self) -> int:
        """The set's Kafka controller listener (plaintext, never a client's address)."""
        ports = json.loads((self.state_dir / "c1" / "ports.json").read_text())
        return int(ports["kafka-1"]["controller_port"])
