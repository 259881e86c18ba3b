"""Processes and sockets: what the harness needs to start, find and stop programs safely.

The harness only ever signals processes it recorded itself (pid *and* start time, so a
recycled pid is never mistaken for ours), and it probes ports before binding them, because
it shares the machine with other brokers and with other checkouts of this project.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path


class BrokerError(Exception):
    """A broker could not be installed, started or stopped (the message says what to do)."""


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_SECRET_VARIABLE = re.compile(r"^([A-Z0-9_]*PASSWORD[A-Z0-9_]*=).+$")


def mask_secrets(line: str) -> str:
    """*line* (``KEY=value``) with URL passwords and ``*PASSWORD*=`` values as ``***``:
    for the log (stderr); stdout keeps the real values, which is what it is for."""
    line = _SECRET_VARIABLE.sub(r"\1***", line)
    return _URL_PASSWORD.sub(r"\1***@", line)


def log(msg: str) -> None:
    """Progress goes to stderr: stdout is reserved for the ``HEXBUS_*=...`` lines."""
    print(f"[brokers] {msg}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------


def proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the pid, it identifies one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, starttime: str | None = None) -> bool:
    """True if *pid* runs (not a zombie) and, if given, started at *starttime*."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, now reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except OSError:
        return False
    return starttime is None or proc_starttime(pid) == starttime


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group we created for *pid* (start_new_session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_dead(pid: int, starttime: str | None, deadline: float) -> bool:
    """Poll until *pid* is gone or *deadline* (monotonic) passes; True if gone."""
    while time.monotonic() < deadline:
        if not pid_alive(pid, starttime):
            return True
        time.sleep(0.2)
    return not pid_alive(pid, starttime)


def terminate(pid: int, starttime: str | None, grace: float) -> None:
    """SIGTERM the group, then SIGKILL it after *grace* seconds."""
    if not pid_alive(pid, starttime):
        return
    signal_group(pid, signal.SIGTERM)
    if wait_dead(pid, starttime, time.monotonic() + grace):
        return
    log(f"pid {pid} ignored SIGTERM for {grace:.0f}s; sending SIGKILL")
    signal_group(pid, signal.SIGKILL)
    if not wait_dead(pid, starttime, time.monotonic() + 10):
        raise BrokerError(f"pid {pid} survived SIGKILL")


def service_user(name: str) -> pwd.struct_passwd | None:
    """The system account a broker runs as when we are root (RabbitMQ refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


# -- ports -----------------------------------------------------------------------------


def port_answers(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:*port*."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Whether a broker could listen on 127.0.0.1:*port* now (nobody binds or answers it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_answers(port, 0.2)


def port_owner(port: int) -> str:
    """Best effort ``pid 123 (java)`` of the process listening on *port*, for error messages."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                # local address is HEXIP:HEXPORT; state 0A is LISTEN
                if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    if inodes:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in (proc / "fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        comm = (proc / "comm").read_text().strip()
                        return f"pid {proc.name} ({comm})"
    return "another process"


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 by default)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


# -- files -----------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = 300.0, *, owner: str = "brokers.py") -> Iterator[None]:
    """Hold an exclusive flock on *path*: serialises commands that change state.

    *owner* names the script holding it, for the message when it is held too long.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"another {owner} has held {path} for {timeout:.0f}s; "
                        "wait for it to finish (or end it) and try again"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail(path: Path, lines: int = 15) -> str:
    """The last *lines* of a log, indented, for an error message ("" if unreadable)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text[-lines:])
