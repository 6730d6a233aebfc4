"""`colony`: start, inspect and stop a Colony cluster.

Each verb is a function `cmd_<verb>(args)`; `--help` on any verb shows an
example. Errors say what went wrong and what to do, and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text

from colony.cli import capacity, console, events, job, logs, node, snapshot
from colony.cli.args import add_management_options, nats_url, seconds
from colony.cli.kv import cmd_kv
from colony.cli.local import plan, ports, start, wait, write
from colony.cli.local.plan import ClusterError
from colony.cli.members import cmd_members
from colony.cli.output import err, fail, out, print_json
from colony.cli.status import (
    gather,
    labels,
    manager_line,
    raft,
    raft_line,
    replication,
    replication_lines,
    reservations,
    stopped_lines,
    table,
)
from colony.shared import __version__
from colony.shared.bus import NotConnected, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import to_builtins
from colony.shared.statedir import (
    DEFAULT_STATE_DIR,
    PRIVATE_UMASK,
    RESTORE_SNAPSHOT,
    SUPERVISOR,
    NodeDir,
    StateDir,
    StateDirError,
)

EXAMPLES = {
    "up": """examples:
  colony up                      3 nodes on ports 4222.., in the foreground (Ctrl-C stops)
  colony up --nodes 5 --detach   5 nodes in the background; stop with `colony down`
  colony up --nodes 5 --voters 5 every node a Raft voter (default: the first 3)
  colony up --base-port 14222    move every port (clients, routes, monitoring, metrics)
  colony up --restore backup.snapshot --state-dir /tmp/c   a new cluster from a snapshot
  colony up --restore replica    a stopped cluster, back from its freshest replica

On a cluster that is running but for some nodes (killed, crashed), `colony up`
starts those nodes again on their own state and leaves the rest alone.""",
    "down": """examples:
  colony down                    stop the cluster of ./.colony
  colony down --state-dir /tmp/c stop the cluster kept in /tmp/c""",
    "status": """examples:
  colony status                        nodes of ./.colony, live over NATS
  colony status --json | jq '.nodes[].metrics.free'
  colony status --server nats://10.0.0.5:4222   any cluster, from one server URL""",
    "members": """examples:
  colony members                 the membership view of the first node that answers
  colony members node-3 --json   node-3's view, for scripts
  colony members --server nats://10.0.0.5:4222   the view of that server's node, no state dir""",
    "kv": """examples:
  colony kv put colour blue      commit through Raft; prints the key's version and log index
  colony kv get colour           linearizable read (a barrier is committed first)
  colony kv get colour --stale   one voter's copy, no round through the leader
  colony kv delete colour
  colony kv get colour --json    for scripts: value, version, log index""",
    "capacity": """examples:
  colony capacity node-2                       what node-2 declares
  colony capacity node-2 --cpu 4 --memory 8GiB declare more: the leader may move to it
  colony capacity node-2 --reset               back to its share of the host""",
    "logs": """examples:
  colony logs                    the last lines of every process of every node
  colony logs node-2 monitor -f  follow node-2's monitor
  colony logs monitor            every node's monitor
  colony logs web-0-3fa2 -f      follow an instance's output, from the node that runs it
  colony logs web-0-3fa2 --stderr --tail 4KiB   the last 4 KiB it wrote to stderr""",
}


def main(argv: list[str] | None = None) -> None:
    # What the CLI writes (state, configs, logs) and the supervisors it starts inherit
    # this: the cluster's files are its owner's only (0600, folders 0700).
    os.umask(PRIVATE_UMASK)
    # A path or name from a non-UTF-8 argv is printed back as the bytes it was, not a crash.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        sys.exit(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `colony status --json | head`: the reader has had enough
        sys.stderr.close()
        sys.exit(0)
    except (ClusterError, StateDirError) as e:
        fail(str(e))
    except OSError as e:
        if e.filename is None:
            raise  # not about a file: a bug, worth its traceback
        fail(f"{e.filename}: {(e.strerror or str(e)).lower()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colony",
        description="Colony: a self-organizing orchestrator. Run a local cluster and inspect it.",
        epilog="examples:\n"
        "  colony up --detach     start a local 3-node cluster in the background\n"
        "  colony status          see its nodes\n"
        "  colony job run examples/web.yaml   run a job on it\n"
        "  colony down            stop it\n\n"
        "Run `colony <verb> --help` for a verb's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"colony {__version__}")
    verbs = parser.add_subparsers(title="verbs", metavar="<verb>")

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_STATE_DIR,
            help=f"where the cluster's state and logs live (default: {DEFAULT_STATE_DIR}/)",
        )
        return sub

    up = verb("up", "Start a local cluster of N nodes on loopback.")
    up.add_argument("--nodes", type=int, help="how many nodes (default: 3, or as last time)")
    up.add_argument(
        "--base-port",
        type=int,
        help="first client port; the others follow it "
        f"(default: {plan.DEFAULT_BASE_PORT}, or as last time)",
    )
    up.add_argument(
        "--voters",
        type=int,
        help="how many nodes run a Raft voter: 1, 3 or 5 (default: 3, 1 below 3 nodes, "
        "or as last time); they are the first nodes",
    )
    up.add_argument(
        "--restore",
        metavar="FILE|replica",
        help="start from a snapshot: FILE (into a new state dir, which takes its cluster id, "
        "or into this stopped cluster), or `replica`: this stopped cluster's freshest replica "
        "(see `colony snapshot --help`)",
    )
    up.add_argument("--detach", "-d", action="store_true", help="return once the cluster is ready")
    up.add_argument(
        "--timeout", type=seconds, default=60, help="seconds to wait for ready (default: 60)"
    )
    up.set_defaults(func=cmd_up)

    down = verb("down", "Stop every process of the local cluster.")
    down.set_defaults(func=cmd_down)

    status = verb("status", "Show every node: state, services, free resources, age.")
    status.add_argument(
        "--server",
        action="append",
        type=nats_url,
        help="a NATS URL to ask (repeatable); default: the state dir's",
    )
    status.set_defaults(func=cmd_status)

    members = verb("members", "Show one node's membership view: who is alive, suspect, dead, left.")
    members.add_argument(
        "node",
        nargs="?",
        help="whose view (name or id; default: the first up, or with --server that server's node)",
    )
    members.add_argument(
        "--server",
        action="append",
        type=nats_url,
        help="ask through this NATS URL instead of the state dir's nodes (repeatable)",
    )
    members.set_defaults(func=cmd_members)

    for query in (status, members):
        query.add_argument("--json", action="store_true", help="machine-readable output")
        query.add_argument(
            "--timeout", type=seconds, default=1.0, help="seconds to wait for a node (default: 1)"
        )

    kv = verb("kv", "Write and read the management database's debug key-value table.")
    kv_verbs = kv.add_subparsers(dest="kv_verb", required=True, metavar="put|get|delete")
    for name, summary in (
        ("put", "set KEY to VALUE (committed through Raft before it answers)"),
        ("get", "print KEY's value (linearizable unless --stale)"),
        ("delete", "remove KEY"),
    ):
        sub = kv_verbs.add_parser(name, help=summary, description=summary)
        sub.add_argument("key")
        if name == "put":
            sub.add_argument("value")
        if name == "get":
            sub.add_argument(
                "--stale", action="store_true", help="read one voter's copy, without a barrier"
            )
        sub.set_defaults(func=cmd_kv)
        add_management_options(sub)
    kv.set_defaults(func=cmd_kv)

    capacity.add_parser(verb)
    node.add_parser(verb)
    job.add_parser(verb)
    events.add_parser(verb)
    snapshot.add_parser(verb)
    console.add_parser(verb)

    log = verb("logs", "Show (or follow) the logs of a cluster's processes, or an instance's.")
    log.add_argument(
        "node", nargs="?", help="node name or id (default: all nodes), or an instance's id"
    )
    log.add_argument("service", nargs="?", help="supervisor, nats, monitor ... (default: all)")
    log.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log.add_argument("-n", "--lines", type=_count, default=20, help="lines per file (default: 20)")
    log.add_argument("--raw", action="store_true", help="print JSON log lines as they are")
    log.add_argument("--stderr", action="store_true", help="an instance's stderr (not stdout)")
    log.add_argument(
        "--tail",
        type=logs.tail_bytes,
        metavar="BYTES",
        help="how much of an instance's output to show first (default: 64KiB)",
    )
    add_management_options(log, 5.0, "seconds a node may take", state_dir=False)
    log.set_defaults(func=logs.cmd_logs)
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


# --- up / down -------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    start.check_installed()
    state = StateDir(args.state_dir)
    live = start.running(state)
    if live and args.restore:
        snapshot.refuse_if_running(state)
    if live:
        state.create()  # a state dir made before files were private becomes private
        down = [n for n in state.nodes() if n.name not in {m.name for m in live}]
        if down:
            return _restart(state, down, args.timeout)
        out.print(
            f"The cluster in {state.path}/ is already running "
            f"({', '.join(n.name for n in live)}); nothing changed.\n"
            "See it with `colony status`; stop it with `colony down`."
        )
        return 0
    stray = start.leftovers(state, instances=False)
    if stray:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in stray)
        fail(f"processes of an earlier run are still alive: {names}", "run `colony down` first")
    plans = _cluster_plan(state, args)
    nodes, base_port = len(plans), plans[0].ports["client"]
    taken = ports.ports_taken(plans)
    if taken:
        fail(
            f"{len(taken)} port(s) already in use: {', '.join(taken)}",
            "stop what uses them, or move the cluster with --base-port",
        )
    restore = snapshot.UpRestore.checked(state, args.restore) if args.restore else None
    started = time.monotonic()
    node_dirs = write.write_nodes(state, plans, restore.cluster if restore else "")
    doing = f"starting {nodes} nodes"
    if restore:
        restore.prepare(node_dirs)
        doing += " (restoring a snapshot)"
    elif delivered := [
        n for n in node_dirs if (snapshot.consensus_dir(n) / RESTORE_SNAPSHOT).exists()
    ]:
        out.print(
            f"The voters restore the snapshot `colony snapshot restore` left in "
            f"{delivered[0].path}/consensus/{RESTORE_SNAPSHOT} (and on every node) as they start."
        )
    _start_and_wait(
        state,
        node_dirs,
        args.timeout,
        doing,
        state.nodes(),
        once_nats=restore.once_nats(state, node_dirs) if restore else None,
        abandon=(lambda: restore.abandon(node_dirs)) if restore else None,
    )
    try:
        out.print(
            Text.assemble(
                ("✓", "green"),
                f" {nodes} nodes ready in {time.monotonic() - started:.1f} s "
                f"(nats://127.0.0.1:{base_port}..{base_port + nodes - 1})",
            )
        )
        if restore:
            out.print(f"  {restore.summary}")
        out.print(
            f"  state: {state.path.resolve()}/\n"
            f"  logs:  {state.path.resolve()}/nodes/<node>/logs/  (or `colony logs`)\n"
            "  see it: colony status"
        )
        if args.detach:
            out.print("  stop it: colony down")
            return 0
        out.print("Running in the foreground; Ctrl-C stops the cluster (--detach not to wait).")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        out.print("\nstopping…")
        stopped = start.stop(state)
        out.print(f"stopped {len(stopped)} processes")
    return 0


def _restart(state: StateDir, nodes: list[NodeDir], timeout: float) -> int:
    """Start again the down nodes of a running cluster, on their own state."""
    names = ", ".join(n.name for n in nodes)
    start.stop(state, nodes=nodes)  # what a dead supervisor left behind is an orphan
    plans = {p.name: p for p in write.plan_of(state)}
    taken = ports.ports_taken([plans[n.name] for n in nodes if n.name in plans])
    if taken:
        fail(f"{names} cannot start: port(s) in use: {', '.join(taken)}", "stop what uses them")
    started = time.monotonic()
    _start_and_wait(state, nodes, timeout, f"restarting {names}", nodes)
    out.print(
        Text.assemble(
            ("✓", "green"),
            f" restarted {names} in {time.monotonic() - started:.1f} s; "
            "the rest of the cluster was running.",
        )
    )
    out.print("  see it: colony status")
    return 0


def _start_and_wait(
    state: StateDir,
    nodes: list[NodeDir],
    timeout: float,
    doing: str,
    owned: list[NodeDir],
    once_nats=None,
    abandon: Callable[[], None] | None = None,
) -> None:
    """Start the nodes' supervisors and wait until ready (`once_nats`: a step once NATS
    answers, see wait.wait_ready); on failure or an interrupt, stop `owned` (whatever
    this command started), `abandon` what was prepared, and exit saying why."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        for node_dir in nodes:
            start.start_supervisor(node_dir)
        # a spinner parses markup in plain strings: give it Text (names are not markup)
        with err.status(Text(doing)) as spinner:
            asyncio.run(
                wait.wait_ready(state, nodes, timeout, lambda s: spinner.update(Text(s)), once_nats)
            )
    except KeyboardInterrupt:
        start.stop(state, nodes=owned)
        if abandon:
            abandon()
        fail("interrupted; stopped what had started", code=130)
    except (ClusterError, NotConnected) as e:
        start.stop(state, nodes=owned)
        if abandon:
            abandon()
        logs_dir = state.path / "nodes" / "*" / "logs"
        fail(f"not ready: {e}", f"see the logs in {logs_dir}; stopped what had started")


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _cluster_plan(state: StateDir, args: argparse.Namespace) -> list[plan.NodePlan]:
    """Nodes, base port, voters: as asked, else as this state dir had them, else defaults."""
    previous = write.previous_shape(state)
    existing = len(state.nodes())
    # rejects impossible counts and ports
    plans = plan.choose(args.nodes, args.base_port, args.voters, previous, existing)
    if len(plans) < existing:
        fail(
            f"{state.path}/ holds {existing} nodes; cannot start only {len(plans)}",
            f"use --nodes {existing}, or another --state-dir",
        )
    return plans


def cmd_down(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    if not start.leftovers(state):
        out.print(f"Nothing is running in {state.path}/.")
        return 0
    with err.status("stopping"):
        stopped = start.stop(state)
    supervisors = sum(r.name == SUPERVISOR for r in stopped)
    out.print(
        Text.assemble(("✓", "green"), f" stopped {supervisors} nodes ({len(stopped)} processes)")
    )
    return 0


# --- status ----------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    known: dict[str, tuple[str, str]] = {}
    try:
        node_dirs = state.nodes()
    except StateDirError:
        if not args.server:
            raise
        node_dirs = []  # the servers name their nodes; the state dir only adds names
    for node_dir in node_dirs:
        node_id = node_dir.read_id()
        if node_id:
            known[node_id] = (node_dir.name, node_dir.nats_url() or "")
    servers = args.server or [url for _, url in known.values() if url]
    if not servers:
        fail(
            f"no cluster in {state.path}/ and no --server given",
            "start one with `colony up`, or point at one with --server nats://HOST:PORT",
        )
    found = asyncio.run(_status(servers, known, args.timeout))
    if found is None:
        fail(
            f"no nats server answers at {', '.join(servers)}",
            "is the cluster running? start it with `colony up`",
        )
    nodes, leader = found
    if args.json:
        consensus = to_builtins(leader) if leader else None
        print_json({"nodes": [n.to_json() for n in nodes], "consensus": consensus})
    else:
        out.print(table(nodes))
        out.print(raft_line(leader, nodes))
        for line in [*stopped_lines(nodes), *replication_lines(nodes)]:
            out.print(line)
        if line := manager_line(leader, nodes):
            out.print(line)
    return 0


async def _status(servers: list[str], known: dict[str, tuple[str, str]], timeout: float):
    settings = NatsSettings(servers=servers, connect_timeout=max(timeout, 0.5))
    try:
        bus = await connect(settings, "colony-status", reconnect=False)
    except NotConnected:
        return None
    try:
        async with asyncio.timeout(timeout * 4 + 2):  # never hang, whatever the cluster does
            nodes = await gather(bus, known, timeout)
            leader = await raft(bus, nodes, timeout)
            await labels(bus, nodes, leader, timeout)
            await reservations(bus, nodes, leader, timeout)
            await replication(bus, nodes, timeout)
            return nodes, leader
    except TimeoutError:
        fail(f"the cluster did not answer within {timeout * 4 + 2:g} s", "try --timeout 5")
    finally:
        await bus.close()
