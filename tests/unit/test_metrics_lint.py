"""The promtool-equivalent check (colony.harness.promlint), and the node's whole
exposition (monitor, consensus and membership families) passing it."""

from __future__ import annotations

import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from colony.consensus.metrics import ConsensusMetrics
from colony.harness.promlint import lint, promtool
from colony.membership.metrics import MembershipMetrics
from colony.membership.state import Membership
from colony.monitor.figures import ServiceFigures
from colony.monitor.prometheus import Families, NodeCollector
from colony.monitor.state import Samples
from colony.shared.config import NodeSettings
from colony.shared.messages import (
    ConsensusStatus,
    HostMetrics,
    LeaseView,
    MemberUpdate,
    NodeMeta,
    ProcessUsage,
    Resources,
    VoterView,
)
from colony.shared.metrics import Histogram

GOOD = """\
# HELP colony_thing_seconds How long a thing takes
# TYPE colony_thing_seconds histogram
colony_thing_seconds_bucket{op="a",le="0.1"} 1
colony_thing_seconds_bucket{op="a",le="+Inf"} 3
colony_thing_seconds_count{op="a"} 3
colony_thing_seconds_sum{op="a"} 0.7
# HELP colony_things_total Things done
# TYPE colony_things_total counter
colony_things_total{kind="x"} 4
# HELP colony_queue_length Things waiting, escaped "label" values are fine
# TYPE colony_queue_length gauge
colony_queue_length{name="a \\"quoted\\", name"} 2
"""


def test_a_clean_exposition_has_no_problems():
    assert lint(GOOD) == []


def family(name: str, kind: str, *samples: str, help: str = "Some help") -> str:
    head = f"# HELP {name} {help}\n" if help else ""
    return head + f"# TYPE {name} {kind}\n" + "".join(f"{s}\n" for s in samples)


def gauge(name: str, *samples: str) -> str:
    return family(name, "gauge", *samples)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # what promtool flagged on the monitor's endpoint
        (
            family("colony_host_cpu_count", "gauge", "colony_host_cpu_count 4"),
            'colony_host_cpu_count non-histogram and non-summary metrics should not have "_count"',
        ),
        (gauge("colony_a_sum", "colony_a_sum 1"), 'should not have "_sum" suffix'),
        (gauge("colony_a_bucket", "colony_a_bucket 1"), 'not have "_bucket" suffix'),
        (gauge("colony_a_total", "colony_a_total 1"), "non-counter metrics should not have"),
        (family("colony_a", "counter", "colony_a 1"), 'counter metrics should have "_total"'),
        (family("colony_a_total", "counter", "colony_a_total 1", help=""), "a_total no help text"),
        (gauge("colony_up_gauge", "colony_up_gauge 1"), "should not include type 'gauge'"),
        (gauge("colony_wait_ms", "colony_wait_ms 1"), "should not contain abbreviated units"),
        (
            gauge("colony_wait_milliseconds", "colony_wait_milliseconds 1"),
            'use base unit "seconds" instead of "milliseconds"',
        ),
        (gauge("colony_a:b", "colony_a:b 1"), "metric names should not contain ':'"),
        (gauge("colony_aB", "colony_aB 1"), "'snake_case' not 'camelCase'"),
        (gauge("colony_a", 'colony_a{someLabel="x"} 1'), "label names should be written"),
        (gauge("colony_a", 'colony_a{le="1"} 1'), 'non-histogram metrics should not have "le"'),
        (gauge("colony_a", 'colony_a{quantile="1"} 1'), 'should not have "quantile" label'),
        (gauge("colony_a", 'colony_a{__x="1"} 1'), "is reserved"),
        (gauge("colony_a", "colony_a 1", "colony_a 2"), "metric not unique"),
        (gauge("colony_a", "colony_a 1") * 2, "second HELP line"),
        (gauge("colony_a", "colony_a 1") + "# TYPE colony_a gauge\n", "second TYPE"),
        (
            gauge("colony_a", "colony_a 1") + gauge("colony_c", "colony_c 1") + "colony_a 2\n",
            "family not unique",
        ),
        (gauge("colony_a", "colony_a{x=1} 1"), "bad labels"),
        (gauge("colony_a", "colony_a one"), "bad value"),
        (gauge("colony_a", "colony_a 1") + "# TYPE colony_c gaug\n", "unknown type"),
        (
            family(
                "colony_h", "histogram",
                'colony_h_bucket{le="1"} 1', "colony_h_count 1", "colony_h_sum 1",
            ),
            "no +Inf bucket",
        ),
        (
            family(
                "colony_h", "histogram",
                'colony_h_bucket{le="1"} 3', 'colony_h_bucket{le="+Inf"} 2',
                "colony_h_count 2", "colony_h_sum 1",
            ),
            "buckets are not cumulative",
        ),
        (
            family(
                "colony_h", "histogram",
                'colony_h_bucket{le="2"} 1', 'colony_h_bucket{le="1"} 1',
                'colony_h_bucket{le="+Inf"} 2', "colony_h_count 2", "colony_h_sum 1",
            ),
            "bounds do not increase",
        ),
        (
            family(
                "colony_h", "histogram", 'colony_h_bucket{le="+Inf"} 2', "colony_h_count 3",
                "colony_h_sum 1",
            ),
            "_count differs from its +Inf bucket",
        ),
        (
            family("colony_h", "histogram", 'colony_h_bucket{le="+Inf"} 2', "colony_h_count 2"),
            "needs one _count and one _sum",
        ),
    ],
)  # fmt: skip
def test_each_rule(text, problem):
    found = [str(p) for p in lint(text)]
    assert any(problem in p for p in found), found


def test_the_lint_says_what_promtool_says():
    """promtool's linter and ours agree, word for word, on what both check."""
    text = (
        family("colony_host_cpu_count", "gauge", "colony_host_cpu_count 4")
        + family("colony_a", "counter", "colony_a 1", help="")
        + family("colony_x_total", "gauge", "colony_x_total 1")
        + family("colony_wait_milliseconds", "gauge", "colony_wait_milliseconds 1")
        + family("colony_c", "gauge", 'colony_c{le="1"} 1')
        + family("colony_ok_bytes", "gauge", "colony_ok_bytes 1")
    )
    ours = {str(p) for p in lint(text)}
    assert len(ours) == 6
    theirs = promtool(text)
    if theirs is None:
        pytest.skip("promtool is not installed (apt-get install prometheus has it)")
    assert set(theirs) == ours


def test_a_histogram_counts_each_observation_in_its_bucket_and_adds_up():
    h = Histogram("colony_x_apply_seconds", "Apply time", (0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.005, 0.05, 3.0):
        h.observe(seconds)
    [s] = h.family().samples
    assert [(b.le, b.count) for b in s.buckets] == [(0.001, 2), (0.01, 3), (0.1, 4)]
    assert s.count == 5 and s.sum == pytest.approx(3.0565)


# --- the node's whole exposition ------------------------------------------------------

HOST = HostMetrics(8, 25.0, (1.0, 0.5, 0.25), 16 * 2**30, 8 * 2**30, "/", 2**40, 2**39, 300)


def node_exposition() -> str:
    """What one scrape of a node's endpoint shows: the monitor's own figures, and the
    consensus (a leader with a follower) and membership families as the monitor serves them."""
    sample = Samples(1).add(
        node=NodeSettings(id="node-1"),
        now=1000.0,
        interval=1.0,
        node_started=900.0,
        host=HOST,
        processes=[ProcessUsage("consensus", 10, 2**26, 3.0)],
        capacity=Resources(2.0, 2**32),
        nats_url="nats://127.0.0.1:4222",
        metrics_url="http://127.0.0.1:9222/metrics",
    )
    consensus = ConsensusMetrics()
    consensus.apply_seconds.observe(0.0003)
    status = ConsensusStatus(
        node="node-1", role="leader", leader="node-1", term=3, commit_index=40,
        applied_index=40, has_quorum=True,
        voters=[VoterView("node-1", True, 40), VoterView("node-2", True, 38, 2)],
        manager=LeaseView("manager", "node-1", 2, 1.0, 5.0, 0.2), acting=True,
    )  # fmt: skip
    core = Membership("node-1", NodeMeta(), 0.0, random.Random(1))
    core.gossip_received(0.0, "node-2", [MemberUpdate("node-2", "alive", 0)])
    figures = ServiceFigures(bus=None, node="node-1", log=None)  # only its checks are used
    served = [
        *figures._checked("consensus", consensus.families(status))[0],
        *figures._checked("membership", MembershipMetrics().families(core))[0],
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(lambda: sample))
    registry.register(Families(served))
    return generate_latest(registry).decode()


def test_the_node_exposition_passes_the_lint_and_promtool():
    text = node_exposition()
    assert "colony_host_cpu_cores" in text and "colony_host_cpu_count" not in text
    assert 'colony_consensus_follower_lag_entries{follower="node-2",node="node-1"} 2.0' in text
    assert 'colony_consensus_apply_seconds_bucket{le="0.0005",node="node-1"} 1.0' in text
    assert 'colony_membership_members{node="node-1",status="alive"} 2.0' in text
    assert lint(text) == []
    said = promtool(text)
    if said is None:
        pytest.skip("promtool is not installed (apt-get install prometheus has it)")
    assert said == []
