"""What the CLI shows people: log lines made readable, sizes and ages."""

import json

import pytest
from rich.text import Text

from colony.cli.logs import render
from colony.cli.output import human_age, human_bytes


def plain(text: Text) -> str:
    return text.plain


def log_line(**fields) -> str:
    return json.dumps({"ts": "2024-05-01T12:34:56.789Z", "logger": "colony", **fields})


def test_json_line_is_shown_as_time_level_message_and_extras():
    line = log_line(
        level="warning", msg="child died", service="bootstrapper", node="n1", child="nats"
    )
    shown = render(line)
    assert plain(shown) == "12:34:56.789 WARNING child died child=nats"
    assert shown.style == "yellow"
    assert [(s.start, s.end, s.style) for s in shown.spans] == [(32, 42, "dim")]  # child=nats


def test_json_line_without_extras_or_style():
    shown = render(log_line(level="info", msg="started"))
    assert (shown.plain, shown.style, shown.spans) == ("12:34:56.789 INFO    started", "", [])


def test_json_line_markup_is_shown_as_it_is():
    shown = render(log_line(level="error", msg="[bold]boom :smile:", why="[red]x\\"))
    assert plain(shown) == "12:34:56.789 ERROR   [bold]boom :smile: why=[red]x\\"


@pytest.mark.parametrize(
    "line", ["[123] plain [bold] line", "{not json", "", "Traceback:", "[/]", "C:\\"]
)
def test_other_lines_are_shown_as_they_are(line):
    assert plain(render(line)) == line


def test_raw_leaves_json_untouched():
    line = log_line(level="info", msg="started")
    assert plain(render(line, raw=True)) == line


def test_json_line_with_a_numeric_timestamp_does_not_crash():
    line = json.dumps({"ts": 1714566896.789, "level": "info", "msg": "started"})
    assert "started" in plain(render(line))


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**30, "5.0 GiB"),
        (3 * 2**50, "3072.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (90061, "1d01h"),
    ],
)
def test_human_age(seconds, text):
    assert human_age(seconds) == text


@pytest.mark.parametrize("count", [0, 1, 3, 70000])
def test_last_lines_reads_the_tail_of_a_large_file(tmp_path, count):
    from colony.cli.logs import last_lines

    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(60000)))
    expected = [f"line {i}" for i in range(60000)][-count:] if count else []
    assert last_lines(log, count, block=1000) == expected


def test_a_voter_whose_replica_stopped_itself_is_named_with_the_reason():
    from colony.cli.status import NodeStatus, stopped_lines

    why = "the Raft log conflicts with committed entries: entry 9 is committed here in term 2"
    nodes = [
        NodeStatus(id="n1-a", name="node-1", nats_url="", reachable=True, raft="follower"),
        NodeStatus(
            id="n2-b", name="node-2", nats_url="", reachable=True, raft="stopped", raft_stopped=why
        ),
    ]
    assert [line.plain for line in stopped_lines(nodes)] == [f"raft: node-2 stopped: {why}"]
    assert nodes[1].to_json()["raft_stopped"] == why and nodes[0].to_json()["raft_stopped"] is None
