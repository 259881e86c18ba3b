"""PostgreSQL nodes (the transactional outbox's database): initdb, start, provisioning, stop.

One server per single-node set, made from Debian's ``postgresql`` package but never its
system cluster: ``initdb`` writes a cluster into the node directory, and the server runs as
a plain process of ours, listening on 127.0.0.1 at the node's recorded port (5432 when it
is free) with its Unix socket in the node directory -- so it shares the machine with the
system's PostgreSQL, another checkout's, or a decoy set on 5432.

What clients get: a database ``hexbus`` owned by the login role ``hexbus`` (allowed to
create databases: the test fixtures make one per test), with a password generated once per
node and kept in ``<node>/password`` (mode 0600); TCP logins use SCRAM-SHA-256. Local
(socket) logins are trusted, which is safe because the socket directory is the node's own,
mode 0700: only the harness's user (or, as root, ``postgres``) can reach it; the harness uses
it to create the role and database.

As root everything runs as the ``postgres`` account (initdb and postgres refuse root).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .install import postgres_tool
from .nodes import Layout, Node
from .processes import BrokerError, log, service_user, tail, terminate, wait_dead
from .state import POSTGRES_USER

#: The environment variable clients read: *not* the outbox's own setting
#: (``HEXBUS_OUTBOX_URL``), which would switch every container of a test session to the
#: outbox; the fixtures in hexbus.testing read this one.
ENV_URL = "HEXBUS_TEST_POSTGRES_URL"
DATABASE = "hexbus"
ROLE = "hexbus"
SUPERUSER = "postgres"
#: Seconds a fast shutdown (SIGINT: roll back, disconnect clients) gets before SIGKILL.
STOP_TIMEOUT = 30.0
#: A Unix socket path is at most 107 bytes (``sun_path``); the file is ``.s.PGSQL.<port>``.
SOCKET_PATH_MAX = 107
_PASSWORD_CHARS = string.ascii_letters + string.digits  # URL-safe as it is


def url(password: str, port: int, database: str = DATABASE) -> str:
    """The SQLAlchemy URL of *database* on a node (what ``env`` prints)."""
    return f"postgresql+asyncpg://{ROLE}:{password}@127.0.0.1:{port}/{database}"


def env_line(nodes: Sequence[Node]) -> str:
    return f"{ENV_URL}={url(password(nodes[0]), nodes[0].port)}"


def password(node: Node) -> str:
    """The role's password: made at the node's first start, then read back."""
    f = node.dir / "password"
    try:
        value = f.read_text().strip()
    except OSError:
        value = ""
    if value:
        return value
    value = "".join(secrets.choice(_PASSWORD_CHARS) for _ in range(24))
    node.dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value


def socket_dir(node: Node) -> Path:
    """The node's own Unix socket directory: inside the node directory when the socket's
    path fits ``sun_path``, else (a deep checkout) a short one in /tmp of this state's."""
    own = node.dir / "run"
    if len(str(own / f".s.PGSQL.{node.port}.lock")) <= SOCKET_PATH_MAX:
        return own
    return Path("/tmp") / f"hexbus-pg-{node.state.digest[:12]}"


def _as_postgres() -> dict[str, object]:
    user = service_user(POSTGRES_USER)
    if not user:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _give_to_postgres(*paths: Path) -> None:
    user = service_user(POSTGRES_USER)
    if user:
        for p in paths:
            os.chown(p, user.pw_uid, user.pw_gid)


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _run(node: Node, cmd: list[str], what: str, timeout: float, stdin: str | None = None) -> str:
    try:
        r = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            env=_env(),
            cwd=str(node.dir),
            timeout=timeout,
            **_as_postgres(),
        )  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        raise BrokerError(f"{node.name}: {what} timed out after {timeout:.0f}s") from None
    if r.returncode != 0:
        raise BrokerError(
            f"{node.name}: {what} failed (exit {r.returncode}): "
            f"{(r.stderr or r.stdout).strip()[-1500:]}"
        )
    return str(r.stdout)


def server_major(version_output: str) -> str:
    """``15`` of ``postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``."""
    m = re.search(r"PostgreSQL\)?\s+(\d+)", version_output)
    if not m:
        raise BrokerError(f"cannot read PostgreSQL's version from {version_output.strip()!r}")
    return m.group(1)


def _initdb(node: Node) -> None:
    """Make the node's cluster once; again only if it was made by another major version
    (test data: nothing to keep, and the server cannot open it)."""
    data = node.dir / "data"
    major = server_major(_run(node, [postgres_tool("postgres"), "--version"], "postgres -V", 30))
    made_by = data / "PG_VERSION"
    if made_by.exists():
        if made_by.read_text().strip() == major:
            return
        old = made_by.read_text().strip()
        log(f"{node.name}: data was made by PostgreSQL {old}; making it again for {major}")
    shutil.rmtree(data, ignore_errors=True)
    log(f"{node.name}: initdb (PostgreSQL {major})")
    _run(
        node,
        [
            postgres_tool("initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        ],
        "initdb",
        180,
    )


def launch(node: Node, layout: Layout) -> None:
    node.dir.mkdir(parents=True, exist_ok=True)
    _give_to_postgres(node.dir)
    password(node)  # made now: `env` must never race the first start
    _initdb(node)
    sock = socket_dir(node)
    sock.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock.chmod(0o700)
    _give_to_postgres(sock)
    cmd = [
        postgres_tool("postgres"),
        "-D",
        str(node.dir / "data"),
        "-p",
        str(node.port),
        "-k",
        str(sock),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_permissions=0700",
        "-c",
        "max_connections=200",
        "-c",
        "logging_collector=off",
        "-c",
        "password_encryption=scram-sha-256",
    ]
    with open(node.logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=_env(),
            cwd=str(node.dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as_postgres(),
        )  # type: ignore[call-overload]
    node.write_pid(proc.pid)
    log(f"{node.name}: launched pid {proc.pid} on 127.0.0.1:{node.port} (socket {sock})")


def _accepts(node: Node) -> bool:
    r = subprocess.run(
        [postgres_tool("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(node.port), "-t", "2"],
        check=False,
        capture_output=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
        timeout=15,
    )
    return r.returncode == 0


def _provision(node: Node) -> None:
    """The role (its password as recorded) and the database: idempotent, every start.

    The SQL goes through stdin, never the command line (``ps`` shows that to everyone).
    """
    sql = (
        "DO $$BEGIN\n"
        f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN\n"
        f"    CREATE ROLE {ROLE} LOGIN CREATEDB;\n"
        "  END IF;\n"
        "END$$;\n"
        f"ALTER ROLE {ROLE} WITH LOGIN CREATEDB PASSWORD '{password(node)}';\n"
        f"SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}'\n"
        f"  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
    )
    cmd = [
        postgres_tool("psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(socket_dir(node)),
        "-p",
        str(node.port),
        "-U",
        SUPERUSER,
        "-d",
        "postgres",
    ]
    _run(node, cmd, "creating the role and database", 60, stdin=sql)


def wait(node: Node, deadline: float) -> None:
    """Return once the server accepts connections and the role and database exist."""
    while True:
        if not node.is_running():
            raise BrokerError(
                f"{node.name} exited during start-up; see {node.logfile}:\n{tail(node.logfile)}"
            )
        if _accepts(node):
            break
        if time.monotonic() > deadline:
            raise BrokerError(f"{node.name} not ready within the deadline; see {node.logfile}")
        time.sleep(0.2)
    _provision(node)


def stop(node: Node) -> None:
    """Fast shutdown (SIGINT to the postmaster), then SIGTERM/SIGKILL to the group.

    Not SIGTERM first: that is PostgreSQL's *smart* shutdown, which waits for every
    client to disconnect -- a test session's pooled connections would hold it open.
    """
    running = node.running_pid()
    if running is not None:
        pid, st = running
        log(f"{node.name}: stopping pid {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not wait_dead(pid, st, time.monotonic() + STOP_TIMEOUT):
            terminate(pid, st, 10)
    node.pidfile.unlink(missing_ok=True)
