"""Secured broker sets (``up --secure``): a throw-away CA, certificates and passwords.

A secure set is a property of its state directory, recorded in ``<state>/secure.json``
by the first ``up --secure``: every later command on that directory (``up``, ``restart``,
``start``, ``env``) configures and addresses the brokers the same way, and a directory
that already holds plain brokers is refused (their RabbitMQ users and Kafka storage were
made without the credentials). What it turns on:

* RabbitMQ: the AMQP listener speaks TLS only (``amqps://``, on the node's recorded
  port), with the set's server certificate; client certificates are verified when a
  client presents one (``verify_peer``) but not required; the only user is ``hexbus``
  with a random password (``default_user``, made at first boot).
* Kafka: one SASL_SSL listener (SCRAM-SHA-512 and SCRAM-SHA-256) on the node's port, the
  users ``hexbus`` (clients) and ``broker`` (inter-broker) created by
  ``kafka-storage format --add-scram``; the controller listener stays plaintext on
  127.0.0.1. Client certificates are requested, not required.

The certificates are made with the ``openssl`` command (stdlib ``subprocess``, nothing
to install): a CA valid for 30 days, a server certificate for ``localhost`` and
``127.0.0.1`` and a client certificate, all P-256 keys without passwords, under
``<state>/tls``. They are made again when they expire within a day. ``make_authority``
makes another CA (and its certificates) anywhere: tests use one to present an
untrusted certificate.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .processes import BrokerError, log
from .state import State

SECURE_FILE = "secure.json"
TLS_DIR = "tls"
#: Days the throw-away certificates are valid; made again when one day is left.
DAYS = 30
CLIENT_USER = "hexbus"
BROKER_USER = "broker"


@dataclass(frozen=True)
class Authority:
    """The files of one throw-away CA and the certificates it signed."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_bundle(self) -> Path:
        """Key and certificate chain in one PEM file: Kafka's PEM keystore."""
        return self.dir / "server-bundle.pem"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @property
    def files(self) -> tuple[Path, ...]:
        return (
            self.ca,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.server_bundle,
            self.client_cert,
            self.client_key,
        )


@dataclass(frozen=True)
class Secure:
    """A secured state: where its certificates are and the passwords of its users."""

    state: State
    rabbitmq_password: str
    kafka_password: str
    broker_password: str

    @property
    def authority(self) -> Authority:
        return Authority(self.state.root / TLS_DIR)


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        raise BrokerError("--secure needs the openssl command (apt-get install openssl)")
    try:
        r = subprocess.run(
            [tool, *args],
            cwd=cwd,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BrokerError(f"openssl {args[0]} timed out") from None
    if r.returncode != 0:
        raise BrokerError(f"openssl {' '.join(args[:2])} failed: {(r.stderr or r.stdout)[-800:]}")


def _still_valid(cert: Path) -> bool:
    """Whether *cert* exists and stays valid for at least another day."""
    if not cert.exists():
        return False
    tool = shutil.which("openssl")
    if tool is None:
        return True
    r = subprocess.run(
        [tool, "x509", "-checkend", "86400", "-noout", "-in", str(cert)],
        check=False,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode == 0


def _sign(where: Path, name: str, subject: str, extensions: str) -> None:
    """A P-256 key ``name.key`` and ``name.pem`` signed by the CA in *where*."""
    (where / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=where,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", str(DAYS), "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.pem",
        cwd=where,
    )  # fmt: skip
    (where / f"{name}.csr").unlink(missing_ok=True)
    (where / f"{name}.ext").unlink(missing_ok=True)


def make_authority(where: Path, label: str = "hexbus test CA") -> Authority:
    """Make a CA in *where*, a server certificate (``localhost``, ``127.0.0.1``) and a
    client certificate signed by it; reuse them while they stay valid."""
    auth = Authority(where)
    if all(p.exists() for p in auth.files) and _still_valid(auth.server_cert):
        return auth
    where.mkdir(parents=True, exist_ok=True)
    for path in auth.files:
        path.unlink(missing_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", str(DAYS), "-sha256",
        "-subj", f"/CN={label} {secrets.token_hex(4)}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=where,
    )  # fmt: skip
    _sign(
        where,
        "server",
        "/CN=localhost",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    _sign(
        where,
        "client",
        "/CN=hexbus-client",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
    )
    auth.server_bundle.write_text(auth.server_key.read_text() + auth.server_cert.read_text())
    (where / "ca.srl").unlink(missing_ok=True)
    for path in auth.files:
        path.chmod(0o600 if path.suffix == ".key" or path == auth.server_bundle else 0o644)
    log(f"made a throw-away CA and certificates in {where}")
    return auth


def load(state: State) -> Secure | None:
    """The secure settings of *state*, or ``None`` for a plain set."""
    try:
        data = json.loads((state.root / SECURE_FILE).read_text())
    except (OSError, ValueError):
        return None
    try:
        return Secure(
            state,
            rabbitmq_password=str(data["rabbitmq_password"]),
            kafka_password=str(data["kafka_password"]),
            broker_password=str(data["broker_password"]),
        )
    except (KeyError, TypeError):
        return None


def _has_plain_data(state: State) -> bool:
    """Whether brokers of *state* have run without ``--secure`` (their data remains)."""
    for size in (1, 3):
        for kind in ("rabbitmq", "kafka"):
            for index in range(1, size + 1):
                node_dir = state.node_root(kind, size) / f"{kind}-{index}"
                if (node_dir / "mnesia").exists() or (node_dir / "data").exists():
                    return True
    return False


def enable(state: State, size: int) -> Secure:
    """Make *state* a secure set (once) and its certificates (while valid); return it."""
    if size != 1:
        raise BrokerError("--secure starts single-node brokers only (use --nodes 1)")
    secure = load(state)
    if secure is None:
        if _has_plain_data(state):
            raise BrokerError(
                f"the brokers of {state.root} were started without --secure (their users and "
                "storage have no credentials); use another --state-dir for the secure set, "
                f"or stop these (`{state.command} down`) and delete {state.root}"
            )
        state.root.mkdir(parents=True, exist_ok=True)
        data = {
            "rabbitmq_password": secrets.token_hex(12),
            "kafka_password": secrets.token_hex(12),
            "broker_password": secrets.token_hex(12),
        }
        path = state.root / SECURE_FILE
        path.write_text(json.dumps(data, indent=1) + "\n")
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        secure = load(state)
        assert secure is not None
    make_authority(secure.authority.dir)
    return secure


def copy_for(secure: Secure, node_dir: Path) -> Authority:
    """The server's files copied into *node_dir* (reachable by the broker's user)."""
    target = Authority(node_dir / TLS_DIR)
    target.dir.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(secure.authority.files, target.files, strict=True):
        if dst.name in ("ca.key", "client.key", "client.pem"):
            continue  # the broker needs neither the CA's key nor the client's files
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600 if dst.suffix == ".key" or dst == target.server_bundle else 0o644)
    return target
