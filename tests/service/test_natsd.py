"""The rendered nats-server config: what it says, and that nats-server accepts it (`-t`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from colony.shared import natsd

PORTS = natsd.ServerPorts(4222, 6222, 8222)


def accepted(config: natsd.ServerConfig, tmp_path: Path) -> bool:
    """Does nats-server itself accept the rendered config (`-t`: test it and exit)?"""
    conf = tmp_path / "nats.conf"
    conf.write_text(config.render())
    done = subprocess.run([natsd.binary(), "-t", "-c", str(conf)], capture_output=True, text=True)
    return done.returncode == 0


def test_routes_on_other_hosts_with_fast_route_pings(tmp_path):
    config = natsd.ServerConfig(
        "h1",
        PORTS,
        tmp_path / "js",
        routes=["10.77.7.1:6222", "10.77.7.2:6222"],
        host="10.77.7.1",
        route_ping_interval=0.5,
    )
    text = config.render()
    assert "listen: 10.77.7.1:4222" in text
    assert "routes: [nats://10.77.7.1:6222, nats://10.77.7.2:6222]" in text
    assert 'ping_interval: "500ms", ping_max: 2' in text
    assert accepted(config, tmp_path)


def test_local_routes_by_port_and_default_pings(tmp_path):
    config = natsd.ServerConfig("s1", PORTS, tmp_path / "js", routes=[6222, 6223])
    text = config.render()
    assert "routes: [nats://127.0.0.1:6222, nats://127.0.0.1:6223]" in text
    assert "ping_interval" not in text
    assert accepted(config, tmp_path)
