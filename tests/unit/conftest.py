"""Fixtures for every unit test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def keep_umask():
    """The CLI's main() sets the umask for the cluster's files: give the tests theirs back."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)
