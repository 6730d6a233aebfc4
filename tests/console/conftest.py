"""Console tests: times of day show in UTC whatever the machine's zone (snapshots)."""

from __future__ import annotations

import os
import time

import pytest


@pytest.fixture(autouse=True)
def utc():
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()
