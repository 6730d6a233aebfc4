"""An instance's output files, rotated by size, read by offset.

The workload writes straight into ``<stream>.log`` (opened O_APPEND, so it needs no
one in between and keeps writing while the agent restarts). Rotation copies the file
to ``<stream>.log.1`` (older ones shift to .2, .3 ... up to `keep`) and truncates it:
the workload's next write lands at the start again. Bytes it writes between the copy
and the truncation are lost (a few, at most, per rotation), the price of never
standing between a workload and its output.

Offsets count every byte ever written to the stream: ``<stream>.base`` holds how many
bytes were rotated out of the live file, so an offset stays valid across rotations
and agent restarts (older output than the oldest kept file is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from colony.bootstrapper.agent.drivers.base import LogChunk, Stream


class LogFiles:
    def __init__(self, folder: Path | str, stream: Stream, max_bytes: int, keep: int) -> None:
        self.folder = Path(folder)
        self.live = self.folder / f"{stream}.log"
        self.base_file = self.folder / f"{stream}.base"
        self.max_bytes = max_bytes
        self.keep = keep

    def open_for_writer(self) -> int:
        """A file descriptor the workload writes to (append mode)."""
        return os.open(self.live, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def base(self) -> int:
        """Bytes rotated out of the live file so far."""
        try:
            return int(self.base_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def end(self) -> int:
        """The stream offset its next byte will have (every byte written so far)."""
        try:
            return self.base() + self.live.stat().st_size
        except FileNotFoundError:
            return self.base()

    def last_line(self, since: int = 0, max_chars: int = 200) -> str:
        """The last non-blank line written from offset `since` on ('' : none), stripped
        and trimmed to `max_chars`: what a workload that failed said last."""
        end = self.end()
        window = 4096
        chunk = self.read(max(since, end - window), window)
        for line in reversed(chunk.data.decode("utf-8", "replace").splitlines()):
            line = line.strip()
            if line:
                return line if len(line) <= max_chars else line[: max_chars - 1] + "…"
        return ""

    def rotated(self, n: int) -> Path:
        return self.folder / f"{self.live.name}.{n}"

    def rotate_if_large(self) -> bool:
        """Rotate once the live file is larger than `max_bytes`; True if it did."""
        try:
            size = self.live.stat().st_size
        except FileNotFoundError:
            return False
        if size <= self.max_bytes:
            return False
        oldest = self.rotated(self.keep)
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                self.rotated(n).replace(self.rotated(n + 1))
        target = self.rotated(1) if self.keep else None
        with open(self.live, "r+b") as live:
            if target is not None:
                with open(target, "wb") as out:
                    shutil.copyfileobj(live, out)
                    copied = out.tell()
            else:
                copied = live.seek(0, os.SEEK_END)
            live.truncate(0)
        # record the new base last: a crash before it only makes old offsets read a bit late
        tmp = self.base_file.with_suffix(".tmp")
        tmp.write_text(str(self.base() + copied))
        tmp.replace(self.base_file)
        return True

    def read(self, offset: int, max_bytes: int) -> LogChunk:
        """Up to `max_bytes` from `offset` of the whole stream (-1: the last `max_bytes`)."""
        # the kept files, oldest first, with the stream offset each one starts at
        files: list[tuple[int, Path]] = []
        end = self.base()
        for n in range(1, self.keep + 1):
            path = self.rotated(n)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                break
            end -= size
            files.insert(0, (end, path))
        first = end
        files.append((self.base(), self.live))
        total = self.end()
        if offset < 0:
            offset = max(total - max_bytes, first)
        offset = min(max(offset, first), total)
        data = bytearray()
        for start, path in files:
            if len(data) >= max_bytes:
                break
            want = offset + len(data)
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    if want >= start + size:
                        continue
                    f.seek(max(want - start, 0))
                    data += f.read(max_bytes - len(data))
            except FileNotFoundError:
                continue  # rotated away while reading: the next read starts later
        return LogChunk(bytes(data), offset, offset + len(data))
