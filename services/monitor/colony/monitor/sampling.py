"""Reading the host and the node's own processes with psutil (the I/O side)."""

from __future__ import annotations

import os

import psutil

from colony.shared.messages import HostMetrics, ProcessUsage
from colony.shared.statedir import NodeDir


def read_host(disk_path: str) -> HostMetrics:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    return HostMetrics(
        cpu_count=psutil.cpu_count() or 1,
        cpu_percent=psutil.cpu_percent(interval=None),
        load=tuple(round(x, 2) for x in os.getloadavg()),
        memory_total=memory.total,
        memory_available=memory.available,
        disk_path=disk_path,
        disk_total=disk.total,
        disk_free=disk.free,
        process_count=len(psutil.pids()),
    )


class NodeProcesses:
    """The node's recorded processes, measured between two calls for cpu percent."""

    def __init__(self, node_dir: NodeDir) -> None:
        self.node_dir = node_dir
        self._seen: dict[tuple[int, float], psutil.Process] = {}

    def read(self) -> list[ProcessUsage]:
        usage = []
        current = {}
        for record in self.node_dir.records():
            key = (record.pid, record.started)
            process = self._seen.get(key)
            try:
                if process is None:
                    process = psutil.Process(record.pid)
                    if process.create_time() != record.started:
                        continue  # a stale record: the pid now belongs to someone else
                    process.cpu_percent(None)  # starts the measurement; reads 0 the first time
                with process.oneshot():
                    usage.append(
                        ProcessUsage(
                            name=record.name,
                            pid=record.pid,
                            rss=process.memory_info().rss,
                            cpu_percent=round(process.cpu_percent(None), 1),
                        )
                    )
                current[key] = process
            except psutil.Error:
                continue  # it exited between the listing and the reading
        self._seen = current
        return usage
