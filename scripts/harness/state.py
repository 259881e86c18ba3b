"""Where one checkout keeps its brokers, and the identity that makes them its own.

Everything the harness writes lives under one state directory: ``<checkout>/.cache/brokers``
unless ``--state-dir`` (or ``$HEXBUS_BROKERS_STATE_DIR``) names another. Anything that must
be unique on the machine -- the Erlang node name, the ports the harness had to choose --
is derived from or recorded in that directory, so two checkouts (or two state directories
of one checkout) run side by side without seeing each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .processes import BrokerError, file_lock, service_user

REPO = Path(__file__).resolve().parents[2]
STATE_ENV = "HEXBUS_BROKERS_STATE_DIR"
DEFAULT_STATE = REPO / ".cache" / "brokers"

#: RabbitMQ refuses to run as root: as root we run it as this account, which then needs to
#: reach its node directories (a checkout under /root cannot be reached by it).
RABBIT_USER = "rabbitmq"
RABBIT_HOME = Path("/var/lib/rabbitmq")
#: PostgreSQL refuses root as well (initdb and postgres): as root it runs as Debian's
#: ``postgres`` account, with the same reachability rule.
POSTGRES_USER = "postgres"
POSTGRES_HOME = Path("/var/lib/postgresql")
#: kind -> (the account it runs as when we are root, that account's home)
SERVICE_ACCOUNTS = {
    "rabbitmq": (RABBIT_USER, RABBIT_HOME),
    "postgres": (POSTGRES_USER, POSTGRES_HOME),
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")


@dataclass(frozen=True)
class State:
    """One state directory: its layouts (``c1``, ``c3``), lock, identity and jar cache."""

    root: Path
    repo: Path = REPO
    name_override: str | None = None

    @classmethod
    def from_options(cls, state_dir: str | None = None, name: str | None = None) -> State:
        """The state named on the command line, else by the environment, else the checkout's."""
        raw = state_dir or os.environ.get(STATE_ENV, "").strip()
        root = Path(raw).expanduser().resolve() if raw else DEFAULT_STATE
        if name is not None and not _NAME.match(name):
            raise BrokerError(
                f"--name {name!r} is not a usable Erlang node name; use a letter followed by "
                "letters, digits, '-' or '_' (at most 41 characters)"
            )
        return cls(root=root, name_override=name)

    @property
    def is_default(self) -> bool:
        return self.root == DEFAULT_STATE

    @property
    def command(self) -> str:
        """How to address this state on the command line (for messages)."""
        cmd = "python3 scripts/brokers.py"
        return cmd if self.is_default else f"{cmd} --state-dir {shlex.quote(str(self.root))}"

    # -- files ---------------------------------------------------------------------------
    def layout_dir(self, size: int) -> Path:
        """``c1/`` holds the single-node brokers, ``c3/`` the 3-node clusters."""
        return self.root / f"c{size}"

    def node_root(self, kind: str, size: int) -> Path:
        """Where the node directories of *kind* live (RabbitMQ's and PostgreSQL's must be
        reachable by the account they run as: else under that account's home)."""
        default = self.layout_dir(size)
        account = SERVICE_ACCOUNTS.get(kind)
        user = service_user(account[0]) if account else None
        if account is None or user is None:
            return default
        for parent in [self.root, *self.root.parents]:
            if parent.exists():
                st = parent.stat()
                if not st.st_mode & 0o001 and st.st_uid != user.pw_uid:
                    return account[1] / "hexbus-brokers" / self.digest[:8] / f"c{size}"
        return default

    @property
    def kafka_pom(self) -> Path:
        return self.repo / "scripts" / "kafka" / "pom.xml"

    @property
    def kafka_log4j(self) -> Path:
        return self.repo / "scripts" / "kafka" / "log4j2.properties"

    @property
    def kafka_libs(self) -> Path:
        """The Kafka jars: one copy per checkout, shared by all its state directories."""
        return self.repo / ".cache" / "brokers" / "kafka" / "libs"

    @contextlib.contextmanager
    def lock(self, timeout: float = 300.0) -> Iterator[None]:
        """Serialise the commands that change this state (not those of other states)."""
        with file_lock(self.root / ".lock", timeout):
            yield

    # -- identity ------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """A stable fingerprint of this state directory's path."""
        return hashlib.sha1(str(self.root).encode()).hexdigest()

    @property
    def seed(self) -> int:
        """Where this state starts looking for free ports (differs between checkouts)."""
        return int(self.digest[:8], 16)

    @property
    def _identity_file(self) -> Path:
        return self.root / "identity.json"

    def recorded_name(self) -> str | None:
        try:
            data = json.loads(self._identity_file.read_text())
        except (OSError, ValueError):
            return None
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) and _NAME.match(name) else None

    @property
    def name(self) -> str:
        """The Erlang node name prefix: ``--name``, else recorded, else ``hexbus-<digest>``.

        Why not plain ``hexbus``: Erlang node names are machine-global (one epmd per
        port), so a second checkout using the same name fails with duplicate_node_name.
        """
        return self.name_override or self.recorded_name() or f"hexbus-{self.digest[:8]}"

    def record_name(self) -> None:
        """Persist :attr:`name`, so later commands find the nodes without ``--name``."""
        if self.recorded_name() == self.name:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._identity_file.write_text(json.dumps({"name": self.name}) + "\n")
