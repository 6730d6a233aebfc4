"""Node configuration: a TOML file, overridden by ``COLONY_*`` environment variables.

Every key is validated; an invalid one is reported with where it came from,
the value, and what is allowed. Unknown keys are errors too (a typo in a
config file must not be silently ignored).

Environment variables name a section and a key joined by a double
underscore: ``COLONY_MONITOR__INTERVAL=2`` sets ``[monitor] interval = 2``.
List values are comma-separated. ``COLONY_CONFIG`` names the file.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import psutil
import tomli_w

from colony.shared.messages import Resources

ENV_PREFIX = "COLONY_"
ENV_FILE = "COLONY_CONFIG"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535, description="a TCP port, 0-65535")]
Positive = Annotated[float, msgspec.Meta(gt=0, description="a number > 0")]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NodeSettings(_Section):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")] = "node"
    """Stable node id, also used as a subject token."""
    name: str = ""
    """Human name (node-1); the id when empty."""
    dir: str = ".colony/nodes/node"
    """This node's state directory."""
    capacity_cpu: Annotated[float, msgspec.Meta(gt=0, le=65536)] | None = None
    """Declared cores; default: the host's cores / local_nodes."""
    capacity_memory: Annotated[int, msgspec.Meta(gt=0, le=2**50)] | None = None
    """Declared bytes of memory; default: the host's memory / local_nodes."""
    local_nodes: Annotated[int, msgspec.Meta(ge=1)] = 1
    """How many nodes share this host (for the default capacity)."""
    roles: list[str] = []
    labels: dict[str, str] = {}


class NatsSettings(_Section):
    servers: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=r"^(nats|tls)://[^\s/:]+(:\d{1,5})?\Z")]],
        msgspec.Meta(min_length=1),
    ] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    """This node's own server first; services talk to their node's server."""
    connect_timeout: Positive = 2.0
    ping_interval: Positive = 2.0
    """Seconds between client pings: a dead server is noticed after two missed."""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    creds: str | None = None
    """A NATS credentials file (JWT + nkey seed)."""


class MonitorSettings(_Section):
    interval: Positive = 1.0
    """Seconds between samples."""
    history: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 60
    """Samples kept in the ring buffer."""
    http_host: str = "127.0.0.1"
    http_port: Port = 0
    """Prometheus text endpoint (GET /metrics); 0 picks a free port."""


class ConsensusSettings(_Section):
    voters: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]] = []
    """Node ids of the Raft voters (1, 3 or 5 of them), the same list on every node."""
    secret_file: str = ""
    """File holding the cluster secret that signs Raft frames (kept out of this config)."""
    cluster_id: Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{15})?\Z")] = ""
    """The cluster's id (15 hex digits), kept in its database and its snapshots (a
    snapshot of another cluster is refused); '' : derived from the secret."""
    propose_timeout: Positive = 5.0
    """Seconds a proposal may wait to be committed before it is answered 'no quorum'."""
    change_stream_replicas: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0
    """Replicas of the change stream; 0: as many as voters, at most 3 (1 on a lone server)."""
    lease_ttl: Positive = 1.0
    """Seconds the manager lease lasts after its holder asked for it (grant or renewal)."""
    lease_renew: Positive = 0.4
    """Seconds between the holder's renewals: two or more per ttl, so load does not lose it
    (each is a Raft entry applied on every voter: what an idle cluster mostly does)."""
    lease_margin: Positive = 0.1
    """Seconds the leader waits beyond the ttl before expiring a lease: clock drift allowance."""
    transfer_margin: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    """Leadership moves only to a voter with this much more free resources (0.25: 25 %)."""
    transfer_hold: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    """Seconds after a leadership transfer before the next one (no ping-pong)."""
    voter_count: Annotated[int, msgspec.Meta(ge=0, le=7)] = 0
    """Voters to keep, promoting standby nodes to replace lost ones; 0: len(voters)."""
    idempotency_window: Annotated[float, msgspec.Meta(ge=2, le=7 * 86400)] = 300.0
    """Seconds the management database remembers a proposal's id and first outcome, so a
    retry gets that outcome back. Older ids are forgotten, and a proposal whose request was
    made (by its client's clock) more than half this before the Raft leader's clock is
    refused rather than risk applying it twice: clients retry within seconds, and clocks
    must agree within half of it. The same on every voter: the leader's value is used."""
    change_log_kept: Annotated[int, msgspec.Meta(ge=256, le=10_000_000)] = 10_000
    """Changes the management database keeps once they are on the change stream (the
    stream keeps the history); a change not yet relayed is always kept. The leader's value
    is used. At least one round of the relay (256 changes): what it sends again when the
    stream lost its latest changes (a replica behind took over)."""
    change_stream_max_msgs: Annotated[int, msgspec.Meta(ge=1000, le=10**9)] = 1_000_000
    """Changes the change stream keeps at most (the oldest go first; also at most 7 days)."""
    change_stream_max_bytes: Annotated[int, msgspec.Meta(ge=2**20, le=2**40)] = 256 * 2**20
    """Bytes the change stream keeps at most, per replica (the oldest changes go first)."""


class AgentSettings(_Section):
    port_lo: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 20000
    port_hi: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 20999
    """Instance ports are given from port_lo..port_hi (both included); nodes sharing a
    host need ranges that do not overlap (`colony up` gives each its own)."""
    address: str = "127.0.0.1"
    """The host this node's instances are reached at (given to them as COLONY_ADDRESS)."""
    dir: str = ""
    """Where instances keep their output and state; '' : <node.dir>/instances."""
    drivers: list[Literal["process", "sim"]] = msgspec.field(default_factory=lambda: ["process"])
    """The drivers this node offers: sim (runs nothing) is for benchmarks only, which
    offer it themselves."""
    stop_grace: Positive = 10.0
    """Seconds an instance gets to exit after SIGTERM before SIGKILL."""
    shutdown_grace: Positive = 1.5
    """The same when the node shuts down (its agent stops every instance in time)."""
    log_max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=2**40)] = 16 * 2**20
    """An instance's stdout (or stderr) file is rotated once larger than this."""
    log_keep: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2
    """Rotated files kept per stream (older output is dropped)."""
    cgroup: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")] = "colony"
    """The cgroup (under each controller) instances' cgroups are made in."""
    resync: Positive = 10.0
    """Seconds between full re-reads of the node's assignments (besides the changes)."""

    def __post_init__(self) -> None:
        if self.port_lo > self.port_hi:
            raise ValueError(f"port_lo {self.port_lo} is above port_hi {self.port_hi}")


class SnapshotterSettings(_Section):
    target: str = "nats"
    """Where each voter's database is replicated: 'nats' (an object store bucket of the
    cluster's own JetStream, one per voter), 'file:///DIR' (DIR/<node>), or an
    S3-compatible 's3://BUCKET/PATH' (litestream's own settings and environment)."""
    sync_interval: Positive = 1.0
    """Seconds between litestream's syncs: at most this much is lost with every voter."""
    snapshot_interval: Positive = 600.0
    """Seconds between full snapshots in the replica: a restore (a new voter's seed, a
    disaster recovery) replays at most this much of changes after the latest one."""
    retention: Positive = 1800.0
    """Seconds of history the replica keeps (older snapshots and the changes before the
    oldest kept are removed): what bounds its storage. A replica is for the latest state;
    keep history with `colony snapshot save`."""
    report_interval: Positive = 5.0
    """Seconds between updates of this voter's entry in the replica manifest."""


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class Config(_Section):
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    monitor: MonitorSettings = msgspec.field(default_factory=MonitorSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    consensus: ConsensusSettings = msgspec.field(default_factory=ConsensusSettings)
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    snapshotter: SnapshotterSettings = msgspec.field(default_factory=SnapshotterSettings)

    @property
    def node_name(self) -> str:
        return self.node.name or self.node.id


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key, value and why."""


_PATH = re.compile(r"`\$((?:\.\w+|\[[^\]]*\])*)`")


def declared_capacity(node: NodeSettings, host_cpus: int, host_memory: int) -> Resources:
    """The node's capacity (what its monitor reports and its agent registers for the
    scheduler): as configured, else its share of the host (`local_nodes` share it)."""
    return Resources(
        cpu=node.capacity_cpu or round(host_cpus / node.local_nodes, 2),
        memory=node.capacity_memory or host_memory // node.local_nodes,
    )


def host_capacity(node: NodeSettings) -> Resources:
    """`declared_capacity` on this host."""
    return declared_capacity(node, psutil.cpu_count() or 1, psutil.virtual_memory().total)


class DeclaredCapacity:
    """The node's declared capacity, re-read from its config file when the file changes
    (`colony capacity` edits it), so that it changes without a restart."""

    def __init__(self, config_file: Path, at_start: Resources, log: logging.Logger) -> None:
        self.file = config_file
        self.value = at_start
        self.log = log
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.file.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def read(self) -> Resources:
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self.value
        self._stamp = stamp
        try:
            node = load(self.file, env={}).node
        except ConfigError as e:  # a bad edit: say so once, and keep the capacity it had
            self.log.warning("config not reloaded; capacity unchanged", extra={"reason": str(e)})
            return self.value
        changed = host_capacity(node)
        if changed != self.value:
            self.log.info(
                "declared capacity changed",
                extra={"cpu": changed.cpu, "memory": changed.memory},
            )
            self.value = changed
        return self.value


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (or $COLONY_CONFIG), apply COLONY_* variables, validate."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_FILE)
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        origin = {key: f"in {path}" for key in [*raw, *_flat_keys(raw)]}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_FILE or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{name}: [{section}] is not a section")
        raw[section][key] = _env_value(section, key, value)
        origin.setdefault(section, f"from {name}")
        origin[f"{section}.{key}"] = f"from {name}"
    return validate(raw, origin)


def validate(raw: dict[str, Any], origin: Mapping[str, str] | None = None) -> Config:
    """Turn plain data into a Config, or raise a ConfigError naming the bad key."""
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(_explain(str(e), raw, origin or {})) from None


def dumps(config: Config) -> str:
    """The config as TOML (what `colony up` writes for each node)."""
    data = msgspec.to_builtins(config)
    # TOML has no null: an unset optional key is simply left out.
    return tomli_w.dumps(
        {
            section: {k: v for k, v in keys.items() if v is not None}
            for section, keys in data.items()
        }
    )


def _explain(error: str, raw: dict[str, Any], origin: Mapping[str, str]) -> str:
    reason, _, at = error.partition(" - at ")
    match = _PATH.search(at)
    # `$.node.labels[...]` -> node, labels (a dict's key is not named in msgspec's path)
    steps = re.findall(r"\.(\w+)|\[(\d+)\]", match.group(1)) if match else []
    parts = [name or index for name, index in steps]
    unknown = re.match(r"Object contains unknown field `(\w+)`", reason)
    if unknown:
        parts.append(unknown.group(1))
        reason = "unknown key"
    elif reason.startswith("Object missing required field"):
        parts.append(reason.split("`")[1])
        reason = "required key is missing"
    elif reason.startswith("Invalid enum value"):
        reason = "not an allowed value"
    else:
        reason = reason.replace("Expected", "expected")
    key = ".".join(p for p in parts if not p.isdigit()) or "config"
    value: Any = raw
    for part in parts:
        try:
            value = value[int(part)] if part.isdigit() else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            value = None
            break
    where = origin.get(".".join(parts[:2])) or origin.get(parts[0] if parts else "")
    shown = f" = {value!r}" if value is not None else ""
    place = f" ({where})" if where else ""
    return f"invalid config {key}{shown}{place}: {reason}{_allowed(parts)}"


def _allowed(parts: list[str]) -> str:
    """Name what a key accepts, from the Config schema itself."""
    kind: Any = Config
    for part in parts:
        fields = {f.name: f for f in msgspec.structs.fields(kind)} if _is_struct(kind) else {}
        if part not in fields:
            if _is_struct(kind):
                return f" (known keys: {', '.join(sorted(fields))})"
            return ""
        kind = fields[part].type
    info = msgspec.inspect.type_info(kind)
    if isinstance(info, msgspec.inspect.LiteralType):
        return f" (allowed: {', '.join(map(str, info.values))})"
    return ""


def _is_struct(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


def _flat_keys(raw: dict[str, Any]) -> list[str]:
    return [
        f"{section}.{key}"
        for section, values in raw.items()
        if isinstance(values, dict)
        for key in values
    ]


def _env_value(section: str, key: str, value: str) -> Any:
    """Split list-typed keys on commas; leave the rest to validation's coercion."""
    sections = {f.name: f.type for f in msgspec.structs.fields(Config)}
    kind = sections.get(section)
    if _is_struct(kind):
        fields = {f.name: f.type for f in msgspec.structs.fields(kind)}
        info = msgspec.inspect.type_info(fields.get(key, str))
        if isinstance(info, msgspec.inspect.ListType):
            return [item.strip() for item in value.split(",") if item.strip()]
    return value
