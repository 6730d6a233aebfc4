"""Fixtures for the end-to-end tests."""

from __future__ import annotations

import pytest
from _cli import down, up

from colony.cli.local.ports import free_base_port


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
