"""`colony members`: one node's membership view (state, incarnation, age, roles, resources)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from rich.table import Table

from colony.cli.output import fail, human_age, human_bytes, out, print_json
from colony.shared import subjects
from colony.shared.bus import Bus, BusError, NotConnected, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import MembersReply, MembersRequest, to_builtins
from colony.shared.statedir import NodeDir, StateDir

STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}


def cmd_members(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    nodes = state.nodes()
    if args.node:
        chosen = state.find(args.node)
        if chosen is None:
            fail(
                f"no node {args.node!r} in {state.path}/",
                f"nodes: {', '.join(n.name for n in nodes)}",
            )
        nodes = [chosen]
    if not nodes:
        fail(f"no cluster in {state.path}/", "start one with `colony up`")
    reply, asked = asyncio.run(_ask_first(nodes, args.timeout))
    if reply is None:
        fail(f"no membership service answers on {asked}", "is the node up? see `colony status`")
    if args.json:
        print_json(to_builtins(reply))
    else:
        out.print(f"membership as seen by [bold]{reply.observer}[/]")
        out.print(table(reply))
    return 0


async def _ask_first(nodes: list[NodeDir], timeout: float) -> tuple[MembersReply | None, str]:
    """Ask each node in turn for its view; the first answer wins."""
    asked = ", ".join(n.name for n in nodes)
    urls = [url for n in nodes if (url := n.nats_url())]
    try:
        bus = await connect(
            NatsSettings(servers=urls, connect_timeout=timeout), "colony-members", reconnect=False
        )
    except NotConnected:
        return None, asked
    try:
        return await first_view(bus, [i for n in nodes if (i := n.read_id())], timeout), asked
    finally:
        await bus.close()


async def first_view(bus: Bus, node_ids: list[str], timeout: float) -> MembersReply | None:
    """The membership view of the first of `node_ids` that answers."""
    for node_id in node_ids:
        with contextlib.suppress(BusError):
            return await bus.request(subjects.members(node_id), MembersRequest(), timeout)
    return None


def table(reply: MembersReply) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in (
        "MEMBER",
        "STATE",
        "INCARNATION",
        "SINCE",
        "ROLES",
        "CPU FREE",
        "MEM FREE",
        "NATS",
    ):
        grid.add_column(column, no_wrap=True)
    for m in reply.members:
        style = STYLE.get(m.status, "")
        grid.add_row(
            m.node,
            f"[{style}]{m.status}[/]",
            str(m.incarnation),
            human_age(m.since),
            ", ".join(m.meta.roles) or "-",
            f"{m.meta.free.cpu:.2f}" if m.meta.free.cpu else "-",
            human_bytes(m.meta.free.memory) if m.meta.free.memory else "-",
            m.meta.nats_url or "-",
        )
    return grid
