#!/usr/bin/env python3
"""A container engine and the brokers' images for hexbus' integration tests (testcontainers).

Stdlib only; runs with any Python >= 3.11 (no venv needed).

    python3 scripts/containers.py up        # an engine that answers, and the images built
    python3 scripts/containers.py build     # the images only (an engine must answer)
    python3 scripts/containers.py down      # stop the engine this script started
    python3 scripts/containers.py status
    python3 scripts/containers.py run -- CMD ARGS...   # up, CMD on the container path, down

Why a script of our own: the test fixtures (``hexbus.testing.brokers``) start the images
``hexbus/rabbitmq:<version>``, ``hexbus/kafka:<version>`` and ``hexbus/postgres:<major>``,
built from ``docker/`` with the same versions as the native path of ``scripts/brokers.py``
(Debian's rabbitmq-server and postgresql; the Kafka jars of ``scripts/kafka/pom.xml``).
Where no image registry answers (this project's CI machines), everything is built locally:

1. Engine: a Docker engine that answers is used as it is. Otherwise, as root on Debian, the
   ``docker.io`` package is installed (services kept from starting) and ``dockerd`` started,
   recorded in ``.cache/containers/engine.json`` and stopped again by ``down`` / ``run``.
   It runs without touching the firewall or sysctls (``--iptables=false
   --ip-forward=false``): published ports still work through Docker's userland proxy, and
   image builds use the host's network.
2. Base: ``debian:bookworm-slim`` where it can be pulled; where ``docker pull`` fails,
   ``hexbus/debian:bookworm`` is made with ``debootstrap`` from this machine's apt mirror
   (with its updates and security suites, so packages match the native path's).
3. Images: built with ``DOCKER_BUILDKIT=0`` where there is no buildx plugin; an image is
   rebuilt only when its inputs (Dockerfile, files, base, versions) changed (label
   ``org.hexbus.inputs``).

``run`` starts CMD with ``HEXBUS_TEST_BROKERS=containers`` and
``TESTCONTAINERS_RYUK_DISABLED=true`` and without ``HEXBUS_RABBITMQ_URL`` /
``HEXBUS_KAFKA_BOOTSTRAP_SERVERS`` / ``HEXBUS_TEST_POSTGRES_URL``, so the fixtures must use
containers (and fail rather than fall back). Test containers left behind by a killed test
run are removed (``org.hexbus.test-session`` label of a process that is gone).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness package beside us
from harness.processes import BrokerError, file_lock, tail

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".cache" / "containers"
ENGINE_FILE = STATE / "engine.json"
DOCKER_DIR = REPO / "docker"
KAFKA_POM = REPO / "scripts" / "kafka" / "pom.xml"
#: The jars scripts/brokers.py fetched (reused when they match the pom).
NATIVE_KAFKA_LIBS = REPO / ".cache" / "brokers" / "kafka" / "libs"

CODENAME = "bookworm"
PUBLIC_BASE = f"debian:{CODENAME}-slim"
LOCAL_BASE = f"hexbus/debian:{CODENAME}"
INPUTS_LABEL = "org.hexbus.inputs"
#: Labels the fixtures put on their containers (kind; "host:pid" of the test process).
BROKER_LABEL = "org.hexbus.test-broker"
SESSION_LABEL = "org.hexbus.test-session"

ENGINE_TIMEOUT = 60.0
APT_TIMEOUT = 900.0
BUILD_TIMEOUT = 1800.0
T0 = time.monotonic()


class SetupError(Exception):
    """The engine or an image could not be provided (the message says what to do)."""


def log(msg: str) -> None:
    print(f"[containers {time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def state_lock(timeout: float = 1800.0) -> Iterator[None]:
    """Serialise set-up and tear-down of this checkout (two `make test-containers`)."""
    try:
        with file_lock(STATE / ".lock", timeout, owner="scripts/containers.py"):
            yield
    except BrokerError as exc:
        raise SetupError(str(exc)) from None


# -- versions ------------------------------------------------------------------------------


def rabbitmq_version() -> str:
    """The RabbitMQ version of docker/rabbitmq/Dockerfile (Debian bookworm's package)."""
    text = (DOCKER_DIR / "rabbitmq" / "Dockerfile").read_text()
    match = re.search(r"^ARG RABBITMQ_VERSION=(\S+)$", text, re.M)
    if not match:
        raise SetupError("docker/rabbitmq/Dockerfile has no `ARG RABBITMQ_VERSION=...`")
    return match.group(1)


def postgres_version() -> str:
    """The PostgreSQL major version of docker/postgres/Dockerfile (Debian bookworm's)."""
    text = (DOCKER_DIR / "postgres" / "Dockerfile").read_text()
    match = re.search(r"^ARG POSTGRES_VERSION=(\S+)$", text, re.M)
    if not match:
        raise SetupError("docker/postgres/Dockerfile has no `ARG POSTGRES_VERSION=...`")
    return match.group(1)


def kafka_version() -> str:
    """The Kafka version of scripts/kafka/pom.xml (the native path's)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", KAFKA_POM.read_text())
    if not match:
        raise SetupError(f"{KAFKA_POM} has no <kafka.version>")
    return match.group(1).strip()


def images() -> dict[str, str]:
    """kind -> the image name the fixtures ask for by default."""
    return {
        "rabbitmq": f"hexbus/rabbitmq:{rabbitmq_version()}",
        "kafka": f"hexbus/kafka:{kafka_version()}",
        "postgres": f"hexbus/postgres:{postgres_version()}",
    }


# -- the docker CLI -----------------------------------------------------------------------


def docker_cli() -> str:
    found = shutil.which("docker")
    if not found:
        raise SetupError(
            "no `docker` command: install Docker (Docker Desktop, or `apt-get install "
            "docker.io` on Debian), or podman with its Docker-compatible socket"
        )
    return found


def docker(
    *args: str, timeout: float = 120.0, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [docker_cli(), *args]
    try:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise SetupError(f"`docker {' '.join(args)}` took over {timeout:.0f}s") from None
    if check and result.returncode != 0:
        raise SetupError(
            f"`docker {' '.join(args)}` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-1500:]}"
        )
    return result


def engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return (
            docker("info", "--format", "{{.ServerVersion}}", timeout=15, check=False).returncode
            == 0
        )
    except SetupError:
        return False


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def image_id(name: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def image_label(name: str, label: str) -> str | None:
    result = docker(
        "image",
        "inspect",
        "--format",
        f'{{{{ index .Config.Labels "{label}" }}}}',
        name,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


# -- the engine ----------------------------------------------------------------------------


def _pid_starttime(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _ours(record: dict[str, object]) -> int | None:
    """The pid of the dockerd we recorded, if that very process still runs."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None
    start = _pid_starttime(pid)
    if start is None or start != record.get("starttime"):
        return None
    return pid


def _read_engine() -> dict[str, object] | None:
    try:
        data = json.loads(ENGINE_FILE.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _apt_install(packages: Sequence[str], why: str) -> None:
    """apt-get install, with services kept from starting (as scripts/harness does)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError(
            f"{why}: install {' '.join(packages)} (this script does it only as root on Debian)"
        )
    log(f"installing {' '.join(packages)} with apt-get ({why})")
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text(
            "#!/bin/sh\n# hexbus scripts/containers.py: no service starts\nexit 101\n"
        )
        policy.chmod(0o755)
        created = True
    apt_log = STATE / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "-q"]
    install = [*apt, "install", "-y", "--no-install-recommends", *packages]
    try:
        with open(apt_log, "a") as out:
            for attempt in (install, [*apt, "update"], install):
                out.write(f"$ {' '.join(attempt)}\n")
                out.flush()
                rc = subprocess.run(
                    attempt,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    timeout=APT_TIMEOUT,
                ).returncode
                if rc == 0 and attempt is install:
                    return
        raise SetupError(
            f"apt-get could not install {' '.join(packages)}; see {apt_log}:\n{tail(apt_log)}"
        )
    finally:
        if created:
            policy.unlink(missing_ok=True)


def ensure_engine() -> None:
    """An engine that answers: the user's, or a dockerd started (and recorded) here."""
    if engine_answers():
        record = _read_engine()
        owner = "started by scripts/containers.py" if record and _ours(record) else "running"
        log(f"Docker engine answers ({owner})")
        return
    if os.environ.get("DOCKER_HOST"):
        raise SetupError(
            f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer `docker info`: start "
            "that engine, or unset DOCKER_HOST to let this script start a local dockerd"
        )
    if os.geteuid() != 0:
        raise SetupError(
            "no Docker engine answers and this script starts one only as root: start Docker "
            "(Docker Desktop, `sudo systemctl start docker`, or podman's socket with DOCKER_HOST)"
        )
    if not shutil.which("dockerd") or not shutil.which("docker"):
        _apt_install(["docker.io"], "no Docker engine on this machine")
    dockerd = shutil.which("dockerd")
    if not dockerd:
        raise SetupError("the docker.io package installed no `dockerd`")
    engine_log = STATE / "dockerd.log"
    log(f"starting dockerd (log: {engine_log})")
    bridge_existed = Path("/sys/class/net/docker0").exists()
    with open(engine_log, "ab") as out:
        proc = subprocess.Popen(
            [
                dockerd,
                "--host=unix:///var/run/docker.sock",
                # nothing outside Docker's own directories changes: no firewall rules, no
                # sysctls; published ports go through docker-proxy, builds use host network
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ENGINE_FILE.write_text(
        json.dumps(
            {
                "pid": proc.pid,
                "starttime": _pid_starttime(proc.pid),
                "bridge_existed": bridge_existed,
                "host_network_builds": True,
            }
        )
    )
    deadline = time.monotonic() + ENGINE_TIMEOUT
    while not engine_answers():
        if proc.poll() is not None:
            ENGINE_FILE.unlink(missing_ok=True)
            raise SetupError(
                f"dockerd exited ({proc.returncode}); see {engine_log}:\n{tail(engine_log)}"
            )
        if time.monotonic() > deadline:
            raise SetupError(
                f"dockerd did not answer within {ENGINE_TIMEOUT:.0f}s; see {engine_log}"
            )
        time.sleep(0.3)
    log(f"dockerd pid {proc.pid} answers")


def stop_engine() -> bool:
    """Stop the dockerd this script started (never another); True if one was stopped."""
    record = _read_engine()
    if record is None:
        return False
    pid = _ours(record)
    if pid is not None:
        log(f"stopping dockerd pid {pid} (started by this script)")
        os.kill(pid, signal.SIGTERM)  # dockerd stops its containers and its containerd
        deadline = time.monotonic() + 60
        while _ours(record) is not None and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _ours(record) is not None:
            log(f"dockerd pid {pid} ignored SIGTERM for 60s; killing its process group")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    if not record.get("bridge_existed") and Path("/sys/class/net/docker0").exists():
        subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)
    ENGINE_FILE.unlink(missing_ok=True)
    return pid is not None


def host_network_builds() -> bool:
    """Builds on the engine started here use the host network (it has no NAT)."""
    record = _read_engine()
    return bool(record and _ours(record) and record.get("host_network_builds"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_containers() -> None:
    """Remove test containers whose test process is gone (a killed pytest leaves them)."""
    result = docker(
        "ps",
        "-a",
        "--filter",
        f"label={SESSION_LABEL}",
        "--format",
        f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}',
        check=False,
    )
    host = os.uname().nodename
    stale = []
    for line in result.stdout.splitlines():
        cid, _, session = line.partition(" ")
        where, _, pid = session.rpartition(":")
        if where == host and pid.isdigit() and not _alive(int(pid)):
            stale.append(cid)
    if stale:
        log(f"removing {len(stale)} test container(s) of finished test runs")
        docker("rm", "-f", *stale, check=False)


# -- the Debian base -----------------------------------------------------------------------


def _apt_uris() -> tuple[str, str | None]:
    """(archive mirror, security mirror) of this machine's apt configuration."""
    stanzas: list[dict[str, str]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in block.splitlines())
                if v and not k.startswith("#")
            )
            if fields.get("URIs") and fields.get("Suites"):
                stanzas.append({"uri": fields["URIs"].split()[0], "suites": fields["Suites"]})
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    stanzas.append({"uri": words[1], "suites": words[2]})
    archive = security = None
    for s in stanzas:
        suites = s["suites"].split()
        if security is None and any(x.endswith("-security") for x in suites):
            security = s["uri"]
        elif archive is None and any(not x.endswith(("-security", "-updates")) for x in suites):
            archive = s["uri"]
    if archive is None:
        raise SetupError(
            "no registry answers and this machine has no Debian apt mirror configured to "
            f"debootstrap {LOCAL_BASE} from; pull or load {PUBLIC_BASE} some other way"
        )
    return archive, security


def _debootstrap_base() -> None:
    if not shutil.which("debootstrap"):
        _apt_install(["debootstrap"], f"no registry answers: {LOCAL_BASE} is built locally")
    archive, security = _apt_uris()
    rootfs = STATE / "rootfs"
    boot_log = STATE / "debootstrap.log"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap --variant=minbase {CODENAME} from {archive} (log: {boot_log})")
    with open(boot_log, "w") as out:
        rc = subprocess.run(
            ["debootstrap", "--variant=minbase", CODENAME, str(rootfs), archive],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=APT_TIMEOUT,
        ).returncode
    if rc != 0:
        shutil.rmtree(rootfs, ignore_errors=True)
        raise SetupError(f"debootstrap failed ({rc}); see {boot_log}:\n{tail(boot_log)}")
    try:
        # the suites the native path installs from: the point release, updates, security
        sources = (
            f"Types: deb\nURIs: {archive}\nSuites: {CODENAME} {CODENAME}-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
        if security:
            sources += (
                f"\nTypes: deb\nURIs: {security}\nSuites: {CODENAME}-security\n"
                "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            )
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        # as in Debian's official images: packages installed in a build start no services
        policy = rootfs / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / leftover).glob("*"):
                if f.is_file():
                    f.unlink()
        log(f"importing the rootfs as {LOCAL_BASE}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker_cli(), "import", "-c", 'CMD ["bash"]', "-", LOCAL_BASE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SetupError(f"`docker import` of the rootfs failed: {imported.stderr.strip()}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def ensure_base() -> str:
    """The Debian base to build FROM: the public image where there is one, else ours."""
    if image_exists(PUBLIC_BASE):
        return PUBLIC_BASE
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    log(f"docker pull {PUBLIC_BASE}")
    pulled = docker("pull", PUBLIC_BASE, timeout=600, check=False)
    if pulled.returncode == 0:
        return PUBLIC_BASE
    reason = (pulled.stderr or pulled.stdout).strip().splitlines()[-1:] or ["?"]
    log(f"no registry answers ({reason[0][:160]}); building {LOCAL_BASE} with debootstrap")
    _debootstrap_base()
    return LOCAL_BASE


# -- the images ----------------------------------------------------------------------------


def _kafka_context(work: Path) -> Path:
    """docker/kafka + the pom + libs/: the native path's jars when they match the pom,
    else fetched with the same Maven command, else empty (the build fetches them)."""
    ctx = work / "kafka"
    shutil.copytree(DOCKER_DIR / "kafka", ctx)
    shutil.copy2(KAFKA_POM, ctx / "pom.xml")
    libs = ctx / "libs"
    libs.mkdir()
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    version = kafka_version()
    candidates = [NATIVE_KAFKA_LIBS, STATE / "kafka-libs"]
    for source in candidates:
        marker = source / ".complete"
        if (
            marker.exists()
            and marker.read_text().strip() == pom_hash
            and (source / f"kafka_2.13-{version}.jar").exists()
        ):
            log(f"Kafka {version} jars from {source.relative_to(REPO)}")
            break
    else:
        source = STATE / "kafka-libs"
        if shutil.which("mvn"):
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir(parents=True)
            mvn_log = STATE / "mvn.log"
            log(f"fetching the Kafka {version} jars with Maven (log: {mvn_log})")
            with open(mvn_log, "w") as out:
                rc = subprocess.run(
                    [
                        "mvn",
                        "-q",
                        "-B",
                        "-f",
                        str(KAFKA_POM),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={source}",
                        "-DincludeScope=runtime",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    timeout=APT_TIMEOUT,
                ).returncode
            if rc != 0:
                raise SetupError(f"Maven could not fetch Kafka; see {mvn_log}:\n{tail(mvn_log)}")
            (source / ".complete").write_text(pom_hash + "\n")
        else:
            log("no Kafka jars here and no `mvn`: the image build runs Maven itself")
            return ctx
    for jar in source.glob("*.jar"):
        try:
            os.link(jar, libs / jar.name)
        except OSError:
            shutil.copy2(jar, libs / jar.name)
    return ctx


def _inputs_hash(ctx: Path, base_id: str, build_args: dict[str, str]) -> str:
    """What an image is made of: its files (jars by the pom that names them), base, args."""
    digest = hashlib.sha256(f"{base_id}\n{sorted(build_args.items())}\n".encode())
    for f in sorted(p for p in ctx.rglob("*") if p.is_file() and p.parent.name != "libs"):
        digest.update(f"{f.relative_to(ctx)}\n".encode())
        digest.update(f.read_bytes())
        digest.update(f"{f.stat().st_mode & 0o111}\n".encode())
    return digest.hexdigest()[:32]


def _build(kind: str, image: str, ctx: Path, base: str, build_args: dict[str, str]) -> None:
    args = {"BASE": base, **build_args}
    inputs = _inputs_hash(ctx, image_id(base), args)
    if image_exists(image) and image_label(image, INPUTS_LABEL) == inputs:
        log(f"{image} is up to date")
        return
    cmd = ["build", "--force-rm", "-t", image, "--label", f"{INPUTS_LABEL}={inputs}"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if host_network_builds():
        cmd += ["--network", "host"]
    env = dict(os.environ)
    if docker("buildx", "version", check=False).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin: the classic builder
    build_log = STATE / f"build-{kind}.log"
    log(f"building {image} FROM {base} (log: {build_log})")
    with open(build_log, "w") as out:
        rc = subprocess.run(
            [docker_cli(), *cmd, str(ctx)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=BUILD_TIMEOUT,
        ).returncode
    if rc != 0:
        raise SetupError(f"building {image} failed; see {build_log}:\n{tail(build_log)}")
    # the classic builder keeps the image of a multi-stage build's first stage (the jars);
    # and the image this build replaced is left untagged
    for label in ("org.hexbus.stage", INPUTS_LABEL):
        docker("image", "prune", "-f", "--filter", f"label={label}", check=False)


def build_images() -> dict[str, str]:
    names = images()
    base = ensure_base()
    with tempfile.TemporaryDirectory(dir=STATE, prefix="context-") as tmp:
        _build(
            "rabbitmq",
            names["rabbitmq"],
            DOCKER_DIR / "rabbitmq",
            base,
            {"RABBITMQ_VERSION": rabbitmq_version()},
        )
        _build(
            "kafka",
            names["kafka"],
            _kafka_context(Path(tmp)),
            base,
            {"KAFKA_VERSION": kafka_version()},
        )
        _build(
            "postgres",
            names["postgres"],
            DOCKER_DIR / "postgres",
            base,
            {"POSTGRES_VERSION": postgres_version()},
        )
    return names


# -- commands ------------------------------------------------------------------------------


def up() -> dict[str, str]:
    with state_lock():
        ensure_engine()
        names = build_images()
        remove_stale_containers()
    log("ready: " + ", ".join(names.values()))
    return names


def down() -> None:
    with state_lock():
        if engine_answers():
            remove_stale_containers()
        if not stop_engine():
            log("no engine of this script runs (nothing to stop)")


def status() -> int:
    record = _read_engine()
    ours = record is not None and _ours(record) is not None
    answers = engine_answers()
    print(
        f"engine: {'answers' if answers else 'does not answer'}"
        f"{' (dockerd started by scripts/containers.py)' if ours else ''}"
    )
    for kind, name in images().items():
        if not answers:
            built = "(unknown: no engine answers)"
        else:
            built = "built" if image_exists(name) else "NOT BUILT"
        print(f"{kind}: {name} {built}")
    return 0 if answers else 1


def container_env(names: dict[str, str]) -> dict[str, str]:
    """The environment of `run`'s command: containers only, no reaper, our images."""
    env = dict(os.environ)
    env.pop("HEXBUS_RABBITMQ_URL", None)
    env.pop("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("HEXBUS_TEST_POSTGRES_URL", None)
    env["HEXBUS_TEST_BROKERS"] = "containers"
    env.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    env.setdefault("HEXBUS_TEST_RABBITMQ_IMAGE", names["rabbitmq"])
    env.setdefault("HEXBUS_TEST_KAFKA_IMAGE", names["kafka"])
    env.setdefault("HEXBUS_TEST_POSTGRES_IMAGE", names["postgres"])
    return env


class Terminated(Exception):
    """SIGTERM: stop the command, then tear down as after a normal end."""


def run(child: Sequence[str]) -> int:
    if not child:
        raise SetupError("usage: containers.py run -- CMD ARGS...")

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        names = up()
        log(f"running {' '.join(child)}")
        began = time.monotonic()
        proc = subprocess.Popen(list(child), env=container_env(names))
        try:
            rc = proc.wait()
        except (KeyboardInterrupt, Terminated) as stop:
            # Ctrl-C reached the command too; SIGTERM did not: pass it on as an interrupt,
            # so pytest still runs its fixtures' finalizers (and removes its containers).
            if isinstance(stop, Terminated):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # what it leaves behind, down() removes (its pid is gone)
                proc.wait()
            rc = 130 if isinstance(stop, KeyboardInterrupt) else 143
        log(f"command finished (exit {rc}) in {time.monotonic() - began:.1f}s")
        return rc
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            down()
        except SetupError as exc:
            log(f"tear-down: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    child: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, child = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(
        prog="containers.py",
        description="A container engine and hexbus' broker images for the testcontainers path.",
    )
    ap.add_argument("cmd", choices=("up", "build", "down", "status", "run", "images"))
    args = ap.parse_args(argv)
    if child and args.cmd != "run":
        ap.error("`--` is only for `run`")
    STATE.mkdir(parents=True, exist_ok=True)
    try:
        if args.cmd == "up":
            up()
        elif args.cmd == "build":
            if not engine_answers():
                raise SetupError("no Docker engine answers: start one, or use `up`")
            with state_lock():
                build_images()
        elif args.cmd == "down":
            down()
        elif args.cmd == "status":
            return status()
        elif args.cmd == "images":
            for name in images().values():
                print(name)
        else:
            return run(child)
    except SetupError as exc:
        print(f"containers.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
