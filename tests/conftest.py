"""Fixtures: real nats-servers on free ports, stopped whatever happens.

- `nats_server`: one standalone server with JetStream, per test (cheap).
- `nats_cluster`: a routed 3-server JetStream cluster, per module (it takes
  a moment to elect a meta leader); `cluster_bus` connects to it and deletes
  every stream after each test, so tests sharing it start clean.
"""

from __future__ import annotations

import contextlib

import pytest

from colony.harness.processes import NatsCluster, NatsServer
from colony.shared import bus as busmod
from colony.shared.config import NatsSettings


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer.standalone(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster"), size=3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def bus(nats_server):
    """A client of `nats_server`."""
    client = await busmod.connect(NatsSettings(servers=[nats_server.url]), "test")
    yield client
    await client.close()


@pytest.fixture
async def cluster_bus(nats_cluster):
    """A client of `nats_cluster`; every stream is deleted after the test."""
    client = await busmod.connect(NatsSettings(servers=nats_cluster.urls), "test")
    yield client
    for name in await client.js.streams_info():
        with contextlib.suppress(Exception):
            await client.js.delete_stream(name.config.name)
    await client.close()
