"""`colony capacity`: show or change a node's declared capacity (cores, memory).

The capacity is what the node offers to workloads; free = capacity - use.
It is kept in the node's config file, which the node's monitor re-reads when
it changes: the new figures show in its next sample (about a second), then
ride with its membership to the Raft leader, which prefers to lead from the
voter with the most free resources.
"""

from __future__ import annotations

import argparse
import math
import re

import msgspec

from colony.cli.output import fail, human_bytes, out, print_json
from colony.shared.config import ConfigError, load
from colony.shared.config import dumps as dump_config
from colony.shared.statedir import NodeDir, StateDir

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
MAX_CORES = 65536
"""More cores than any machine has: a bigger figure is a typo (and would win every election)."""
MAX_MEMORY = 2**50
"""1024 TiB, far more than any machine has, for the same reason."""


def memory_size(text: str) -> int:
    """Bytes from '8GiB', '512M', '2g' or a plain number of bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size like 8GiB, 512MiB or 1073741824"
        )
    size = int(float(match[1]) * _UNITS[match[2]])
    if not 1 <= size <= MAX_MEMORY:
        raise argparse.ArgumentTypeError(
            f"must be a memory size from 1 byte to 1024TiB, got {text!r}"
        )
    return size


def cores(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # inf or 1e300 would be written, then break the node's samples (and win every election)
    if not (0 < value <= MAX_CORES):
        raise argparse.ArgumentTypeError(
            f"must be a finite number of cores > 0 and at most {MAX_CORES}, got {text!r}"
        )
    return value


def add_parser(verb) -> None:
    capacity = verb("capacity", "Show or change a node's declared capacity (cores, memory).")
    capacity.add_argument("node", help="node name or id")
    capacity.add_argument("--cpu", type=cores, help="cores the node offers, e.g. 4 or 1.5")
    capacity.add_argument("--memory", type=memory_size, help="memory it offers, e.g. 8GiB")
    capacity.add_argument(
        "--reset", action="store_true", help="back to the default (its share of the host)"
    )
    capacity.add_argument("--json", action="store_true", help="machine-readable output")
    capacity.set_defaults(func=cmd_capacity)


def find_node(state: StateDir, wanted: str) -> NodeDir:
    nodes = state.nodes()
    for node_dir in nodes:
        if wanted in (node_dir.name, node_dir.read_id()):
            return node_dir
    names = ", ".join(n.name for n in nodes) or "none"
    fail(f"no node {wanted!r} in {state.path}/ (its nodes: {names})")


def cmd_capacity(args: argparse.Namespace) -> int:
    node_dir = find_node(StateDir(args.state_dir), args.node)
    try:
        config = load(node_dir.config_file, env={})
    except ConfigError as e:
        fail(str(e), "fix the file, or `colony up` to write it again")
    node = config.node
    if args.reset:
        node = msgspec.structs.replace(node, capacity_cpu=None, capacity_memory=None)
    if args.cpu is not None:
        node = msgspec.structs.replace(node, capacity_cpu=args.cpu)
    if args.memory is not None:
        node = msgspec.structs.replace(node, capacity_memory=args.memory)
    changed = node != config.node
    if changed:
        temporary = node_dir.config_file.with_suffix(".tmp")
        temporary.write_text(dump_config(msgspec.structs.replace(config, node=node)))
        temporary.replace(node_dir.config_file)  # the monitor never reads half a file
    declared = {"cpu": node.capacity_cpu, "memory": node.capacity_memory}
    if args.json:
        print_json(
            {"node": node.id, "name": node_dir.name, "declared": declared, "changed": changed}
        )
        return 0
    cpu = f"{node.capacity_cpu:g} cores" if node.capacity_cpu else "its share of the host's cores"
    memory = (
        human_bytes(node.capacity_memory) if node.capacity_memory else "its share of the memory"
    )
    verb = "now declares" if changed else "declares"
    out.print(f"{node_dir.name} {verb} {cpu} and {memory}.")
    if changed:
        out.print("Its monitor picks this up within a second; see it with `colony status`.")
    return 0
