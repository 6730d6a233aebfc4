"""The sim driver: runs nothing, reports running at once (for benchmarks only).

It lets a benchmark place thousands of instances on a few real nodes and measure
scheduling, reporting and the change stream, not process creation. An instance
"runs" until it is stopped; after an agent restart it is adopted as still running.
"""

from __future__ import annotations

import asyncio
import time

from colony.bootstrapper.agent.drivers.base import (
    Capabilities,
    Exit,
    Handle,
    Inspection,
    InstanceSpec,
    LogChunk,
    Stats,
    Stream,
)


class SimDriver:
    def __init__(self) -> None:
        self.capabilities = Capabilities(
            name="sim", isolation="none: it runs nothing", limits=(), runs=False
        )
        self._stopped: dict[str, asyncio.Future[Exit]] = {}

    def _future(self, handle: Handle) -> asyncio.Future[Exit]:
        if handle.id not in self._stopped:
            self._stopped[handle.id] = asyncio.get_running_loop().create_future()
        return self._stopped[handle.id]

    async def start(self, spec: InstanceSpec) -> Handle:
        handle = Handle(driver="sim", id=spec.id, dir=spec.dir, started_at=time.time())
        self._future(handle)
        return handle

    async def end_leftovers(self, id: str, dir: str) -> bool:
        return False  # it runs nothing

    async def wait(self, handle: Handle) -> Exit:
        return await asyncio.shield(self._future(handle))

    async def stop(self, handle: Handle, grace: float) -> Exit:
        stopped = self._future(handle)
        if not stopped.done():
            stopped.set_result(Exit(0, "stopped (simulated)", time.time()))
        return stopped.result()

    def inspect(self, handle: Handle) -> Inspection:
        stopped = self._future(handle)
        if stopped.done():
            return Inspection("exited", stopped.result().reason, stopped.result())
        return Inspection("running", "simulated: nothing runs")

    def adopt(self, handle: Handle) -> bool:
        return not self._future(handle).done()

    def logs(self, handle: Handle, stream: Stream, offset: int, max_bytes: int) -> LogChunk:
        return LogChunk(b"", 0, 0)

    def stats(self, handle: Handle) -> Stats:
        return Stats()

    def forget(self, handle: Handle) -> None:
        self._stopped.pop(handle.id, None)

    async def close(self) -> None:
        self._stopped.clear()
