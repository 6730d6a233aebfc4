"""The CLI on hostile input: one-line errors, never a traceback, nothing written.

Names, keys and paths full of rich markup or emoji codes, arguments that are
not UTF-8, a state dir that is a file or sits under one. Each verb runs in
this process against a written state dir (no cluster is started).
"""

import os

import pytest
from rich.console import Console

from colony.cli import members, output, status
from colony.cli.local.plan import plan
from colony.cli.local.write import write_nodes
from colony.cli.main import main
from colony.shared.messages import (
    ConsensusStatus,
    LeaseView,
    MembersReply,
    MemberView,
    NodeMeta,
    VoterView,
)
from colony.shared.statedir import StateDir, StateDirError

HOSTILE = "[/]"
"""A closing tag with nothing to close: rich raises MarkupError if it parses it."""


@pytest.fixture
def state(tmp_path):
    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(2, 21000))
    return state


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def one_line_error(err: str) -> str:
    """The error's text, checked to be a single line and no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0].removeprefix("error: ")


def files_under(path) -> dict[str, tuple[int, int]]:
    """Every path under `path` with its mode and modification time: to see nothing changed."""
    found = {}
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            info = os.lstat(name)
            found[name] = (info.st_mode, info.st_mtime_ns)
    return found


# --- markup --------------------------------------------------------------------


def test_fail_shows_markup_and_emoji_codes_as_they_are_on_one_line(capsys):
    message = f"{HOSTILE!r} is not set [bold]:smile: " + "x" * 200  # beyond 80 columns
    with pytest.raises(SystemExit) as exited:
        output.fail(message, "[red]hint[/] :smile:")
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {message}",
        "hint: [red]hint[/] :smile:",
    ]


def test_capacity_of_a_node_named_like_markup(state, capsys):
    code, _, err = colony(capsys, "capacity", HOSTILE, "--cpu", "1", "--state-dir", str(state.path))
    assert code == 1
    assert one_line_error(err) == (
        f"no node {HOSTILE!r} in {state.path}/ (its nodes: node-1, node-2)"
    )


def test_logs_of_a_node_named_like_markup(state, capsys):
    code, _, err = colony(capsys, "logs", HOSTILE, "monitor", "--state-dir", str(state.path))
    assert code == 1
    assert one_line_error(err) == (
        f"no node {HOSTILE!r} in {state.path}/ (its nodes: node-1, node-2)"
    )


def test_members_of_a_node_named_like_markup(state, capsys):
    code, _, err = colony(capsys, "members", HOSTILE, "--state-dir", str(state.path))
    assert code == 1
    assert one_line_error(err) == (
        f"no node {HOSTILE!r} in {state.path}/ (its nodes: node-1, node-2)"
    )


def test_a_log_line_with_markup_and_emoji_codes_is_shown_as_it_is(state, capsys):
    node = state.node("node-1")
    lines = [f"{HOSTILE} :smile: [bold]plain", "ends in a backslash\\", '{"msg": "[/]\\\\"}']
    node.log("monitor").write_text("".join(f"{line}\n" for line in lines))
    code, out, err = colony(capsys, "logs", "node-1", "monitor", "--state-dir", str(state.path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"node-1 monitor | {HOSTILE} :smile: [bold]plain",
        "node-1 monitor | ends in a backslash\\",
        "node-1 monitor | " + " " * 9 + "[/]\\",  # no time, no level: blank columns
    ]


def plain(renderable) -> str:
    console = Console(width=400, markup=False, emoji=False, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def test_status_shows_cluster_supplied_names_as_they_are():
    name, node_id = f"{HOSTILE}:smile:", f"{HOSTILE}-id"
    nodes = [
        status.NodeStatus(
            node_id,
            name,
            nats_url="[red]",
            reachable=True,
            services=["[bold]"],
            member=HOSTILE,
            raft="leader",
        ),
        status.NodeStatus("other", "[b]other", raft="down"),
    ]
    shown = plain(status.table(nodes))
    for text in (name, node_id, "[red]", "[bold]", HOSTILE, "[b]other"):
        assert text in shown
    lease = LeaseView("manager", node_id, 3, 1.0, 2.0, 0.5)
    leader = ConsensusStatus(
        node=node_id,
        role="leader",
        leader=node_id,
        term=2,
        commit_index=7,
        applied_index=7,
        has_quorum=True,
        voters=[VoterView(node_id, True), VoterView("other", False)],
        manager=lease,
    )
    assert plain(status.raft_line(leader, nodes)) == (
        f"raft: leader {name}, term 2, commit index 7; "
        f"voters: {name} (leader), [b]other (unreachable)\n"
    )
    assert plain(status.manager_line(leader, nodes)) == (
        f"manager: {name}, epoch 3, granted 2s ago, renewed 0.5 s ago (ttl 1 s) (not acting)\n"
    )


def test_members_shows_cluster_supplied_names_as_they_are(capsys):
    view = MemberView(HOSTILE, "alive", 1, NodeMeta(nats_url="[red]", roles=("[b]",)), 3.0)
    odd = MemberView(":smile:", "[weird]", 1, NodeMeta(), 3.0)  # a status from a newer peer
    members.show(MembersReply(observer=HOSTILE, members=[view, odd], health=2), as_json=False)
    shown = capsys.readouterr().out
    assert f"membership as seen by {HOSTILE} (health 2: probing 3x slower)" in shown
    for text in (HOSTILE, "[red]", "[b]", ":smile:", "[weird]"):
        assert text in shown


# --- arguments that are not UTF-8 ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["kv", "put", "k", os.fsdecode(b"\xff\xfe")],
            "value is not valid UTF-8 (byte 0xff at character 0); keys and values are text",
        ),
        (
            ["kv", "put", os.fsdecode(b"ok\xe9"), "v"],
            "key is not valid UTF-8 (byte 0xe9 at character 2); keys and values are text",
        ),
        (
            ["kv", "get", "\ud800"],
            "key is not valid UTF-8 (U+D800 at character 0); keys and values are text",
        ),
    ],
)
def test_kv_refuses_what_is_not_utf8_before_sending_anything(state, capsys, argv, message):
    # the state dir names servers that do not run: refused before any connection is tried
    code, out, err = colony(capsys, *argv, "--state-dir", str(state.path))
    assert (code, out) == (1, "")
    assert one_line_error(err) == message


@pytest.mark.parametrize("verb", ["get", "put", "delete"])
def test_kv_refuses_a_key_the_voters_would_refuse(state, capsys, verb):
    argv = ["kv", verb, "[/]", *(["v"] if verb == "put" else [])]
    code, out, err = colony(capsys, *argv, "--state-dir", str(state.path))
    assert (code, out) == (1, "")
    assert one_line_error(err) == "key '[/]' is not valid: keys must match ^[A-Za-z0-9_-]{1,64}$"


def test_a_state_dir_that_is_not_utf8_is_printed_back_as_its_bytes(tmp_path, capfdbinary):
    path = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    with pytest.raises(SystemExit) as exited:
        main(["down", "--state-dir", path])
    assert exited.value.code == 0
    assert capfdbinary.readouterr().out == b"Nothing is running in " + os.fsencode(path) + b"/.\n"


# --- state dirs that cannot be used --------------------------------------------------

VERBS = [
    ["up", "--detach"],
    ["down"],
    ["status"],
    ["members"],
    ["kv", "get", "k"],
    ["kv", "put", "k", "v"],
    ["capacity", "node-1", "--cpu", "2"],
    ["logs"],
]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:2]))
def test_a_state_dir_that_is_a_file(tmp_path, capsys, verb):
    path = tmp_path / "afile"
    path.write_text("not a state dir\n")
    before = files_under(tmp_path)
    code, out, err = colony(capsys, *verb, "--state-dir", str(path))
    assert (code, out) == (1, "")
    assert one_line_error(err) == f"state dir {path} is a file, not a directory"
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:2]))
def test_a_state_dir_under_a_file(tmp_path, capsys, verb):
    (tmp_path / "afile").write_text("not a folder\n")
    path = tmp_path / "afile" / "state"
    before = files_under(tmp_path)
    code, out, err = colony(capsys, *verb, "--state-dir", str(path))
    assert (code, out) == (1, "")
    assert one_line_error(err) == f"cannot read state dir {path}: not a directory"
    assert files_under(tmp_path) == before


def test_a_node_folder_blocked_by_a_file_is_named(tmp_path):
    state = StateDir(tmp_path / "state")
    state.nodes_dir.mkdir(parents=True)
    (state.nodes_dir / "node-2").write_text("in the way\n")  # not a node: `up` makes node-2
    blocked = state.nodes_dir / "node-2"
    with pytest.raises(
        StateDirError, match=f"^cannot create folder {blocked}: a file is in the way$"
    ):
        write_nodes(state, plan(2, 21000))  # what `colony up` does once its checks pass


@pytest.mark.parametrize("timeout", ["inf", "nan", "-1", "0"])
def test_a_timeout_must_be_a_finite_number_of_seconds(capsys, tmp_path, timeout):
    with pytest.raises(SystemExit) as exited:
        main(["status", "--timeout", timeout, "--state-dir", str(tmp_path)])
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"argument --timeout: must be a finite number of seconds > 0, not {timeout}" in err
