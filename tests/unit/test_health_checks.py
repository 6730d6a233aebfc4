"""The monitor's probes against real local servers and real processes: a good HTTP server,
one answering 500, one that accepts and never answers, one that answers garbage, a closed
port, exec checks that pass, fail and hang. Each is bounded by its timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time

import psutil
import pytest

from colony.monitor.checks import probe
from colony.shared.jobspec import HealthCheck
from colony.shared.messages import CheckTarget

HOST = "127.0.0.1"
TIMEOUT = 0.5


@contextlib.asynccontextmanager
async def server(answer: bytes | None):
    """A TCP server on a free port that reads a request and answers `answer` (None: never
    answers, holding the connection). Yields the port and the requests it read."""
    requests: list[bytes] = []
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is None:
            held.append(writer)
            return
        writer.write(answer)
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(handle, HOST, 0)
    try:
        yield listening.sockets[0].getsockname()[1], requests
    finally:
        for writer in held:
            writer.close()
        listening.close()


def target(port: int = 0, **fields) -> CheckTarget:
    return CheckTarget(
        id="web-0-aaaa", job="web", version=1, run=1.0, host=HOST, ports={"web": port}, **fields
    )


def http(path: str = "/healthz", status: int = 200) -> HealthCheck:
    return HealthCheck(type="http", port="web", path=path, status=status, timeout=TIMEOUT)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]  # nothing listens once it is closed


async def timed(check: HealthCheck, on: CheckTarget) -> tuple[bool, str, float]:
    started = time.monotonic()
    ok, output = await probe(check, on)
    return ok, output, time.monotonic() - started


async def test_http_good_answer_passes_and_sends_a_proper_request():
    async with server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as (port, requests):
        assert await probe(http(), target(port)) == (True, "HTTP/1.1 200 OK")
    [request] = requests
    assert request.startswith(b"GET /healthz HTTP/1.1\r\n")
    assert f"\r\nHost: {HOST}:{port}\r\n".encode() in request


async def test_http_other_status_fails_and_says_which():
    async with server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n") as (port, _):
        assert await probe(http(), target(port)) == (
            False,
            "HTTP/1.1 500 Internal Server Error (expected 200)",
        )
    async with server(b"HTTP/1.0 503 Service Unavailable\r\n\r\n") as (port, _):
        assert await probe(http(status=503), target(port)) == (
            True,
            "HTTP/1.0 503 Service Unavailable",
        )


async def test_http_server_that_accepts_and_never_answers_fails_at_the_timeout():
    async with server(None) as (port, _):
        ok, output, took = await timed(http(), target(port))
    assert not ok and output == f"no answer from {HOST}:{port} within 0.5s"
    assert TIMEOUT <= took < TIMEOUT + 0.5


async def test_http_garbage_is_not_an_http_answer():
    async with server(b"\x00\x01 hello there\nmore\n") as (port, _):
        ok, output = await probe(http(), target(port))
    assert not ok and output == "not an HTTP answer: \\x00\\x01 hello there\\nmore\\n"
    async with server(b"") as (port, _):  # closes without a word
        assert await probe(http(), target(port)) == (
            False,
            "not an HTTP answer: nothing (connection closed)",
        )
    # a flood with no line end: read up to the bound only, then judged
    async with server(b"x" * 100_000) as (port, _):
        ok, output, took = await timed(http(), target(port))
    assert not ok and output.startswith("not an HTTP answer: xxxx") and took < TIMEOUT


async def test_a_path_that_would_break_the_request_is_not_sent():
    async with server(b"HTTP/1.1 200 OK\r\n\r\n") as (port, requests):
        ok, output = await probe(http("/x HTTP/1.1\r\nEvil: 1"), target(port))
    assert not ok and output.startswith("the path '/x HTTP/1.1\\r\\nEvil: 1' has spaces")
    assert requests == []


async def test_closed_port_fails_for_tcp_and_http():
    port = closed_port()
    for check in (HealthCheck(type="tcp", port="web", timeout=TIMEOUT), http()):
        assert await probe(check, target(port)) == (False, f"{HOST}:{port}: connection refused")


async def test_a_reset_connection_fails():
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN

    listening = await asyncio.start_server(reset, HOST, 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        ok, output = await probe(http(), target(port))
    finally:
        listening.close()
    assert not ok and output in (
        f"{HOST}:{port}: connection reset by peer",
        "not an HTTP answer: nothing (connection closed)",
    ), output


async def test_tcp_open_port_passes():
    async with server(None) as (port, _):
        check = HealthCheck(type="tcp", port="web", timeout=TIMEOUT)
        assert await probe(check, target(port)) == (True, f"connected to {HOST}:{port}")


async def test_a_port_the_instance_lacks_fails_plainly():
    check = HealthCheck(type="tcp", port="admin", timeout=TIMEOUT)
    assert await probe(check, target(80)) == (False, "the instance has no port named 'admin'")


def sh(script: str, timeout: float = TIMEOUT) -> HealthCheck:
    return HealthCheck(type="exec", command="sh", args=["-c", script], timeout=timeout)


async def test_exec_passes_on_exit_0_with_the_instance_env_and_workdir(tmp_path):
    on = target(env={"GREETING": "hello"}, workdir=str(tmp_path))
    ok, output = await probe(sh('echo first; echo "$GREETING from $(pwd)"'), on)
    assert (ok, output) == (True, f"hello from {tmp_path}")


async def test_exec_fails_on_nonzero_exit_with_its_last_line(tmp_path):
    ok, output = await probe(sh("echo starting; echo 'not ready yet' >&2; exit 3"), target())
    assert (ok, output) == (False, "exit 3: not ready yet")
    ok, output = await probe(HealthCheck(type="exec", command="/no/such/ready"), target())
    assert not ok and output == "cannot run /no/such/ready: No such file or directory"
    ok, output = await probe(sh("true"), target(workdir=str(tmp_path / "gone")))
    assert not ok and output == f"cannot run sh ({tmp_path}/gone): No such file or directory"


async def test_exec_that_hangs_is_killed_with_its_process_group(tmp_path):
    pids = tmp_path / "pids"
    # a child in the background and the shell itself both hang
    script = f"sleep 30 & echo $! > {pids}; echo $$ >> {pids}; echo waiting; wait"
    ok, output, took = await timed(sh(script), target())
    assert (ok, output) == (False, "sh did not finish within 0.5s (killed); last output: waiting")
    assert TIMEOUT <= took < TIMEOUT + 1.0
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), f"{pid} outlived its check"


async def test_exec_output_is_one_bounded_line():
    ok, output = await probe(sh("printf 'a  b\\tc%.0s' $(seq 500); exit 1"), target())
    assert not ok and "\t" not in output and len(output) <= 200 and output.endswith("...")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _no_children_left():
    yield
    assert not [c for c in psutil.Process(os.getpid()).children() if _alive(c.pid)]
