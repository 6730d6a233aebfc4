"""The on-disk layout of a Colony state directory.

::

    <state>/                     default ./.colony (colony up --state-dir)
      cluster.toml               what `colony up` formed: node count, base port
      nodes/<name>/              one folder per node (node-1, node-2, ...)
        node-id                  the node's stable id, made once, kept across restarts
        node.toml                the node's config, read by its supervisor and services
        nats.conf                its nats-server's config
        nats/                    its nats-server's JetStream store
        run/<process>.json       a record per running process (pid, process group, start time)
        logs/<process>.log       each process's output (supervisor, nats, monitor, ...)
        instances/<id>/          each instance the node's agent runs: its output, state and
          process.json           the record of its process (for the process driver)

Process records let `colony down` find and stop everything even after the
CLI or a supervisor was killed with -9; the start time in each record guards
against signalling an unrelated process that reused the pid.

The state holds the management database, the Raft journal, logs and the
cluster secret: it is its owner's only. Folders are made 0700, and the CLI
and the supervisor run under umask 077, so every file they or their children
create is 0600.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
from collections.abc import Iterable
from pathlib import Path

import msgspec
import psutil

from colony.shared.config import ConfigError, load

DEFAULT_STATE_DIR = Path(".colony")
SUPERVISOR = "supervisor"
NATS = "nats"
INSTANCE_PROCESS = "process.json"
"""In an instance's folder: a ProcessRecord of what runs it (`colony down` kills it)."""
PRIVATE_UMASK = 0o077
"""What the CLI and the supervisor run under: files 0600, folders 0700, for every child too."""
OWN_ENTRIES = {"cluster.toml", "cluster.secret", "nodes"}
"""What `colony up` puts in a state dir's root."""
RESTORE_SNAPSHOT = "restore.snapshot"
"""In a node's consensus folder: the snapshot its voter restores at its next start (the CLI
puts it there: `colony snapshot restore`, `colony up --restore`)."""
RESTORE_PENDING = "restore.pending"
"""In a node's consensus folder: a restore is on its way (`colony up --restore replica`); its
voter waits for `RESTORE_SNAPSHOT` before it starts."""


class StateDirError(Exception):
    """The state dir cannot be used (a file, not readable or writable); the message says why."""


class ProcessRecord(msgspec.Struct, frozen=True):
    """A process the node started: enough to find it, check it and stop it."""

    name: str
    pid: int
    pgid: int
    """Its process group: signalling it reaches the process and its children."""
    started: float
    """The process's start time as the OS reports it (psutil create_time)."""
    argv: list[str]

    @classmethod
    def of(cls, name: str, pid: int, argv: list[str]) -> ProcessRecord | None:
        """Describe the running process `pid` (None if it has already exited)."""
        try:
            return cls(name, pid, os.getpgid(pid), psutil.Process(pid).create_time(), argv)
        except (ProcessLookupError, psutil.Error):
            return None

    def alive(self) -> bool:
        """True while this very process (not a later one with its pid) runs."""
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.started and process.status() != "zombie"
        except psutil.Error:
            return False

    def group_alive(self) -> bool:
        """True while a process of its original process group runs.

        The group outlives its leader only while members remain, and Linux
        never hands out a pid still in use as a group id; so a group with a
        dead leader is still ours, and one whose leader pid now belongs to
        another process is not.
        """
        if self.alive():
            return True
        if psutil.pid_exists(self.pid):
            return False  # the pid was reused: that group is someone else's
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        return True


class NodeDir:
    """One node's folder in the state directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.config_file = self.path / "node.toml"
        self.nats_conf = self.path / "nats.conf"
        self.nats_store = self.path / "nats"
        self.run = self.path / "run"
        self.logs = self.path / "logs"
        self.instances = self.path / "instances"

    def __repr__(self) -> str:
        return f"NodeDir({str(self.path)!r})"

    def create(self) -> None:
        for folder in (self.path, self.nats_store, self.run, self.logs):
            make_private_dir(folder)

    def nats_url(self) -> str | None:
        """The URL of the node's own nats-server, from its config (None without a valid one)."""
        try:
            return load(self.config_file, env={}).nats.servers[0]
        except ConfigError:
            return None

    def read_id(self) -> str | None:
        """The node's id if it has one yet (reading never creates it)."""
        try:
            return (self.path / "node-id").read_text().strip() or None
        except OSError:
            return None

    @property
    def node_id(self) -> str:
        """The node's stable id: made on first use, then read back forever."""
        id_file = self.path / "node-id"
        if not id_file.exists():
            make_private_dir(self.path)
            id_file.write_text(f"{self.name}-{secrets.token_hex(3)}\n")
        return id_file.read_text().strip()

    def log(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def record_file(self, process: str) -> Path:
        return self.run / f"{process}.json"

    def write_record(self, record: ProcessRecord) -> None:
        path = self.record_file(record.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        tmp.replace(path)  # atomic: a reader never sees half a record

    def records(self) -> list[ProcessRecord]:
        """Every process record of the node (the supervisor's included)."""
        return _read_records(self.run.glob("*.json"))

    def instance_records(self) -> list[ProcessRecord]:
        """The processes of the instances the node's agent started (left running, or not)."""
        return _read_records(self.instances.glob(f"*/{INSTANCE_PROCESS}"))

    def record(self, process: str) -> ProcessRecord | None:
        return next((r for r in self.records() if r.name == process), None)

    def remove_record(self, process: str) -> None:
        self.record_file(process).unlink(missing_ok=True)

    def crash(self) -> None:
        """kill -9 every process the node runs, as a machine failure would: the supervisor
        first, so that it restarts nothing."""
        for record in sorted(self.records(), key=lambda r: r.name != SUPERVISOR):
            if record.alive():
                os.kill(record.pid, signal.SIGKILL)


def _read_records(paths: Iterable[Path]) -> list[ProcessRecord]:
    found = []
    for path in sorted(paths):
        try:
            found.append(msgspec.json.decode(path.read_bytes(), type=ProcessRecord))
        except (OSError, msgspec.DecodeError):
            continue  # a record being replaced or left half-written by a crash
    return found


class StateDir:
    """A state directory holding the nodes of one local cluster."""

    def __init__(self, path: Path | str = DEFAULT_STATE_DIR) -> None:
        self.path = Path(path)
        self.cluster_file = self.path / "cluster.toml"
        self.nodes_dir = self.path / "nodes"

    def node(self, name: str) -> NodeDir:
        return NodeDir(self.nodes_dir / name)

    def nodes(self) -> list[NodeDir]:
        """Nodes in order (node-2 before node-10); none if the state dir does not exist.

        Raises StateDirError if it exists but cannot be read (a file, another user's).
        """
        try:
            folders = [p for p in self.nodes_dir.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        except OSError as e:
            if _is_file(self.path):
                raise StateDirError(f"state dir {self.path} is a file, not a directory") from None
            raise StateDirError(f"cannot read state dir {self.path}: {_reason(e)}") from None
        return [NodeDir(p) for p in sorted(folders, key=lambda p: natural_key(p.name))]

    def create(self) -> None:
        """Make the state dir, its owner's only; tighten one made before that rule.

        An existing root is made 0700 only if it holds nothing but Colony's own
        entries: `--state-dir /tmp` or `--state-dir .` must not lock others out
        of a shared folder. Everything Colony keeps in it is made private anyway.
        """
        existed = self.path.is_dir()
        make_private_dir(self.path)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise StateDirError(f"cannot write to state dir {self.path}: permission denied")
        make_private_dir(self.nodes_dir)
        try:
            if not existed or {p.name for p in self.path.iterdir()} <= OWN_ENTRIES:
                _remove_group_and_other(self.path)
            for name in ("cluster.toml", "cluster.secret"):
                _remove_group_and_other(self.path / name)
            for folder, dirs, files in os.walk(self.nodes_dir):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                    _remove_group_and_other(Path(name))
        except OSError as e:
            raise StateDirError(
                f"cannot make {e.filename} private (chmod go-rwx): {_reason(e)}"
            ) from None

    def find(self, name_or_id: str) -> NodeDir | None:
        """The node with this name or id (looking never creates an id)."""
        return next((n for n in self.nodes() if name_or_id in (n.name, n.read_id())), None)


def make_private_dir(path: Path) -> None:
    """mkdir -p, the last folder 0700 (its parents as the umask says); StateDirError if not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StateDirError(f"cannot create folder {path}: a file is in the way") from None
    except OSError as e:
        raise StateDirError(f"cannot create folder {path}: {_reason(e)}") from None


def _remove_group_and_other(path: Path) -> None:
    """chmod go-rwx, never through a symlink (it may point anywhere)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return  # not made yet, or removed meanwhile (a record, a rotated log)
    if not stat.S_ISLNK(mode) and mode & 0o077:
        path.chmod(stat.S_IMODE(mode) & ~0o077)


def _is_file(path: Path) -> bool:
    """True if `path` is there and not a folder (False also if it cannot even be looked at)."""
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        return False


def _reason(e: OSError) -> str:
    """`permission denied`, `not a directory`: what an OSError says, to end a sentence."""
    return (e.strerror or str(e)).lower()


def natural_key(name: str) -> tuple[str, int]:
    """Sort key putting node-2 before node-10."""
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, 0)
