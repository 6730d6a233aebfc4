"""A local cluster's files in its state dir: written by `colony up`, read back.

In the state dir:

    cluster.toml              the shape: nodes, base port, voters
    cluster.secret            signs Raft frames and metrics (0600, made once)
    nodes/<node>/config.toml  each node's config (hand edits to it are kept)
    nodes/<node>/nats.conf    each node's nats-server config

Every node's config names the cluster's id (`consensus.cluster_id`): its database
and snapshots carry it, so a snapshot of another cluster is refused.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec
import tomli_w

from colony.cli.local.plan import (
    ClusterError,
    NodePlan,
    Shape,
    nats_config,
    node_config,
    plan,
    shape_of,
)
from colony.shared.config import Config, ConfigError, load
from colony.shared.config import dumps as dump_config
from colony.shared.signing import read_secret
from colony.shared.snapshot import cluster_id_of
from colony.shared.statedir import NodeDir, StateDir


def write_nodes(state: StateDir, plans: list[NodePlan], cluster: str = "") -> list[NodeDir]:
    """Write each node's config and nats.conf; keep ids and hand-edited capacity/labels.
    The cluster's id is `cluster` (a new cluster restored from a snapshot takes the
    snapshot's), else the one the configs name, else the one its secret gives."""
    state.create()
    state.cluster_file.write_text(tomli_w.dumps(msgspec.to_builtins(shape_of(plans))))
    voter_ids = [state.node(p.name).node_id for p in plans if p.voter]
    secret = cluster_secret(state)
    cluster = cluster or cluster_id(state)
    node_dirs = []
    for node in plans:
        node_dir = state.node(node.name)
        node_dir.create()
        config = node_config(
            existing_config(node_dir),
            node,
            plans,
            node_dir.node_id,
            node_dir.path.resolve(),
            voter_ids,
            secret.resolve(),
            cluster,
        )
        node_dir.config_file.write_text(dump_config(config))
        server = nats_config(node, plans, node_dir.node_id, node_dir.nats_store.resolve())
        node_dir.nats_conf.write_text(server.render())
        node_dirs.append(node_dir)
    return node_dirs


def cluster_secret(state: StateDir) -> Path:
    """The file of the secret that signs Raft frames: made once, readable by its owner only."""
    path = state.path / "cluster.secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


def cluster_id(state: StateDir) -> str:
    """The id of the state dir's cluster: as its nodes' configs name it, else as its
    secret gives it ('' for a state dir with neither: a new cluster)."""
    for node_dir in state.nodes():
        if node_dir.config_file.exists() and (
            named := existing_config(node_dir).consensus.cluster_id
        ):
            return named
    secret = state.path / "cluster.secret"
    if not secret.exists():
        return ""
    try:
        return cluster_id_of(read_secret(secret))
    except ValueError as e:
        raise ClusterError(str(e)) from None


def existing_config(node_dir: NodeDir) -> Config:
    """The node's config as it is on disk (hand edits and all), or the defaults."""
    if not node_dir.config_file.exists():
        return Config()
    try:
        return load(node_dir.config_file, env={})
    except ConfigError as e:
        raise ClusterError(f"{e} (fix it, or delete the file to start over)") from None


def previous_shape(state: StateDir) -> Shape | None:
    """The shape the state dir's cluster had, or None for a new state dir."""
    if not state.cluster_file.exists():
        return None
    try:
        return msgspec.toml.decode(state.cluster_file.read_bytes(), type=Shape)
    except (msgspec.DecodeError, OSError) as e:
        raise ClusterError(
            f"{state.cluster_file} is damaged ({e}); fix it, or delete it to start over"
        ) from None


def plan_of(state: StateDir) -> list[NodePlan]:
    """The plan of the state dir's cluster as `colony up` last formed it (none: empty)."""
    shape = previous_shape(state)
    return plan(shape.nodes, shape.base_port, shape.voters) if shape else []


def voters_of(state: StateDir) -> list[str]:
    """Node ids to ask for consensus: the configured voters first, then every other node
    (any may have been promoted since, replacing a lost voter)."""
    configured, others = [], []
    for node_dir in state.nodes():
        if node_dir.config_file.exists():
            config = existing_config(node_dir)
            configured = configured or config.consensus.voters
            others.append(config.node.id)
    return list(dict.fromkeys([*configured, *others])) if configured else []
