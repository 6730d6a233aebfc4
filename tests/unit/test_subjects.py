"""Subjects: built in one place, one checked token per id, typed end to end."""

import pytest

from colony.shared import subjects
from colony.shared.messages import LatestMetricsRequest, NodeMetrics
from colony.shared.subjects import ANY, SubjectError, token


def test_node_metrics_subject_carries_its_payload_type():
    subject = subjects.node_metrics("node-1")
    assert subject.name == "colony.monitor.metrics.node-1"
    assert str(subject) == subject.name
    assert subject.payload is NodeMetrics


def test_node_metrics_accepts_the_wildcard_to_hear_every_node():
    assert subjects.node_metrics(ANY).name == "colony.monitor.metrics.*"


def test_latest_metrics_carries_request_and_reply_types():
    subject = subjects.latest_metrics("n1")
    assert subject.name == "colony.monitor.latest.n1"
    assert str(subject) == subject.name
    assert subject.payload is LatestMetricsRequest
    assert subject.reply is NodeMetrics


def test_latest_metrics_refuses_the_wildcard():
    # a request goes to one monitor: a wildcard would ask them all at once
    with pytest.raises(SubjectError, match="node id '\\*'"):
        subjects.latest_metrics(ANY)


def test_service_discovery_subjects():
    assert subjects.service_ping() == "$SRV.PING"
    assert subjects.service_ping("colony-monitor") == "$SRV.PING.colony-monitor"
    assert subjects.service_info() == "$SRV.INFO"
    assert subjects.service_info("colony-monitor") == "$SRV.INFO.colony-monitor"
    with pytest.raises(SubjectError, match="service"):
        subjects.service_ping(ANY)
    with pytest.raises(SubjectError, match="service"):
        subjects.service_info("colony.monitor")


@pytest.mark.parametrize("value", ["a", "node-1", "Node_2", "x" * 64])
def test_valid_tokens_pass_unchanged(value):
    assert token(value) == value


@pytest.mark.parametrize(
    "value",
    ["a.b", "a b", "*", ">", "", "x" * 65, "a\tb", "nöde", "a/b"],
    ids=["dot", "space", "star", "gt", "empty", "65-chars", "tab", "non-ascii", "slash"],
)
def test_invalid_tokens_are_rejected_with_a_clear_message(value):
    with pytest.raises(SubjectError) as err:
        token(value, "node id")
    message = str(err.value)
    assert message.startswith(f"node id {value!r} cannot be used in a subject")
    assert "1-64 letters, digits, '-' or '_'" in message


def test_wildcard_only_where_allowed():
    assert token(ANY, wildcard=True) == ANY
    with pytest.raises(SubjectError):
        token(ANY)
    with pytest.raises(SubjectError):
        token(">", wildcard=True)  # only the one-token wildcard


def test_subject_error_is_a_value_error():
    assert issubclass(SubjectError, ValueError)


@pytest.mark.parametrize("value", ["node\n", "x" * 64 + "\n"], ids=["short", "64-chars"])
def test_trailing_newline_is_rejected(value):
    with pytest.raises(SubjectError):
        token(value)
