"""An etcd baseline for bench/consensus: a 3-member etcd on loopback and a client shaped
like Colony's `Management`.

`Etcd` starts three `etcd` processes (each its own data dir in a temp dir, client and
peer URLs on free loopback ports) with Colony's raft timers: a heartbeat every 50 ms
and an election timeout of 300 ms, which etcd, like Colony, randomizes between one
and two timeouts (0.3-0.6 s). Every member is started with PR_SET_PDEATHSIG, so it is
killed even if this process dies without running its `finally`s; `stop` ends them
in any case. Start members from the main thread: the death signal follows the thread
that started the process, not the process.

`EtcdClient` speaks etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/txn`), over one
keep-alive HTTP/1.1 connection of its own on asyncio streams (no grpcio, no new
dependency), with `Management`'s retries: the members in order (the leader first),
each try at most `ATTEMPT` seconds, the next member after an error or a timeout,
backing off 50 ms doubling to 0.5 s, until the client's deadline (`Management`'s
retries before it learnt to probe the voter a request waits on). Unlike Colony's
proposals, an etcd put carries no id, so a retried put that did commit is applied
twice (harmless for these puts: the same value again).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from colony.harness.processes import poll
from colony.shared import natsd
from colony.shared.management import ATTEMPT

HEARTBEAT_MS = 50
ELECTION_MS = 300
PR_SET_PDEATHSIG = 1


def binary() -> str | None:
    """The `etcd` on PATH, if any (it is never required: the bench skips etcd without it)."""
    return shutil.which("etcd")


def version() -> str:
    argv = [binary() or "etcd", "--version"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()
    return first[0].removeprefix("etcd Version: ") if first else "?"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class EtcdError(Exception):
    """A request etcd did not answer with a success: the message says which and why."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Connection:
    """One keep-alive HTTP/1.1 connection to one member; one request at a time."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        headers = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        else:  # net/http chunks a response it cannot buffer whole (> 2 KiB)
            chunks = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")  # no trailers from etcd
            payload = b"".join(chunks)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, json.loads(payload or b"{}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class EtcdClient:
    """Puts through any member, retried as `Management` retries proposals."""

    def __init__(self, urls: list[str], timeout: float = 10.0) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        self._next = 0
        self._connection: Connection | None = None

    async def put(self, key: str, value: str) -> dict:
        return await self._ask("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    async def put_many(self, pairs: list[tuple[str, str]]) -> dict:
        """Every put in one transaction (one raft entry), as `propose(*commands)`."""
        puts = [{"requestPut": {"key": _b64(k), "value": _b64(v)}} for k, v in pairs]
        return await self._ask("/v3/kv/txn", {"success": puts})

    async def send(self, pairs: list[tuple[str, str]]) -> dict:
        """One put alone, or several in one transaction."""
        return await (self.put(*pairs[0]) if len(pairs) == 1 else self.put_many(pairs))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _ask(self, path: str, body: dict) -> dict:
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            url = self.urls[self._next % len(self.urls)]
            if self._connection is None:
                self._connection = Connection(url)
            left = deadline - time.monotonic()
            try:
                timeout = min(max(left, 0.1), ATTEMPT)
                status, reply = await asyncio.wait_for(self._connection.post(path, body), timeout)
                if status == 200:
                    return reply
                last: object = f"{url}: HTTP {status}: {reply.get('message') or reply}"
                if status == 400:  # bad input: asking again won't help
                    raise EtcdError(str(last), retryable=False)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                last = f"{url}: {type(e).__name__} {e}"  # down, or killed mid-request
            self.close()
            self._next += 1
            if time.monotonic() + delay >= deadline:
                raise EtcdError(f"no member could answer: {last}", retryable=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def status(url: str, timeout: float = 1.0) -> dict | None:
    """A member's /v3/maintenance/status (its id, the leader's id, term), or None if down."""
    connection = Connection(url)
    try:
        code, reply = await asyncio.wait_for(connection.post("/v3/maintenance/status", {}), timeout)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        return None
    finally:
        connection.close()
    return reply if code == 200 else None


@dataclass
class Etcd:
    """Three etcd members on loopback, in `workdir`."""

    workdir: Path
    names: list[str] = field(default_factory=lambda: ["etcd-1", "etcd-2", "etcd-3"])
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    client_urls: dict[str, str] = field(default_factory=dict)
    peer_urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = natsd.free_ports(2 * len(self.names))
        for i, name in enumerate(self.names):
            self.client_urls[name] = f"http://127.0.0.1:{ports[2 * i]}"
            self.peer_urls[name] = f"http://127.0.0.1:{ports[2 * i + 1]}"

    def __enter__(self) -> Etcd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, name: str) -> None:
        """Start (or restart, on its data dir) one member."""
        cluster = ",".join(f"{n}={u}" for n, u in self.peer_urls.items())
        argv = [
            binary() or "etcd",
            f"--name={name}",
            f"--data-dir={self.workdir / name}",
            f"--listen-client-urls={self.client_urls[name]}",
            f"--advertise-client-urls={self.client_urls[name]}",
            f"--listen-peer-urls={self.peer_urls[name]}",
            f"--initial-advertise-peer-urls={self.peer_urls[name]}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",  # ignored when the data dir holds a member
            "--initial-cluster-token=colony-bench",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
        ]
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    async def start_all(self, timeout: float = 30) -> str:
        """Start every member; the leader once all agree on one."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.start(name)
        return await self.whole(timeout)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def urls(self, names: list[str]) -> list[str]:
        return [self.client_urls[n] for n in names]

    async def leader(self, names: list[str] | None = None) -> str | None:
        """The member every one of `names` (default: all) names as leader, if they agree."""
        names = names or self.names
        replies = await asyncio.gather(*(status(self.client_urls[n]) for n in names))
        if any(r is None for r in replies):
            return None
        ids = {r["header"]["member_id"]: n for r, n in zip(replies, names, strict=True)}
        leaders = {r.get("leader") for r in replies}
        return ids.get(leaders.pop()) if len(leaders) == 1 else None

    async def whole(self, timeout: float) -> str:
        """Every member answers and names the same leader, one of them: that leader."""

        async def agreed() -> str | None:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = self.workdir / f"{name}.log"
                    raise RuntimeError(f"{name} exited {process.returncode} (log: {log})")
            return await self.leader()

        return await poll(agreed, timeout, "the etcd members to agree on a leader")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in list(self.processes.items()):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.processes[name]
