"""Wire messages: typed round trips, tolerant of new fields, strict about types."""

import json
import logging

import pytest

from colony.harness.processes import example_metrics
from colony.shared.messages import (
    MAX_PAYLOAD,
    DecodeError,
    LatestMetricsRequest,
    Message,
    NodeMetrics,
    ProcessUsage,
    Resources,
    decode,
    decode_or_drop,
    encode,
    to_builtins,
)

SUBJECT = "colony.monitor.metrics.n1"


def metrics() -> NodeMetrics:
    return example_metrics(
        "n1",
        seq=7,
        name="node-1",
        node_started=1_700_000_000.0,
        processes=[ProcessUsage("nats", 123, 4096, 12.5)],
        capacity=Resources(2.0, 1000),
        used=Resources(0.5, 400),
        free=Resources(1.5, 600),
    )


def as_dict(msg: Message) -> dict:
    return json.loads(encode(msg))


def test_node_metrics_round_trip():
    msg = metrics()
    assert decode(encode(msg), NodeMetrics) == msg


def test_latest_metrics_request_round_trip():
    msg = LatestMetricsRequest()
    assert decode(encode(msg), LatestMetricsRequest) == msg


def test_new_messages_carry_version_and_a_fresh_cause():
    a, b = LatestMetricsRequest(), LatestMetricsRequest()
    assert a.v == Message.VERSION
    assert len(a.cause) == 16
    assert a.cause != b.cause


def test_unknown_fields_are_ignored():
    msg = metrics()
    data = as_dict(msg)
    data["added_in_a_later_minor_version"] = {"x": 1}
    data["capacity"]["gpu"] = 2
    assert decode(json.dumps(data).encode(), NodeMetrics) == msg


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["seq"], "x", "$.seq"),
        (["node"], 1, "$.node"),
        (["capacity", "cpu"], "lots", "$.capacity.cpu"),
        (["processes", 0, "rss"], 1.5, "$.processes[0].rss"),
        (["v"], "1", "$.v"),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(path, value, where):
    data = as_dict(metrics())
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(DecodeError, match="invalid NodeMetrics") as err:
        decode(json.dumps(data).encode(), NodeMetrics)
    assert where in str(err.value)


def test_missing_required_field_is_named():
    data = as_dict(metrics())
    del data["node"]
    with pytest.raises(DecodeError, match="missing required field `node`"):
        decode(json.dumps(data).encode(), NodeMetrics)


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"v": 1', b"\xff"])
def test_malformed_json_is_rejected(data):
    with pytest.raises(DecodeError, match="malformed LatestMetricsRequest"):
        decode(data, LatestMetricsRequest)


@pytest.mark.parametrize("kind", [LatestMetricsRequest, NodeMetrics])
def test_a_newer_major_version_is_refused_before_its_fields_are_judged(kind):
    newer = json.dumps({"v": Message.VERSION + 1, "renamed": 1}).encode()
    with pytest.raises(DecodeError, match=f"schema version {Message.VERSION + 1}") as err:
        decode(newer, kind)
    assert f"understands up to {Message.VERSION}" in str(err.value)


def test_encode_stamps_the_type_version():
    assert as_dict(LatestMetricsRequest(v=99))["v"] == LatestMetricsRequest.VERSION


def test_the_current_version_is_accepted():
    msg = LatestMetricsRequest(v=Message.VERSION)
    assert decode(encode(msg), LatestMetricsRequest).v == Message.VERSION


def test_payload_larger_than_max_payload_is_refused():
    msg = LatestMetricsRequest()
    data = encode(msg)
    at_limit = data + b" " * (MAX_PAYLOAD - len(data))
    assert decode(at_limit, LatestMetricsRequest) == msg
    with pytest.raises(DecodeError, match=f"exceeds the {MAX_PAYLOAD}-byte limit"):
        decode(at_limit + b" ", LatestMetricsRequest)


def test_decode_or_drop_returns_the_message_when_valid(caplog):
    msg = metrics()
    log = logging.getLogger("test.messages")
    with caplog.at_level(logging.WARNING, logger="test.messages"):
        assert decode_or_drop(encode(msg), NodeMetrics, SUBJECT, log) == msg
    assert caplog.records == []


def test_decode_or_drop_logs_a_warning_with_the_subject(caplog):
    log = logging.getLogger("test.messages")
    with caplog.at_level(logging.WARNING, logger="test.messages"):
        assert decode_or_drop(b"{not json", NodeMetrics, SUBJECT, log) is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.subject == SUBJECT
    assert record.reason.startswith("malformed NodeMetrics")
    assert record.payload == "{not json"


def test_to_builtins_gives_plain_data():
    msg = metrics()
    data = to_builtins(msg)
    assert data["node"] == "n1"
    assert data["capacity"] == {"cpu": 2.0, "memory": 1000}
    assert decode(json.dumps(data).encode(), NodeMetrics) == msg


def test_resources_subtraction():
    assert Resources(4.0, 1000) - Resources(1.5, 400) == Resources(2.5, 600)
    assert Resources(1.0, 0) - Resources(2.0, 10) == Resources(-1.0, -10)
    assert Resources() == Resources(0.0, 0)
