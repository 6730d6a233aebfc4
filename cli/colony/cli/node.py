"""`colony node label NODE KEY=VALUE... KEY-...`: set and remove a node's labels.

Labels live in the management database (the `labels` kind), so every voter
holds them and `colony status` shows them. Keys and values follow Kubernetes'
rules: a key is an optional DNS-subdomain prefix and a slash, then a name of
1-63 letters, digits, '-', '_' and '.', starting and ending with a letter or
digit; a value is such a name or empty. `KEY-` removes KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import re

from colony.cli.args import add_management_options
from colony.cli.kv import management, not_utf8
from colony.cli.output import fail, out, print_json
from colony.shared.management import ManagementError
from colony.shared.messages import (
    LABEL_NAME,
    LABEL_PREFIX,
    MAX_NODE_LABELS,
    NodeLabel,
    ObjectId,
    to_builtins,
)
from colony.shared.statedir import StateDir

_NAME = re.compile(LABEL_NAME)
_PREFIX = re.compile(LABEL_PREFIX)
_NODE = re.compile(ObjectId.__metadata__[0].pattern)
NAME_RULE = "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"


def add_parser(verb) -> None:
    node = verb("node", "Change what the cluster records about a node (its labels).")
    node_verbs = node.add_subparsers(dest="node_verb", required=True, metavar="label")
    label = node_verbs.add_parser(
        "label",
        help="set (KEY=VALUE) or remove (KEY-) labels of NODE",
        description="Set (KEY=VALUE) or remove (KEY-) labels of NODE, all in one commit; "
        "the node's other labels stay. `colony status` shows them.",
        epilog="examples:\n"
        "  colony node label node-1 disk=ssd zone=eu-1\n"
        "  colony node label node-1 example.com/gpu=a100 zone-",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    label.add_argument("node", help="node name or id (with --server: its id)")
    label.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")
    label.set_defaults(func=cmd_node_label)
    add_management_options(label)


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
