"""`colony node label NODE KEY=VALUE... KEY-...`: set and remove a node's labels;
`colony node drain NODE` / `undrain NODE`: empty a node for maintenance, and take it back.

Draining makes the node ineligible; the manager moves its instances away under each
job's update strategy (a replacement healthy elsewhere before the old one stops), all of
them at the deadline, and records the node drained once nothing runs there; `drain`
waits for that, saying how many instances are left.

Labels live in the management database (the `labels` kind), so every voter
holds them and `colony status` shows them. Keys and values follow Kubernetes'
rules: a key is an optional DNS-subdomain prefix and a slash, then a name of
1-63 letters, digits, '-', '_' and '.', starting and ending with a letter or
digit; a value is such a name or empty. `KEY-` removes KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time

from rich.text import Text

from colony.cli import commands, records
from colony.cli.args import add_management_options
from colony.cli.kv import management, not_utf8
from colony.cli.output import err, fail, human_age, out, print_json
from colony.shared.jobspec import format_duration, parse_duration
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    LABEL_NAME,
    LABEL_PREFIX,
    MAX_DRAIN_DEADLINE,
    MAX_NODE_LABELS,
    InstanceRecord,
    NodeLabel,
    NodeRecord,
    ObjectId,
    to_builtins,
)
from colony.shared.reservations import TERMINAL
from colony.shared.statedir import StateDir

_NAME = re.compile(LABEL_NAME)
_PREFIX = re.compile(LABEL_PREFIX)
_NODE = re.compile(ObjectId.__metadata__[0].pattern)
NAME_RULE = "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


DRAIN_EVERY = 0.5
"""Seconds between two reads of a draining node while `node drain` waits."""


def add_parser(verb) -> None:
    node = verb(
        "node", "Change what the cluster records about a node: its labels, drain it, undrain it."
    )
    node_verbs = node.add_subparsers(dest="node_verb", required=True, metavar="label|drain|undrain")

    def sub(name: str, summary: str, description: str, examples: str, func):
        """A verb on NODE (a name or id), with the management options."""
        parser = node_verbs.add_parser(
            name,
            help=summary,
            description=description,
            epilog=f"examples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("node", help="node name or id (with --server: its id)")
        parser.set_defaults(func=func)
        add_management_options(parser)
        return parser

    label = sub(
        "label",
        "set (KEY=VALUE) or remove (KEY-) labels of NODE",
        "Set (KEY=VALUE) or remove (KEY-) labels of NODE, all in one commit; "
        "the node's other labels stay. `colony status` shows them.",
        "  colony node label node-1 disk=ssd zone=eu-1\n"
        "  colony node label node-1 example.com/gpu=a100 zone-",
        cmd_node_label,
    )
    label.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")

    drain = sub(
        "drain",
        "make NODE ineligible and move its instances away; wait until it is empty",
        "Make NODE ineligible and move its instances away under each job's update "
        "strategy (a replacement healthy elsewhere before the old one stops); past the deadline "
        "what is left there stops at once. Waits until the node is empty (Ctrl-C stops waiting; "
        "the drain goes on).",
        "  colony node drain node-2                  drain it, wait until it is empty\n"
        "  colony node drain node-2 --deadline 10m   stop what is still there after 10 minutes\n"
        "  colony node drain node-2 --deadline 0     no deadline: wait for every job's rollout\n"
        "  colony node drain node-2 --detach         start the drain and return\n"
        "  colony node undrain node-2                take it back (eligible again)",
        cmd_node_drain,
    )
    drain.add_argument(
        "--deadline",
        type=drain_deadline,
        default=commands.DRAIN_DEADLINE,
        metavar="D",
        help="after this long (5m, 1h, 90s; 0: never) what still runs there stops at once "
        "(default: 1h)",
    )
    drain.add_argument(
        "--detach", "-d", action="store_true", help="return once stored, without waiting"
    )

    sub(
        "undrain",
        "make a drained (or draining) NODE eligible again",
        "Make a drained or draining NODE eligible again: the manager may place "
        "instances there again (those moved away stay where they are).",
        "  colony node undrain node-2",
        cmd_node_undrain,
    )


def drain_deadline(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value > MAX_DRAIN_DEADLINE:
        most = format_duration(MAX_DRAIN_DEADLINE)
        raise argparse.ArgumentTypeError(f"must be at most {most} (7 days), not {text}")
    return value


def left_on(node: str, instances: list[InstanceRecord]) -> list[InstanceRecord]:
    """The instances still on `node`: desired to run, or not stopped yet."""
    return [
        i for i in instances if i.node == node and (i.desired == "run" or i.state not in TERMINAL)
    ]


def drain_line(record: NodeRecord | None, left: int, now: float) -> str:
    """'3 instances left on node-2 (deadline in 9m58s)' while it drains; what it is else."""
    if record is None:
        return "the node is not recorded"
    name = record.name or record.node
    if record.drain == "drained":
        return f"{name} is drained (empty)"
    if record.drain != "draining":
        return f"{name} is not draining (undrained?)"
    what = f"{left} instance{'' if left == 1 else 's'} left on {name}"
    if record.drain_deadline:
        due = record.drain_deadline - now
        what += f" (deadline in {human_age(due)})" if due > 0 else " (deadline passed: stopping)"
    return what


def cmd_node_drain(args: argparse.Namespace) -> int:
    async def work(client: Management, node: str) -> int:
        reply = await client.propose(commands.node_drain(node, args.node, args.deadline))
        [outcome] = reply.outcomes
        if not outcome.ok:
            fail(f"{args.node} not drained: {outcome.error}", "see the nodes with `colony status`")
        if args.detach:
            if args.json:
                print_json({"node": node, "drain": "draining", **to_builtins(reply)})
            else:
                out.print(
                    f"{args.node}: draining (log index {reply.index}); see it with `colony status`"
                )
            return 0
        if not args.json:
            out.print(f"{args.node}: draining; Ctrl-C stops waiting (the drain goes on)")
        record = await _wait_drained(client, node, args.json)
        if args.json:
            print_json({"node": node, "drain": record.drain if record else None})
        if record is None or record.drain != "drained":
            fail(f"{args.node}: {drain_line(record, 0, time.time())}")
        if not args.json:
            out.print(Text.assemble(("✓ ", "green"), drain_line(record, 0, time.time())))
        return 0

    return _on_node(args, "colony-node-drain", work)


def cmd_node_undrain(args: argparse.Namespace) -> int:
    async def work(client: Management, node: str) -> int:
        reply = await client.propose(commands.node_undrain(node, args.node))
        [outcome] = reply.outcomes
        if not outcome.ok:
            fail(
                f"{args.node} not undrained: {outcome.error}", "see the nodes with `colony status`"
            )
        if args.json:
            print_json({"node": node, "drain": "", **to_builtins(reply)})
        else:
            out.print(f"{args.node}: eligible again (log index {reply.index})")
        return 0

    return _on_node(args, "colony-node-undrain", work)


def _on_node(args: argparse.Namespace, name: str, work) -> int:
    async def run() -> int:
        node = node_id(StateDir(args.state_dir), args.node, args.server)
        async with management(args, name) as client:
            return await work(client, node)

    try:
        return asyncio.run(run())
    except ManagementError as e:
        hint = "is a majority of the voters up? see `colony status`" if e.retryable else ""
        fail(str(e), hint)


async def _wait_drained(client: Management, node: str, quiet: bool) -> NodeRecord | None:
    """Read the node's record and what is left on it until it is drained (or undrained,
    or forgotten); show how many instances are left."""
    with contextlib.ExitStack() as stack:
        show = (lambda _: None) if quiet else stack.enter_context(err.status("draining")).update
        stale = False  # the first read sees the drain just stored
        while True:
            found = await records.one_of(client, records.NODES, node, stale=stale)
            stale = True
            record = records.as_records([found], NodeRecord)[0] if found else None
            if record is None or record.drain != "draining":
                return record
            listing = await client.query_all(records.INSTANCES, {"node": node}, stale=True)
            left = left_on(node, records.as_records(listing.objects, InstanceRecord))
            show(Text(drain_line(record, len(left), time.time())))
            await asyncio.sleep(DRAIN_EVERY)


def parse_labels(words: list[str]) -> dict[str, str | None]:
    """KEY=VALUE and KEY- words as {key: value, key: None}; SystemExit saying what is wrong."""
    labels: dict[str, str | None] = {}
    for word in words:
        if problem := not_utf8(word):
            fail(f"label {word!r} is not valid UTF-8 ({problem})")
        if "=" in word:
            key, value = word.split("=", 1)
        elif word.endswith("-"):
            key, value = word[:-1], None
        else:
            fail(f"{word!r} is neither KEY=VALUE (set) nor KEY- (remove)")
        if problem := key_problem(key) or (value is not None and value_problem(value)):
            fail(f"label {word!r}: {problem}")
        if key in labels:
            fail(f"label key {key!r} is given twice")
        labels[key] = value
    if len(labels) > MAX_NODE_LABELS:
        fail(f"{len(labels)} labels at once: a node has at most {MAX_NODE_LABELS}")
    return labels


def key_problem(key: str) -> str:
    """Why `key` is not a valid label key ('' if it is)."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        return (
            f"the key's prefix {prefix!r} must be a DNS subdomain: at most 253 characters, "
            "lowercase letters, digits, '-' and '.', each part starting and ending with a "
            "letter or digit"
        )
    if not _NAME.fullmatch(name):
        return f"the key's name {name!r} must be {NAME_RULE}"
    return ""


def value_problem(value: str) -> str:
    """Why `value` is not a valid label value ('' if it is)."""
    if value and not _NAME.fullmatch(value):
        return f"the value {value!r} must be empty or {NAME_RULE}"
    return ""


def cmd_node_label(args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    try:
        node, reply = asyncio.run(_label(args, labels))
    except ManagementError as e:
        hint = "is a majority of the voters up? see `colony status`" if e.retryable else None
        fail(str(e), hint)
    [outcome] = reply.outcomes
    if not outcome.ok:
        fail(f"labels of {node} not changed: {outcome.error}")
    if args.json:
        print_json({"node": node, **to_builtins(reply)})
        return 0
    what = ", ".join(f"{k}={v}" if v is not None else f"{k} removed" for k, v in labels.items())
    out.print(f"{node}: {what} (labels version {outcome.version}, log index {reply.index})")
    return 0


async def _label(args: argparse.Namespace, labels: dict[str, str | None]):
    node = node_id(StateDir(args.state_dir), args.node, args.server)
    async with management(args, "colony-node") as client:
        return node, await client.propose(NodeLabel(node, labels))


def node_id(state: StateDir, wanted: str, servers: list[str] | None) -> str:
    """The id of node `wanted` (a name or id of the state dir's nodes; with `servers`, an
    id as given)."""
    found = state.find(wanted) if not servers else None
    if found is not None and (id := found.read_id()):
        return id
    if not servers:
        names = ", ".join(n.name for n in state.nodes()) or "none"
        fail(f"no node {wanted!r} in {state.path}/ (its nodes: {names})")
    if not _NODE.fullmatch(wanted):
        fail(f"node id {wanted!r} is not valid: ids are 1-64 letters, digits, '-' or '_'")
    return wanted
