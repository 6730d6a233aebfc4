"""Running one health check against one instance: tcp, http, exec (the I/O side).

`probe` never raises and never takes much longer than the check's `timeout`: a refused
or reset connection, a server that accepts and never answers, one that answers garbage,
an exec that hangs (its whole process group is killed) are each a failure with a
one-line output saying what happened, where.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal

from colony.shared.jobspec import HealthCheck
from colony.shared.messages import CheckTarget

MAX_ANSWER = 4096
"""Bytes of an HTTP answer read at most: its status line must be in them."""
MAX_OUTPUT = 200
"""Characters of a check's output kept (it travels into the change log)."""
EXEC_TAIL = 4096
"""Bytes of an exec check's output kept while it runs (its last line is the output)."""
STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: [^\r\n]*)?\r?\n")


async def probe(check: HealthCheck, target: CheckTarget) -> tuple[bool, str]:
    """Run `check` once against `target`: whether it passed, and a one-line output."""
    try:
        if check.type == "exec":
            ok, output = await _exec(check, target)
        else:
            port = target.ports.get(check.port)
            if port is None:
                return False, f"the instance has no port named {check.port!r}"
            async with asyncio.timeout(check.timeout):
                if check.type == "tcp":
                    ok, output = await _tcp(target.host, port)
                else:
                    ok, output = await _http(check, target.host, port)
    except TimeoutError:
        ok, output = False, f"no answer from {_where(check, target)} within {check.timeout:g}s"
    except OSError as e:
        # asyncio's connect errors carry no words of the errno's own: use them
        said = os.strerror(e.errno).lower() if e.errno else str(e)
        ok, output = False, f"{_where(check, target)}: {said}"
    except Exception as e:  # a bug here must not end the check's schedule: a failure
        ok, output = False, f"{_where(check, target)}: check failed: {type(e).__name__}: {e}"
    return ok, one_line(output)


def _where(check: HealthCheck, target: CheckTarget) -> str:
    if check.type == "exec":
        return check.command
    return f"{target.host}:{target.ports.get(check.port, 0)}"


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_OUTPUT else text[: MAX_OUTPUT - 3] + "..."


async def _tcp(host: str, port: int) -> tuple[bool, str]:
    _reader, writer = await asyncio.open_connection(host, port)
    await _close(writer)
    return True, f"connected to {host}:{port}"


async def _http(check: HealthCheck, host: str, port: int) -> tuple[bool, str]:
    if not check.path.isprintable() or " " in check.path:
        # sent as it is, it would split the request line or add headers
        return False, f"the path {check.path!r} has spaces or control characters"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {check.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: colony-monitor\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = b""
        while b"\n" not in answer and len(answer) < MAX_ANSWER:
            chunk = await reader.read(MAX_ANSWER - len(answer))
            if not chunk:
                break
            answer += chunk
    finally:
        await _close(writer)
    matched = STATUS_LINE.match(answer)
    if matched is None:
        said = repr(answer[:60])[2:-1] if answer else "nothing (connection closed)"
        return False, f"not an HTTP answer: {said}"
    status = int(matched.group(1))
    line = matched.group(0).decode("latin-1").strip()
    if status != check.status:
        return False, f"{line} (expected {check.status})"
    return True, line


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _exec(check: HealthCheck, target: CheckTarget) -> tuple[bool, str]:
    env = dict(target.env)
    env.setdefault("PATH", os.defpath)  # the command is looked up as the instance's would be
    try:
        process = await asyncio.create_subprocess_exec(
            check.command,
            *check.args,
            env=env,
            cwd=target.workdir or None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as e:  # no such command, not executable, no such workdir
        where = f" ({e.filename})" if e.filename and e.filename != check.command else ""
        return False, f"cannot run {check.command}{where}: {e.strerror or e}"
    tail = b""

    async def read() -> None:
        nonlocal tail
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            tail = (tail + chunk)[-EXEC_TAIL:]

    try:
        async with asyncio.timeout(check.timeout):
            await asyncio.gather(read(), process.wait())
    except TimeoutError:
        if process.returncode is None:
            last = _last_line(tail)
            said = f"; last output: {last}" if last else ""
            return False, f"{check.command} did not finish within {check.timeout:g}s (killed){said}"
        # it exited; something it started in the background still held its output open
    finally:
        # what it left behind (or all of it, on timeout) ends with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.returncode is None:
            await process.wait()
    code = process.returncode
    last = _last_line(tail)
    if code == 0:
        return True, last or "exit 0"
    ended = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return False, f"{ended}: {last}" if last else ended


def _last_line(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
