"""`colony members`: one node's membership view (state, incarnation, age, roles, resources).

The nodes are those of the state dir, or, with `--server`, whatever answers
on that NATS server: membership services are found by NATS micro discovery
(their metadata names their node), and without a NODE the view shown is
that of the node whose own server it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from rich.table import Table
from rich.text import Text

from colony.cli.output import fail, human_age, human_bytes, out, print_json
from colony.shared import subjects
from colony.shared.bus import Bus, BusError, NotConnected, connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.messages import MembersReply, MembersRequest, to_builtins
from colony.shared.statedir import NodeDir, StateDir, natural_key

STYLE = {"alive": "green", "suspect": "yellow", "dead": "red", "left": "dim"}


def cmd_members(args: argparse.Namespace) -> int:
    if args.server:
        reply = asyncio.run(_ask_servers(args.server, args.node, args.timeout))
        show(reply, args.json)
        return 0
    state = StateDir(args.state_dir)
    nodes = state.nodes()
    if args.node:
        chosen = state.find(args.node)
        if chosen is None:
            names = ", ".join(n.name for n in nodes) or "none"
            fail(f"no node {args.node!r} in {state.path}/ (its nodes: {names})")
        nodes = [chosen]
    if not nodes:
        fail(f"no cluster in {state.path}/", "start one with `colony up`")
    reply, asked = asyncio.run(_ask_first(nodes, args.timeout))
    if reply is None:
        fail(f"no membership service answers on {asked}", "is the node up? see `colony status`")
    show(reply, args.json)
    return 0


def show(reply: MembersReply, as_json: bool) -> None:
    if as_json:
        print_json(to_builtins(reply))
    else:
        health = (
            Text("healthy")
            if reply.health == 0
            else Text(f"health {reply.health}: probing {reply.health + 1}x slower", "yellow")
        )
        out.print(
            Text.assemble("membership as seen by ", (reply.observer, "bold"), " (", health, ")")
        )
        out.print(table(reply))


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


async def _ask_servers(servers: list[str], node: str | None, timeout: float) -> MembersReply:
    """The view of `node` (id or name), or of the servers' own node, asked through `servers`."""
    where = ", ".join(servers)
    try:
        bus = await connect(
            NatsSettings(servers=servers, connect_timeout=max(timeout, 0.5)),
            "colony-members",
            reconnect=False,
        )
    except NotConnected:
        fail(f"no nats server answers at {where}", "is the cluster running? is the URL right?")
    try:
        async with asyncio.timeout(timeout * 3 + 2):  # never hang, whatever the cluster does
            reply, found = await server_view(bus, servers, node, timeout)
    except TimeoutError:
        fail(f"the cluster did not answer within {timeout * 3 + 2:g} s", "try --timeout 5")
    finally:
        await bus.close()
    if reply is None:
        known = ", ".join(sorted(found.values(), key=natural_key)) or "none"
        whose = f"of node {node!r} " if node else ""
        fail(
            f"no membership service {whose}answers at {where}",
            f"membership services found: {known}; see `colony status --server {servers[0]}`",
        )
    return reply


async def server_view(
    bus: Bus, servers: list[str], node: str | None, timeout: float
) -> tuple[MembersReply | None, dict[str, str]]:
    """A view asked over `bus` without a state dir, and the membership nodes found (id -> name).

    With `node`: that node's view, `node` being its id or else its name. Without:
    every discovered node is asked, and the view of the one whose own server is
    among `servers` wins (else the first in name order that answers).
    """
    if node:
        with contextlib.suppress(BusError, subjects.SubjectError):  # an id needs no discovery
            return await bus.request(subjects.members(node), MembersRequest(), timeout), {}
    found = await service_nodes(bus)
    if node:
        ids = [i for i, name in found.items() if node in (i, name)]
        return await first_view(bus, ids, timeout), found
    order = sorted(found, key=lambda i: natural_key(found[i]))
    views = await asyncio.gather(*(first_view(bus, [i], timeout) for i in order))
    answered = [v for v in views if v is not None]
    mine = {_with_port(url) for url in servers}
    own = next((v for v in answered if _with_port(own_url(v)) in mine), None)
    return own or next(iter(answered), None), found


async def service_nodes(bus: Bus, service: str = "membership") -> dict[str, str]:
    """Node id -> name of every `service` answering NATS micro discovery."""
    return {s.node: s.node_name for s in await Cluster(bus).services(service)}


def own_url(view: MembersReply) -> str:
    """The NATS URL the observer gives for itself (its own server)."""
    return next((m.meta.nats_url for m in view.members if m.node == view.observer), "")


def _with_port(url: str) -> str:
    """nats://host -> nats://host:4222, so the two spellings compare equal."""
    return url if url.count(":") > 1 or not url else f"{url}:4222"


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
            Text(m.status, style),
            str(m.incarnation),
            human_age(m.since),
            ", ".join(m.meta.roles) or "-",
            f"{m.meta.free.cpu:.2f}" if m.meta.free.cpu else "-",
            human_bytes(m.meta.free.memory) if m.meta.free.memory else "-",
            m.meta.nats_url or "-",
        )
    return grid
