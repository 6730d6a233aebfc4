"""A program run in a pseudo-terminal of a fixed size, as a person runs it in theirs: for
the tests of full-screen programs (`colony console`), which need a terminal to draw on
and read keys from."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Sequence


class Terminal:
    """`argv` started on a pseudo-terminal of `size` (columns, rows); what it writes is
    kept in `output` (escape sequences and all) as it is read."""

    def __init__(self, argv: Sequence[str], size: tuple[int, int] = (120, 40)) -> None:
        self.argv = list(argv)
        self.size = size
        self.output = b""
        self.process: subprocess.Popen[bytes] | None = None
        self._fd = -1

    def start(self) -> Terminal:
        master, slave = pty.openpty()
        columns, rows = self.size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
        try:
            self.process = subprocess.Popen(
                self.argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
            )
        finally:
            os.close(slave)
        self._fd = master
        return self

    def _read(self, wait: float) -> bool:
        """Read what is there (waiting up to `wait` s for something); False once the
        program has closed the terminal."""
        ready, _, _ = select.select([self._fd], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self._fd, 65536)
        except OSError:  # EIO: every end of the terminal's other side is closed
            return False
        self.output += chunk
        return bool(chunk)

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def read_until(self, *wanted: str, timeout: float) -> str:
        """Read until every one of `wanted` has been written (each unbroken by escape
        sequences: a word drawn in one style); AssertionError after `timeout` or if the
        program ends first, with the end of what it wrote."""
        deadline = time.monotonic() + timeout
        while not all(w in self.text() for w in wanted):
            if time.monotonic() > deadline or not self._read(0.2):
                missing = [w for w in wanted if w not in self.text()]
                raise AssertionError(
                    f"{missing} not written within {timeout:g} s; the last it wrote: "
                    f"{self.text()[-2000:]!r}"
                )
        return self.text()

    def press(self, keys: str) -> None:
        os.write(self._fd, keys.encode())

    def wait(self, timeout: float) -> int:
        """Its exit code, reading what it writes meanwhile (a full pty would block it);
        AssertionError if it is still running after `timeout`."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.argv} still running after {timeout:g} s")
            if not self._read(0.1):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(max(0.0, deadline - time.monotonic()))
        return self.process.returncode

    def close(self) -> None:
        """Kill it if it still runs (its whole session), and close the terminal."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Terminal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
