"""Small probes the partition tests and benchmarks run inside a network-namespace host.

Each is a process of its own because it must run inside the host (`ip netns exec`),
through that host's own nats-server: nothing talks to a host's address from the
root namespace. What they print is what the callers parse:

    python -m colony.harness.probe status URL VOTER      # a voter's Raft status, as JSON
    python -m colony.harness.probe digest URL VOTER      # its database digest, as JSON
    python -m colony.harness.probe propose URL VOTER KEY VALUE [--epoch N]
    python -m colony.harness.probe watch URL SUBJECT     # 'ready', then each message
    python -m colony.harness.probe routes MONITOR_URL    # a nats-server's open routes
    python -m colony.harness.probe connect ADDRESS PORT  # exit 0 if a TCP connect works

A probe that gets no answer says why on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
import urllib.request
from typing import Any

import nats
from nats.aio.msg import Msg

from colony.shared import subjects
from colony.shared.bus import Bus, BusError, RemoteError, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import (
    ConsensusStatusRequest,
    DigestRequest,
    KvPut,
    Proposal,
    ProposeRequest,
    new_id,
    to_builtins,
)

ARGV = [sys.executable, "-m", "colony.harness.probe"]
"""How the callers start a probe: ``[*ARGV, "routes", url]``."""
STATUS_TIMEOUT = 1.0
DIGEST_TIMEOUT = 5.0
"""Seconds: a digest hashes the voter's whole database."""
PROPOSE_TIMEOUT = 15.0
CONNECT_TIMEOUT = 0.5


def say(line: str) -> None:
    """One line on stdout, at once: the caller reads it while the probe still runs."""
    print(line, flush=True)


async def _connect(url: str, name: str, *, reconnect: bool) -> Bus:
    return await connect(
        NatsSettings(servers=[url], connect_timeout=1.0), name, reconnect=reconnect
    )


async def ask(url: str, voter: str, what: str) -> None:
    """Print one voter's Raft status or database digest as JSON."""
    bus = await _connect(url, "probe", reconnect=False)
    try:
        if what == "status":
            reply = await bus.request(
                subjects.consensus_status(voter), ConsensusStatusRequest(), STATUS_TIMEOUT
            )
        else:
            reply = await bus.request(
                subjects.consensus_digest(voter), DigestRequest(), DIGEST_TIMEOUT
            )
        say(json.dumps(to_builtins(reply)))
    finally:
        await bus.close()


async def propose(url: str, voter: str, key: str, value: str, epoch: int) -> None:
    """Propose KEY=VALUE to one voter the moment SIGUSR1 arrives, then print its answer.

    Prints 'ready' once connected, so the proposal leaves at the signal with no
    start-up in the way; then one JSON line: the voter's "reply", or an "error"
    (with its "code" if the voter gave one), and the "seconds" it took.
    """
    bus = await _connect(url, "proposer", reconnect=True)
    go = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
    say("ready")
    await go.wait()
    sent = time.monotonic()
    request = ProposeRequest(proposals=[Proposal(new_id(), KvPut(key, value), epoch)])
    answer: dict[str, Any]
    try:
        reply = await bus.request(subjects.propose(voter), request, PROPOSE_TIMEOUT)
        answer = {"reply": to_builtins(reply)}
    except RemoteError as e:
        answer = {"code": e.code, "error": e.description}
    except BusError as e:
        answer = {"error": str(e)}
    say(json.dumps({**answer, "seconds": time.monotonic() - sent}))
    await bus.close()


async def watch(url: str, subject: str) -> None:
    """Print 'ready' once subscribed, then every message on `subject`, one per line, as sent.

    Reconnects for ever: it runs until killed.
    """
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)

    async def write(msg: Msg) -> None:
        say(msg.data.decode())

    await nc.subscribe(subject, cb=write)
    # Twice, as `Bus.subscribe` does: the first PONG can overtake the SUB still queued
    # for nats-py's writer; the second proves the server has it.
    await nc.flush()
    await nc.flush()
    say("ready")
    await asyncio.Event().wait()


def routes(monitor: str) -> None:
    """Print how many routes a nats-server has open, from its monitoring port."""
    with urllib.request.urlopen(f"{monitor}/routez", timeout=1) as reply:
        say(str(json.load(reply)["num_routes"]))


def can_connect(address: str, port: int) -> bool:
    """Does a TCP connect to address:port succeed within CONNECT_TIMEOUT?"""
    try:
        socket.create_connection((address, port), timeout=CONNECT_TIMEOUT).close()
    except OSError:
        return False
    return True


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m colony.harness.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("status", "Raft status"), ("digest", "database digest")):
        one = sub.add_parser(name, help=f"print a voter's {what} as JSON")
        one.add_argument("url", help="the nats-server to ask through")
        one.add_argument("voter", help="the voter's node id")
    one = sub.add_parser("propose", help="propose KEY=VALUE to a voter on SIGUSR1")
    one.add_argument("url", help="the nats-server to ask through")
    one.add_argument("voter", help="the voter's node id")
    one.add_argument("key")
    one.add_argument("value")
    one.add_argument(
        "--epoch", type=int, default=0, help="on behalf of the manager at this epoch (0: not)"
    )
    one = sub.add_parser("watch", help="print every message on a subject")
    one.add_argument("url", help="the nats-server to subscribe through")
    one.add_argument("subject", help="a NATS subject; wildcards allowed")
    one = sub.add_parser("routes", help="print how many routes a nats-server has open")
    one.add_argument("monitor", help="its monitoring URL, e.g. http://10.0.0.1:8222")
    one = sub.add_parser("connect", help="exit 0 if a TCP connect to ADDRESS:PORT works")
    one.add_argument("address")
    one.add_argument("port", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        match args.command:
            case "status" | "digest":
                asyncio.run(ask(args.url, args.voter, args.command))
            case "propose":
                asyncio.run(propose(args.url, args.voter, args.key, args.value, args.epoch))
            case "watch":
                asyncio.run(watch(args.url, args.subject))
            case "routes":
                routes(args.monitor)
            case "connect":
                return 0 if can_connect(args.address, args.port) else 1
    except (BusError, OSError) as e:  # OSError: the monitoring port did not answer
        print(f"probe {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
