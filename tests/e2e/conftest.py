"""Fixtures for the end-to-end tests."""

from __future__ import annotations

import pytest
from _cli import down, up

from colony.cli.local.ports import free_base_port
from colony.harness import netns


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running 3-node cluster shared by the module's tests; stopped whatever happens.
    Yields (state dir, base port)."""
    state = tmp_path_factory.mktemp("colony") / "state"
    base = free_base_port(3)
    up(state, base)
    try:
        yield state, base
    finally:
        down(state)


@pytest.fixture
def split_network():
    """Makes `netns.SplitNetwork(side_a, side_b)` (skipping the test where network
    namespaces are unavailable) and destroys it after the test: every process in its
    namespaces, instances too, then the namespaces."""
    made = []

    def make(side_a, side_b):
        reason = netns.unavailable()
        if reason:
            pytest.skip(f"the partition test needs network namespaces: {reason}")
        made.append(netns.SplitNetwork(side_a, side_b).create())  # undoes itself if it fails
        return made[-1]

    yield make
    for net in made:
        net.destroy()
