"""Test helper: hosts in Linux network namespaces, on two switches joined by a cable.

`SplitNetwork` builds (as root, with iproute2's `ip`) a *hub* namespace
holding two bridges joined by a veth pair, the patch cable, and one
namespace per host with a veth into one of the bridges and an address in one
/24. `partition()` unplugs the cable inside the hub (the hosts themselves are
untouched: their links stay up, packets to the other side are just lost, as
on a real switch failure); `heal()` plugs it back. `move(host, side)` re-plugs
a host into the other switch, to choose who ends up on which side of a cut.

    net = SplitNetwork(["h1", "h2"], ["h3", "h4"])
    try:
        net.create()
        net.popen("h1", ["nats-server", ...], log_file)
        net.run("h1", ["colony", "members", "--server", "nats://10.77.7.1:4222"])
        net.partition()
    finally:
        net.destroy()  # kills every process in the namespaces, deletes them

`HostProcesses` keeps a test's named processes on those hosts (a routed
nats-server on each, then the services), each with its log file, and fails
fast if one of them exits.

Names carry the creating process's pid (namespaces ``colony-<pid>-<host>``),
so runs never collide, and a later run deletes what a killed run left
(`sweep_stale`). Every device is created inside the namespaces, none in the
root namespace.

Safety: the hosts have no route out of their /24, so their traffic stays
between them. But the root namespace does not know the /24: traffic sent
there from the test process itself would leave the machine. Never talk to a
host's address from outside; run the client inside a host (`run`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from colony.harness import probe
from colony.harness.processes import wait_for
from colony.shared import natsd

PREFIX = "colony-"
"""Every namespace made here is named colony-<pid>-<name>."""
IFNAMSIZ = 15
"""Longest Linux interface name."""

_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has the command and what it said."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise NetnsError (with its stderr) if it fails and `check`."""
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can.

    Checks root, `ip`, and that a namespace with a bridge and a veth pair can
    really be made (a container may refuse), then deletes it.
    """
    if os.geteuid() != 0:
        return "needs root (to create network namespaces)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    trial = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", trial)
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return f"`ip netns add` does not work here: {e}"
    try:
        ip("-n", trial, "link", "add", "probe-br", "type", "bridge")
        ip("-n", trial, "link", "add", "probe-a", "type", "veth", "peer", "name", "probe-b")
    except NetnsError as e:
        return f"bridges or veth pairs cannot be made in a namespace here: {e}"
    finally:
        ip("netns", "del", trial, check=False)
    return None


def namespaces() -> list[str]:
    """Names of every network namespace `ip netns` knows."""
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    """Processes running in `namespace`."""
    listed = ip("netns", "pids", namespace, check=False).stdout.split()
    return [int(pid) for pid in listed if pid.isdigit()]


def delete(namespace: str, timeout: float = 10.0) -> None:
    """Kill every process in `namespace` (SIGKILL), then delete it."""
    deadline = time.monotonic() + timeout
    while pids := pids_in(namespace):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {namespace} survive SIGKILL")
        time.sleep(0.05)
    ip("netns", "del", namespace)


def sweep_stale() -> list[str]:
    """Delete the namespaces of runs whose process is gone (a killed test run); name them."""
    swept = []
    for name in namespaces():
        owner = _OWNED.match(name)
        if owner and not _alive(int(owner.group(1))):
            delete(name)
            swept.append(name)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Host:
    name: str
    """As the test calls it (h1)."""
    namespace: str
    address: str
    """Its IPv4 address (10.77.7.1)."""
    side: str
    """Which switch it hangs off: "a" or "b"."""


class SplitNetwork:
    """Hosts on two switches (sides a and b) joined by a patch cable that can be cut."""

    def __init__(
        self, side_a: Sequence[str], side_b: Sequence[str], subnet: str = "10.77.7"
    ) -> None:
        names = [*side_a, *side_b]
        if len(set(names)) != len(names) or not 0 < len(names) < 255:
            raise ValueError(f"host names must be distinct, 1-254 of them: {names}")
        tag = str(os.getpid())
        self.hub = f"{PREFIX}{tag}-hub"
        self.hosts = {
            name: Host(name, f"{PREFIX}{tag}-{name}", f"{subnet}.{i + 1}", side)
            for i, (name, side) in enumerate(
                [(n, "a") for n in side_a] + [(n, "b") for n in side_b]
            )
        }
        self.bridges = {"a": _ifname(f"bra{tag}"), "b": _ifname(f"brb{tag}")}
        self.patch = (_ifname(f"pa{tag}"), _ifname(f"pb{tag}"))
        """The cable's two ends, in bridges a and b."""
        self._links = {name: (_ifname(f"v{tag}{name}"), _ifname(f"e{tag}{name}")) for name in names}
        """Each host's veth: (hub end, host end)."""
        self.processes: list[subprocess.Popen[bytes]] = []
        self._made: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [self.hub, *(h.namespace for h in self.hosts.values())]

    def side(self, side: str) -> list[str]:
        """Names of the hosts on switch `side` ("a" or "b")."""
        return [h.name for h in self.hosts.values() if h.side == side]

    # --- building and tearing down ---------------------------------------------------

    def create(self) -> SplitNetwork:
        """Make the namespaces, switches, cable and links; on failure, undo it all."""
        sweep_stale()
        try:
            for namespace in self.namespaces:
                ip("netns", "add", namespace)
                self._made.append(namespace)
                ip("-n", namespace, "link", "set", "lo", "up")
            hub = ("-n", self.hub)
            for bridge in self.bridges.values():
                # A bridge without STP (the default) forwards on a port as soon as it is up.
                ip(*hub, "link", "add", bridge, "type", "bridge")
                ip(*hub, "link", "set", bridge, "up")
            end_a, end_b = self.patch
            ip(*hub, "link", "add", end_a, "type", "veth", "peer", "name", end_b)
            for end, side in ((end_a, "a"), (end_b, "b")):
                ip(*hub, "link", "set", end, "master", self.bridges[side], "up")
            for host in self.hosts.values():
                outer, inner = self._links[host.name]
                ip(*hub, "link", "add", outer, "type", "veth", "peer", "name", inner,
                   "netns", host.namespace)  # fmt: skip
                ip(*hub, "link", "set", outer, "master", self.bridges[host.side], "up")
                there = ("-n", host.namespace)
                ip(*there, "addr", "add", f"{host.address}/24", "dev", inner)
                ip(*there, "link", "set", inner, "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Kill every process started here or still in a namespace, delete the namespaces.

        Tries everything before raising the first failure.
        """
        failures: list[BaseException] = []
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired as e:
                failures.append(e)
        for namespace in reversed(self._made):
            try:
                delete(namespace)
            except NetnsError as e:
                failures.append(e)
        self._made.clear()
        if failures:
            raise failures[0]

    # --- the cable -------------------------------------------------------------------

    def partition(self) -> None:
        """Unplug the cable: side a and side b no longer hear each other."""
        ip("-n", self.hub, "link", "set", self.patch[0], "down")

    def heal(self) -> None:
        """Plug the cable back in."""
        ip("-n", self.hub, "link", "set", self.patch[0], "up")

    def move(self, host: str, side: str) -> None:
        """Re-plug `host`'s link into switch `side` ("a" or "b"), to choose who is cut off.

        Only the hub end moves (the host's link stays up); with the cable in, the
        host hears everyone throughout, give or take the frames of the moment it
        takes the switches to learn where it now is. `side(...)` follows.
        """
        if side not in self.bridges:
            raise ValueError(f"no side {side!r}: a or b")
        outer, _inner = self._links[host]
        ip("-n", self.hub, "link", "set", outer, "master", self.bridges[side])
        self.hosts[host] = replace(self.hosts[host], side=side)

    # --- running things on a host ----------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def popen(self, host: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host` (its own process group, output to `log`); `destroy` kills it.

        `ip netns exec` execs the command itself, so the process is the command.
        """
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self.argv(host, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, host: str, argv: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `host` to completion; its output, whatever its exit code."""
        return subprocess.run(
            self.argv(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def port_open(self, host: str, address: str, port: int) -> bool:
        """Does a TCP connect from inside `host` to address:port succeed?"""
        argv = [*probe.ARGV, "connect", address, str(port)]
        return self.run(host, argv, timeout=10).returncode == 0


class HostProcesses:
    """Named processes on a network's hosts, each logging to ``workdir/<host>/<what>.log``.

    The shape shared by the partition tests: a nats-server on every host, routed to
    all the others (`start_nats`), then whatever runs on top of it (`spawn`).
    `check_running` fails at once, with its last words, if any of them has exited.
    Stopping is the network's: `SplitNetwork.destroy` kills each process's group.
    """

    def __init__(self, net: SplitNetwork, workdir: Path, ports: natsd.ServerPorts) -> None:
        self.net = net
        self.workdir = workdir
        self.ports = ports
        """The same on every host: each has its own network namespace."""
        self.processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        """(host, what) -> the process: nats, and what `spawn` started."""

    def url(self, host: str) -> str:
        return f"nats://{self.net.hosts[host].address}:{self.ports.client}"

    def log(self, host: str, what: str) -> Path:
        return self.workdir / host / f"{what}.log"

    def spawn(self, host: str, argv: Sequence[str], what: str) -> subprocess.Popen[bytes]:
        """Start `argv` inside `host`, logging to `log(host, what)`; `check_running` watches it."""
        self.processes[host, what] = self.net.popen(host, argv, self.log(host, what))
        return self.processes[host, what]

    def start_nats(self, route_ping_interval: float, timeout: float = 20) -> None:
        """A nats-server on every host (its config in ``workdir/<host>``), routed to all of them."""
        for host in self.net.hosts:
            here = self.workdir / host
            here.mkdir(parents=True)
            server = self.server(host, here / "jetstream", route_ping_interval)
            (here / "nats.conf").write_text(server.render())
            self.spawn(host, [natsd.binary(), "-c", str(here / "nats.conf")], "nats")
        self.await_servers(timeout)

    def server(self, host: str, store: Path, route_ping_interval: float) -> natsd.ServerConfig:
        """`host`'s nats-server: on its address, routed to every host's."""
        routes: list[int | str] = [
            f"{h.address}:{self.ports.cluster}" for h in self.net.hosts.values()
        ]
        return natsd.ServerConfig(
            host,
            self.ports,
            store,
            routes=routes,
            host=self.net.hosts[host].address,
            route_ping_interval=route_ping_interval,
        )

    def await_servers(self, timeout: float = 20) -> None:
        """Until every host's nats-server accepts clients."""
        for host in self.net.hosts:
            wait_for(
                lambda h=host: self._serving(h), timeout, f"{host}'s nats-server to accept clients"
            )

    def _serving(self, host: str) -> bool:
        self.check_running()
        return self.net.port_open(host, self.net.hosts[host].address, self.ports.client)

    def check_running(self) -> None:
        """Fail at once, with its last words, if any process started here has exited."""
        for (host, what), process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(host, what).read_text(errors="replace").splitlines()[-5:]
                raise AssertionError(
                    f"{host}'s {what} exited with {process.returncode}:\n" + "\n".join(tail)
                )


def _ifname(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name
