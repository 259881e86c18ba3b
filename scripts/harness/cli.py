"""The command line of scripts/brokers.py: up, down, run, restart, stop, start, pause, resume,
status, env."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from . import cluster, tls
from .nodes import KINDS, Layout, Node
from .processes import BrokerError, log, mask_secrets, port_answers, signal_group
from .state import STATE_ENV, State

DEFAULT_TIMEOUT = float(os.environ.get("HEXBUS_BROKERS_TIMEOUT", "120"))
USAGE_HINT = "brokers.py [--state-dir DIR] [--name NAME] COMMAND ..."


def _parser() -> argparse.ArgumentParser:
    def add_state_options(p: argparse.ArgumentParser, default: object) -> None:
        p.add_argument(
            "--state-dir",
            metavar="DIR",
            default=default,
            help=f"where these brokers keep their state (default: ${STATE_ENV}, "
            "else <checkout>/.cache/brokers); each state directory is one independent set",
        )
        p.add_argument(
            "--name",
            dest="erl_name",
            metavar="NAME",
            default=default,
            help="Erlang node name of the RabbitMQ nodes (default: recorded, else "
            "hexbus-<hash of the state directory>)",
        )

    # Accepted before and after the command; SUPPRESS keeps a command's parser from
    # overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    add_state_options(common, argparse.SUPPRESS)
    ap = argparse.ArgumentParser(
        prog="brokers.py",
        description="Start real RabbitMQ, Apache Kafka and PostgreSQL natively (no Docker) "
        "for hexbus tests.",
    )
    add_state_options(ap, None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("up", "run"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--nodes", type=int, choices=(1, 3), default=1)
        p.add_argument("--only", choices=KINDS)
        p.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT, help="start-up deadline, seconds"
        )
        p.add_argument(
            "--secure",
            action="store_true",
            help="RabbitMQ over TLS and Kafka over SASL_SSL (SCRAM), with a throw-away CA; "
            "the state directory stays secure (use one of its own); `env` prints the "
            "credentials and the CA file",
        )
    sub.add_parser("down", parents=[common])
    for name in ("restart", "stop", "start", "pause", "resume"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("name")
        p.add_argument("--nodes", type=int, choices=(1, 3))
        p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    sub.add_parser("status", parents=[common])
    sub.add_parser("env", parents=[common])
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    child: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, child = argv[:i], argv[i + 1 :]
    ap = _parser()
    args = ap.parse_args(argv)
    if child and args.cmd != "run":
        ap.error("`--` is only for `run`")
    try:
        state = State.from_options(args.state_dir, args.erl_name)
        return _dispatch(state, args, child)
    except BrokerError as e:
        log(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130


def _dispatch(state: State, args: argparse.Namespace, child: list[str]) -> int:
    if args.cmd in ("up", "run") and args.secure:
        with state.lock():
            tls.enable(state, args.nodes)
    if args.cmd == "up":
        layout, started, secs = cluster.up(state, args.nodes, args.only, args.timeout)
        print_up(layout, started, secs)
        return 0
    if args.cmd == "run":
        return cmd_run(state, args.nodes, args.only, args.timeout, child)
    if args.cmd == "down":
        cluster.down(state)
        log("all brokers stopped")
        return 0
    if args.cmd in ("restart", "stop", "start"):
        layout, nodes = cluster.resolve(state, args.name, args.nodes)
        with state.lock():
            t0 = time.monotonic()
            if args.cmd == "restart":
                cluster.stop_nodes(nodes)
            if args.cmd == "stop":
                cluster.stop_and_clean(state, nodes)
            if args.cmd in ("restart", "start"):
                cluster.start_nodes(layout, nodes, args.timeout, may_move=False)
            log(f"{args.cmd} {args.name}: done in {time.monotonic() - t0:.1f} s")
        for line in cluster.env_lines(layout):
            print(line)
        return 0
    if args.cmd in ("pause", "resume"):
        return cmd_freeze(state, args.name, args.nodes, freeze=args.cmd == "pause")
    if args.cmd == "status":
        return cmd_status(state)
    if args.cmd == "env":
        size = cluster.running_size(state)
        if size is None:
            log(f"no brokers running (use `{state.command} up`)")
            return 1
        for line in cluster.env_lines(Layout(state, size)):
            print(line)
        return 0
    return 2


def cmd_freeze(state: State, name: str, size: int | None, *, freeze: bool) -> int:
    """``pause``: SIGSTOP the node's process group (its connections stay open and nothing
    answers: a stalled broker, for the publish-timeout tests); ``resume``: SIGCONT it."""
    _, nodes = cluster.resolve(state, name, size)
    for node in nodes:
        running = node.running_pid()
        if running is None:
            raise BrokerError(
                f"{node.name} is not running (start it with `{state.command} start {name}`)"
            )
        signal_group(running[0], signal.SIGSTOP if freeze else signal.SIGCONT)
    log(f"{'pause' if freeze else 'resume'} {name}: done")
    return 0


def print_up(layout: Layout, started: list[Node], secs: float) -> None:
    what = ", ".join(n.name for n in started) or "nothing (all reused)"
    print(
        f"# hexbus brokers ready in {secs:.1f} s ({layout.size}-node; started: {what})",
        flush=True,
    )
    for line in cluster.env_lines(layout):
        print(line, flush=True)


def cmd_status(state: State) -> int:
    # The node lines' format is read by hexbus.testing.faults.native_broker_running.
    if not state.root.exists():
        print("nothing started yet")
        return 0
    secure = "secure set: TLS and SASL, " if tls.load(state) else ""
    print(f"state {state.root} ({secure}RabbitMQ node name {state.name})")
    for layout in cluster.layouts(state):
        if not layout.dir.exists():
            continue
        print(f"{layout.size}-node layout ({layout.dir}):")
        for n in layout.nodes:
            r = n.running_pid()
            ports = " ".join(f"{k}={v}" for k, v in n.ports.items())
            if r:
                health = "ready" if port_answers(n.port) else "NOT ANSWERING"
                print(f"  {n.name:<11} running pid {r[0]:<8} {ports}  {health}  log {n.logfile}")
            else:
                print(f"  {n.name:<11} stopped                {ports}")
    return 0


def cmd_run(state: State, size: int, only: str | None, timeout: float, child: list[str]) -> int:
    """Start the brokers, run CMD with their addresses, stop what this run started."""
    if not child:
        log(f"ERROR: usage: {USAGE_HINT.replace('COMMAND ...', 'run [--nodes N] -- CMD ARGS...')}")
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started: list[Node] = []
    rc = 1
    try:
        layout, started, secs = cluster.up(state, size, only, timeout)
        log(f"brokers ready in {secs:.1f} s; running: {' '.join(child)}")
        env = dict(os.environ)
        if not state.is_default:  # so that the child's `brokers.py restart X` finds them
            env[STATE_ENV] = str(state.root)
        for line in "\n".join(cluster.env_lines(layout)).splitlines():
            key, _, value = line.partition("=")
            env[key] = value
            log(mask_secrets(line))
        proc = subprocess.Popen(child, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C already reached the child via the terminal; a SIGTERM to us
            # did not, so escalate: SIGINT, SIGTERM, SIGKILL, each bounded.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=10.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = 130
    except BrokerError as e:
        log(f"ERROR: {e}")
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except FileNotFoundError as e:
        log(f"ERROR: cannot run {child[0]!r}: {e}")
        rc = 127
    finally:
        if started:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            log("stopping the brokers this run started: " + ", ".join(n.name for n in started))
            try:
                with state.lock():
                    cluster.stop_and_clean(state, started)
            except BrokerError as e:
                log(f"ERROR while stopping: {e}")
                rc = rc or 1
    return rc
