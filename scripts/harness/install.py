"""Getting the brokers' software onto the machine: RabbitMQ and PostgreSQL (apt), Java,
Kafka's jars (Maven).

These are the only steps that touch the system or the network, and they run once: a
machine that already has them (or a second checkout next to the first) skips them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .processes import BrokerError, file_lock, log, tail
from .state import State

DEBIAN_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
#: Debian keeps each PostgreSQL major version's server programs in <here>/<major>/bin
#: (only the client wrappers are on $PATH).
DEBIAN_POSTGRES_LIB = Path("/usr/lib/postgresql")
APT_TIMEOUT = 900.0
MVN_TIMEOUT = 600.0


def rabbit_tool(tool: str) -> str:
    """Path of a RabbitMQ script (Debian keeps the real ones in /usr/lib/rabbitmq/bin)."""
    if (DEBIAN_RABBIT_BIN / tool).exists():
        return str(DEBIAN_RABBIT_BIN / tool)
    found = shutil.which(tool)
    if not found:
        raise BrokerError(
            f"{tool} not found; install RabbitMQ >= 3.10 (apt-get install rabbitmq-server)"
        )
    return found


def _run_logged(cmd: list[str], out_path: Path, timeout: float, env: dict[str, str]) -> None:
    with open(out_path, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            rc = subprocess.run(
                cmd,
                check=False,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            raise BrokerError(
                f"`{cmd[0]}` timed out after {timeout:.0f}s; see {out_path}"
            ) from None
    if rc != 0:
        raise BrokerError(
            f"`{' '.join(cmd)}` failed (exit {rc}); see {out_path}:\n{tail(out_path)}"
        )


def ensure_rabbitmq(state: State) -> None:
    """Install Debian's rabbitmq-server if missing, without letting apt start its service."""
    if (DEBIAN_RABBIT_BIN / "rabbitmq-server").exists() or shutil.which("rabbitmq-server"):
        return
    _apt_install(state, "rabbitmq-server", "RabbitMQ >= 3.10", "rabbitmq-server")


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server's bin directory: Debian's, else ``pg_ctl``'s on $PATH."""
    versions = sorted(
        (p for p in DEBIAN_POSTGRES_LIB.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    if versions:
        return versions[-1]
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "postgres").exists():
        return Path(found).parent
    return None


def postgres_tool(tool: str) -> str:
    """Path of a PostgreSQL server program (initdb, postgres, pg_isready, psql)."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / tool).exists():
        raise BrokerError(
            f"PostgreSQL's {tool} not found; install PostgreSQL (apt-get install postgresql)"
        )
    return str(bindir / tool)


def ensure_postgres(state: State) -> None:
    """Install Debian's postgresql if missing, without letting apt start its cluster."""
    if postgres_bindir() is not None:
        return
    _apt_install(state, "postgresql", "PostgreSQL", "postgresql")


def _apt_install(state: State, package: str, what: str, service: str) -> None:
    """apt-get install *package*; its service is kept from starting (policy-rc.d) and,
    on a systemd host, disabled again: our nodes never rely on it, and it should not
    keep running (or hold a default port) behind the user's back."""
    if not shutil.which("apt-get"):
        raise BrokerError(f"{package} is not installed and apt-get is unavailable; install {what}")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise BrokerError(
                f"{package} is not installed; run as root or install it: apt-get install {package}"
            )
        prefix = ["sudo", "-n"]
    log(f"installing {package} with apt-get (service auto-start suppressed via policy-rc.d)")
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if os.geteuid() == 0 and not policy.exists():
        policy.write_text(
            "#!/bin/sh\n# hexbus brokers.py: do not start services during install\nexit 101\n"
        )
        policy.chmod(0o755)
        created_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    state.root.mkdir(parents=True, exist_ok=True)
    aptlog = state.root / "apt.log"
    aptlog.write_text("")
    apt = [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=120"]
    try:
        _run_logged([*apt, "update"], aptlog, APT_TIMEOUT, env)
        _run_logged(
            [*apt, "install", "-y", "--no-install-recommends", package],
            aptlog,
            APT_TIMEOUT,
            env,
        )
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        subprocess.run(
            ["systemctl", "disable", "--now", service],
            check=False,
            capture_output=True,
            timeout=60,
        )


def java_bin() -> str:
    """The ``java`` that runs Kafka ($JAVA_HOME first)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "`java` (17+) is needed to run Kafka; install it "
            "(apt-get install openjdk-17-jre-headless)"
        )
    return found


def ensure_kafka_libs(state: State) -> None:
    """Fetch the Kafka jars of scripts/kafka/pom.xml with Maven, once per pom version.

    The jars are shared by every state directory of the checkout, so they have a lock of
    their own (two states starting at once must not both rewrite them).
    """
    libs = state.kafka_libs
    marker = libs / ".complete"
    pom_hash = hashlib.sha256(state.kafka_pom.read_bytes()).hexdigest()

    def complete() -> bool:
        return (
            marker.exists()
            and marker.read_text().strip() == pom_hash
            and bool(list(libs.glob("kafka_2.13-*.jar")))
        )

    if complete():
        return
    with file_lock(libs.parent / ".libs.lock", timeout=MVN_TIMEOUT + 60):
        if complete():
            return
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                "Maven (`mvn`) is needed to fetch Kafka; install it (apt-get install maven)"
            )
        if libs.exists():
            shutil.rmtree(libs)
        libs.mkdir(parents=True)
        mlog = libs.parent / "mvn.log"
        mlog.write_text("")
        log(f"fetching Kafka jars with Maven (log: {mlog})")
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(state.kafka_pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ]
        try:
            _run_logged(cmd, mlog, MVN_TIMEOUT, dict(os.environ))
        except BrokerError as e:
            raise BrokerError(f"Maven could not fetch Kafka: {e}") from None
        if not list(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven fetched no kafka_2.13 jar; see {mlog}:\n{tail(mlog)}")
        marker.write_text(pom_hash + "\n")
