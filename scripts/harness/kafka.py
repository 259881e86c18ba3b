"""Kafka nodes (KRaft, combined broker+controller): configuration, start, readiness, stop.

Nothing of Kafka's is machine-global beyond its ports: the cluster id, data and logs all
live in the state directory, and the controller quorum is addressed by recorded ports.
"""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Sequence

from . import tls
from .install import java_bin
from .nodes import Layout, Node
from .processes import BrokerError, log, port_answers, tail, terminate

READY_MARKERS = ("Kafka Server started", "started (kafka.server.KafkaRaftServer)")


def cluster_id(node: Node) -> str:
    """The layout's KRaft cluster id, made once (Kafka's Uuid: base64url, not '-'-led)."""
    f = node.layout_dir / "kafka.cluster-id"
    if f.exists():
        return f.read_text().strip()
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    node.layout_dir.mkdir(parents=True, exist_ok=True)
    f.write_text(cid + "\n")
    return cid


def properties(node: Node, peers: Sequence[Node]) -> str:
    """server.properties of *node*; *peers* (all Kafka nodes of the layout) are the voters."""
    voters = ",".join(f"{p.index}@127.0.0.1:{p.ports['controller_port']}" for p in peers)
    rf = node.size
    isr = 1 if rf == 1 else 2
    controller = node.ports["controller_port"]
    return "\n".join(
        [
            "# written by scripts/brokers.py",
            "process.roles=broker,controller",
            f"node.id={node.index}",
            f"controller.quorum.voters={voters}",
            *_listeners(node, controller),
            f"log.dirs={node.dir / 'data'}",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            "transaction.state.log.num.partitions=10",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "num.recovery.threads.per.data.dir=1",
            "",
        ]
    )


def _listeners(node: Node, controller: int) -> list[str]:
    """The listener lines: PLAINTEXT, or for a secure set (``up --secure``, tls.py) one
    SASL_SSL listener with SCRAM users made at format time; the controller's stays
    plaintext on 127.0.0.1."""
    secure = tls.load(node.state)
    if secure is None:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
    files = secure.authority
    login = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{tls.BROKER_USER}" password="{secure.broker_password}";'
    )
    return [
        f"listeners=SASL_SSL://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{node.port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={login}",
        f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={login}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={files.server_bundle}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={files.ca}",
        "ssl.client.auth=requested",
    ]


def _scram_users(node: Node) -> list[str]:
    """``kafka-storage format`` arguments creating a secure set's SCRAM users."""
    secure = tls.load(node.state)
    if secure is None:
        return []
    users = [(tls.CLIENT_USER, secure.kafka_password), (tls.BROKER_USER, secure.broker_password)]
    return [
        arg
        for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256")
        for name, password in users
        for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
    ]


def java_cmd(node: Node, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
    state = node.state
    return [
        java_bin(),
        heap,
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dlog4j2.configurationFile={state.kafka_log4j}",
        f"-Dkafka.logs.dir={node.dir / 'logs'}",
        "-cp",
        f"{state.kafka_libs}/*",
        main,
        *args,
    ]


def _format_storage(node: Node) -> None:
    log(f"{node.name}: formatting KRaft storage")
    props = node.dir / "server.properties"
    cmd = java_cmd(
        node,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id(node),
        "-c",
        str(props),
        "--ignore-formatted",
        *_scram_users(node),
        heap="-Xmx256m",
    )
    try:
        r = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise BrokerError(f"{node.name}: kafka-storage format timed out") from None
    if r.returncode != 0:
        raise BrokerError(
            f"{node.name}: kafka storage format failed: {(r.stderr or r.stdout)[-1500:]}"
        )


def launch(node: Node, layout: Layout) -> None:
    (node.dir / "data").mkdir(parents=True, exist_ok=True)
    (node.dir / "logs").mkdir(parents=True, exist_ok=True)
    props = node.dir / "server.properties"
    props.write_text(properties(node, layout.of_kind("kafka")))
    if not (node.dir / "data" / "meta.properties").exists():
        _format_storage(node)
    logfile = node.logfile
    offset = logfile.stat().st_size if logfile.exists() else 0
    (node.dir / "log-offset").write_text(str(offset))
    with open(node.dir / "logs" / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            java_cmd(node, "kafka.Kafka", str(props)),
            cwd=str(node.dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node.write_pid(proc.pid)
    log(
        f"{node.name}: launched pid {proc.pid} on 127.0.0.1:{node.port} "
        f"(controller {node.ports['controller_port']})"
    )


def _started_in_log(node: Node) -> bool:
    """Whether this launch (the log after the recorded offset) says the server started."""
    try:
        offset = int((node.dir / "log-offset").read_text())
        with open(node.logfile, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return any(m in text for m in READY_MARKERS)


def wait(node: Node, deadline: float) -> None:
    """Return once the node listens and its log says it started."""
    stdout_log = node.dir / "logs" / "stdout.log"
    while True:
        if not node.is_running():
            raise BrokerError(
                f"{node.name} exited during start-up; see {node.logfile} and "
                f"{stdout_log}:\n{tail(stdout_log)}\n{tail(node.logfile, 8)}"
            )
        if port_answers(node.port) and _started_in_log(node):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"{node.name} not ready within the deadline; see {node.logfile}")
        time.sleep(0.3)


def stop(node: Node) -> None:
    running = node.running_pid()
    if running is not None:
        pid, st = running
        log(f"{node.name}: stopping pid {pid}")
        terminate(pid, st, 30)
    node.pidfile.unlink(missing_ok=True)


def env_line(nodes: Sequence[Node]) -> str:
    servers = "HEXBUS_KAFKA_BOOTSTRAP_SERVERS=" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    secure = tls.load(nodes[0].state)
    if secure is None:
        return servers
    return "\n".join(  # one line per variable
        [
            servers,
            "HEXBUS_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
            "HEXBUS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512",
            f"HEXBUS_KAFKA_SASL_USERNAME={tls.CLIENT_USER}",
            f"HEXBUS_KAFKA_SASL_PASSWORD={secure.kafka_password}",
            f"HEXBUS_KAFKA_SSL_CAFILE={secure.authority.ca}",
        ]
    )
