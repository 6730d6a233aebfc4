"""The job, events and instance-logs verbs' pure parts: what people see, and how bad
arguments are refused (one-line errors, nothing sent). No cluster is started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from colony.cli import events, job
from colony.cli.main import main
from colony.shared.jobspec import JobSpec, RestartPolicy, Task
from colony.shared.messages import (
    Change,
    InstanceRecord,
    JobRecord,
    NodeRecord,
    PlannedPlacement,
    PlanReply,
    Rollout,
)

EXAMPLES = Path(__file__).parents[2] / "examples"
NOW = 1_000_000.0
NODES = {
    "node-1-aaaaaa": NodeRecord(node="node-1-aaaaaa", name="node-1", address="127.0.0.1"),
    "node-2-bbbbbb": NodeRecord(node="node-2-bbbbbb", name="node-2", address="10.0.0.2"),
}


def instance(id="web-0-3fa2", slot=0, node="node-1-aaaaaa", **fields) -> InstanceRecord:
    fields = {"job": "web", "version": 1, "cpu": 0.1, "memory": 64 * 2**20, **fields}
    return InstanceRecord(id=id, slot=slot, node=node, **fields)


def job_record(**fields) -> JobRecord:
    spec = JobSpec(name="web", task=Task(command="python3"), replicas=3)
    return JobRecord(**{"name": "web", "version": 1, "spec": spec, "replicas": 3, **fields})


def rendered(*things, width: int = 200) -> str:
    console = Console(width=width, record=True, markup=False, emoji=False, highlight=False)
    with console.capture() as captured:
        for thing in things:
            console.print(thing)
    return captured.get()


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


# --- job: what people see ----------------------------------------------------------


def test_describe_says_replicas_driver_command_resources_and_ports():
    spec = JobSpec(
        name="web",
        task=Task(command="python3", args=["-m", "http.server", "${PORT}"]),
        replicas=3,
        ports=["http"],
    )
    assert job.describe(spec) == (
        "3 replicas of process python3 -m http.server ${PORT}, "
        "0.1 cpu and 64.0 MiB each, ports http"
    )
    script = JobSpec(name="one", task=Task(command="sh", args=["-c", "x\n" * 40]))
    shown = job.describe(script)
    assert shown.startswith("1 replica of process sh -c x x") and "…" in shown
    assert "\n" not in shown


def test_address_is_where_the_instance_answers():
    assert job.address(instance(ports={"http": 20001}), NODES) == "127.0.0.1:20001"
    both = instance(node="node-2-bbbbbb", ports={"http": 20001, "admin": 20002})
    assert job.address(both, NODES) == "http=10.0.0.2:20001 admin=10.0.0.2:20002"
    assert job.address(instance(), NODES) == "127.0.0.1"
    assert job.address(instance(node="node-9-cccccc", ports={"http": 1}), NODES) == "-"


def test_instance_table_shows_id_node_state_address_restarts_age_reason():
    rows = [
        instance(state="running", started_at=NOW - 75, ports={"http": 20001}, restarts=2),
        instance(
            id="web-1-77aa", slot=1, node="node-2-bbbbbb", state="failed", placed=NOW - 10,
            reason="command 'pyhton3' not found",
        ),
        instance(id="web-0-0001", state="running", desired="stop", desired_reason="scaled down"),
    ]  # fmt: skip
    lines = rendered(job.instance_table(rows, NODES, NOW)).splitlines()
    assert lines[0].split() == [
        "ID", "NODE", "STATE", "HEALTH", "ADDRESS", "RESTARTS", "AGE", "LAST", "REASON",
    ]  # fmt: skip
    assert lines[1].split() == ["web-0-3fa2", "node-1", "running", "—", "127.0.0.1:20001", "2",
                                "1m15s", "-"]  # fmt: skip
    assert lines[2].split()[:2] == ["web-0-0001", "node-1"]
    assert "running (stopping)" in lines[2] and lines[2].rstrip().endswith("scaled down")
    assert lines[3].split()[:7] == ["web-1-77aa", "node-2", "failed", "—", "10.0.0.2", "0", "10s"]
    assert lines[3].rstrip().endswith("command 'pyhton3' not found")


def test_progress_counts_the_instances_desired_to_run():
    job_ = job_record()
    assert job.progress(None, []) is None
    placed = [instance(state="pending"), instance(id="web-1-1111", slot=1, state="running")]
    now = job.progress(job_, placed)
    assert (now.desired, now.placed, now.starting, now.running, now.done) == (3, 2, 1, 1, False)
    assert now.line("web") == "web: 2/3 placed, 1 starting, 1/3 running"
    three = [instance(id=f"web-{s}-0000", slot=s, state="running") for s in range(3)]
    stopping = instance(id="web-9-0000", slot=0, state="running", desired="stop")
    assert job.progress(job_, [*three, stopping]).done
    blocked = job.progress(job_record(blocked="2 nodes lack memory"), [three[0]])
    assert blocked.line("web").endswith("; blocked: 2 nodes lack memory")
    # scaled down: done only once the extra instances are no longer desired to run
    assert not job.progress(job_record(replicas=2), three).done
    assert job.progress(job_record(status="stopped"), []).done


def test_progress_after_a_spec_change_waits_for_the_new_version():
    old = [instance(id=f"web-{s}-0000", slot=s, state="running") for s in range(3)]
    v2 = job_record(version=2)
    now = job.progress(v2, old)
    assert (now.placed, now.running, now.older, now.done) == (0, 0, 3, False)
    assert now.line("web") == "web: 0/3 placed, 0 starting, 0/3 running, 3 of an older version"
    new = [instance(id=f"web-{s}-1111", slot=s, version=2, state="running") for s in range(3)]
    assert job.progress(v2, new).done


def test_a_first_version_is_done_once_its_rollout_succeeded():
    """Running is not enough: until its instances stayed healthy min_healthy_time, a
    failed next version would have nothing to revert to."""
    three = [instance(id=f"web-{s}-0000", slot=s, state="running") for s in range(3)]
    rolling = job_record(rollout=Rollout(version=1))
    now = job.progress(rolling, three)
    assert not now.done
    assert now.line("web").endswith("; staying healthy for min_healthy_time")
    succeeded = job_record(rollout=Rollout(version=1, status="succeeded"))
    assert job.progress(succeeded, three).done


def test_progress_sees_instances_failed_for_good():
    spec = JobSpec(name="web", task=Task(command="x"), restart=RestartPolicy(then="fail"))
    failed = instance(state="failed", reason="exit 1")
    assert job.progress(job_record(spec=spec), [failed]).failed_for_good == 1
    assert job.progress(job_record(), [failed]).failed_for_good == 0  # rescheduled instead


def test_why_not_running_gives_the_blocked_reason_and_each_instance():
    rows = [
        instance(state="running"),
        instance(id="web-1-aaaa", slot=1, node="node-2-bbbbbb", state="failed", reason="exit 3"),
        instance(id="web-2-bbbb", slot=2, state="pending"),
    ]
    assert job.why_not_running(job_record(blocked="no node has 2 cpu free"), rows, NODES) == [
        "blocked: no node has 2 cpu free",
        "web-1-aaaa on node-2 is failed: exit 3",
        "web-2-bbbb on node-1 is pending",
    ]
    assert job.why_not_running(None, [], NODES) == ["the job was not recorded"]


def test_plan_lines_show_placements_or_why_not():
    fits = PlanReply(
        job="web", change="new", version=1,
        place=[PlannedPlacement(0, "node-1-aaaaaa", {"http": 20000}),
               PlannedPlacement(1, "node-2-bbbbbb", {"http": 20000})],
    )  # fmt: skip
    text = rendered(*job.plan_lines(fits, NODES)).splitlines()
    assert text[0] == "web: new job"
    assert text[1].split() == ["SLOT", "NODE", "PORTS"]
    assert text[2].split() == ["0", "node-1", "http=20000"]
    assert text[3].split() == ["1", "node-2", "http=20000"]

    no_fit = PlanReply(
        job="big", change="update", version=2, unplaced=3,
        no_fit=["3 nodes lack memory: need 512.0 GiB, the best has 7.0 GiB free"],
        stop=["big-0-aaaa"],
    )  # fmt: skip
    assert rendered(*job.plan_lines(no_fit, NODES)).splitlines() == [
        "big: changed spec, version 2",
        "would stop: big-0-aaaa",
        "3 instance(s) fit on no node:",
        "  3 nodes lack memory: need 512.0 GiB, the best has 7.0 GiB free",
    ]
    same = PlanReply(job="web", change="unchanged", version=4)
    assert rendered(*job.plan_lines(same, NODES)).splitlines() == [
        "web: unchanged (version 4)",
        "nothing to place",
    ]


def test_job_list_rows_count_running_instances_of_each_job():
    rows = [instance(state="running"), instance(id="web-1-1", slot=1, state="starting"),
            instance(id="api-0-1", job="api", state="running")]  # fmt: skip
    assert job.job_row(job_record(), rows) == ["web", "1", "running", "3", "1", "-"]
    stopped = job_record(status="stopped", purge=True, blocked="")
    assert job.job_row(stopped, [])[2] == "stopped (purge)"
    table = rendered(job.job_list([job_record()], rows)).splitlines()
    assert table[0].split() == ["NAME", "VERSION", "STATUS", "DESIRED", "RUNNING", "BLOCKED"]


def test_job_json_leaves_the_source_out_and_instances_say_where_they_answer():
    data = job.job_json(job_record(source="name: web\n" * 100))
    assert "source" not in data and data["spec"]["name"] == "web"
    shown = job.instance_json(instance(ports={"http": 20001}), NODES)
    assert shown["address"] == "127.0.0.1:20001" and shown["id"] == "web-0-3fa2"
    assert job.instance_json(instance(node="node-9"), NODES)["address"] is None


def test_plan_lines_say_a_stopped_job_runs_again():
    again = PlanReply(job="web", change="restart", version=2,
                      place=[PlannedPlacement(0, "node-1-aaaaaa", {"http": 20000})])  # fmt: skip
    assert rendered(*job.plan_lines(again, NODES)).splitlines()[0] == (
        "web: stopped, runs again (version 2)"
    )


def test_stop_says_whether_the_job_is_forgotten_now_or_once_its_instances_are_gone():
    assert job.stopped_said(False, "stopped") == "stopped: its instances stop now"
    assert job.stopped_said(True, "stopped") == (
        "stopped: its instances stop now; forgotten once they are gone"
    )
    assert job.stopped_said(True, "forgotten") == "forgotten (it had no instances left)"


def failed(id="web-0-aaaa", slot=0, **fields) -> InstanceRecord:
    return instance(id=id, slot=slot, state="failed", reason="exit code 3: bad config", **fields)


def test_failures_are_taken_once_each_and_never_from_an_older_record():
    seen = job.Failures("web")
    first = failed(changed=1.0)
    assert seen.saw([instance(state="running"), first]) == [first]
    replaced = failed(changed=2.0, desired="stop")
    assert seen.saw([replaced]) == []  # not new: its later record is kept
    assert seen.saw([first]) == []  # an older read does not undo what was seen
    assert seen.failed == {"web-0-aaaa": replaced}
    assert seen.saw([failed(id="api-0-bbbb", job="api")]) == []  # another job's
    # a read shows what may be of before this run: it only updates the failures heard of
    assert seen.saw([failed(id="web-1-cccc", slot=1)], new=False) == []
    later = job.Failures("web", version=2)
    assert later.saw([failed()]) == [] and later.failed == {}  # an older version's


def test_a_job_keeps_failing_once_every_slot_failed_and_was_rescheduled():
    web = job_record(replicas=2)
    seen = job.Failures("web")
    # slot 0 failed and its replacement is starting; slot 1 still starting
    seen.saw([failed(desired="stop"), failed(id="web-1-bbbb", slot=1)])
    now = [instance(id="web-0-cccc", state="starting"), failed(id="web-1-bbbb", slot=1)]
    assert not job.keeps_failing(web, now, seen.failed)  # slot 1 not rescheduled yet
    seen.saw([failed(id="web-1-bbbb", slot=1, desired="stop", changed=5.0)])
    now = [instance(id="web-0-cccc", state="starting"),
           instance(id="web-1-dddd", slot=1, state="pending")]  # fmt: skip
    assert job.keeps_failing(web, now, seen.failed)
    # one replacement runs: the job may yet run, wait on
    running = [instance(id="web-0-cccc", state="running"), now[1]]
    assert not job.keeps_failing(web, running, seen.failed)
    # failures of an older version do not count, nor those of a stopped job
    assert not job.keeps_failing(job_record(replicas=2, version=2), now, seen.failed)
    assert not job.keeps_failing(job_record(replicas=2, status="stopped"), now, seen.failed)
    # failed where no replacement can be placed: it stays failed, the job blocked
    stuck = job_record(replicas=1, blocked="1 of 1 instances cannot be placed: ...")
    alone = job.Failures("web")
    alone.saw([failed()])
    assert job.keeps_failing(stuck, [failed()], alone.failed)
    assert not job.keeps_failing(job_record(replicas=1), [failed()], alone.failed)


def test_why_not_running_also_names_the_failures_seen():
    replaced = failed(desired="stop")
    rows = [instance(id="web-0-cccc", state="pending")]
    assert job.why_not_running(job_record(replicas=1), rows, NODES, [replaced]) == [
        "web-0-aaaa on node-1 is failed: exit code 3: bad config",
        "web-0-cccc on node-1 is pending",
    ]


# --- events --------------------------------------------------------------------------


def change(kind: str, id: str, version: int, detail: dict, index: int = 7) -> Change:
    return Change(index=index, kind=kind, id=id, version=version, log_index=9, detail=detail,
                  ts=0)  # fmt: skip


def test_instance_changes_are_summarized_in_words():
    summary = events.Summaries()
    placed = dict(id="web-0-3fa2", job="web", version=2, slot=0, node="node-2", cpu=0.1,
                  memory=1, ports={"http": 20001}, desired="run", state="pending")  # fmt: skip
    assert summary(change("instance", "web-0-3fa2", 1, placed)) == (
        "instance web-0-3fa2 placed on node-2 (slot 0, v2, http=20001)"
    )
    running = {**placed, "state": "running", "pid": 1234}
    assert summary(change("instance", "web-0-3fa2", 2, running)) == (
        "instance web-0-3fa2 running on node-2 (pid 1234)"
    )
    restarted = {**running, "restarts": 2, "pid": 99}
    assert summary(change("instance", "web-0-3fa2", 3, restarted)).endswith("(pid 99, restart 2)")
    stop = {**running, "desired": "stop", "desired_reason": "scaled to 0"}
    assert summary(change("instance", "web-0-3fa2", 4, stop)) == (
        "instance web-0-3fa2 on node-2 to stop: scaled to 0"
    )
    exited = {**stop, "state": "exited", "exit_code": -15}
    assert summary(change("instance", "web-0-3fa2", 5, exited)) == (
        "instance web-0-3fa2 exited on node-2 (code -15)"
    )
    failed = {**placed, "state": "failed", "reason": "no such file: pyhton3"}
    assert summary(change("instance", "web-0-3fa2", 6, failed)) == (
        "instance web-0-3fa2 failed on node-2: no such file: pyhton3"
    )
    assert summary(change("instance", "web-0-3fa2", 0, failed)) == (
        "instance web-0-3fa2 removed from node-2"
    )


def test_job_changes_say_what_changed_since_the_last_one_seen():
    summary = events.Summaries()
    v1 = dict(name="web", version=1, replicas=3, status="running", purge=False, blocked="")
    assert summary(change("job", "web", 1, v1)) == "job web v1: running, 3 replicas"
    assert summary(change("job", "web", 2, {**v1, "replicas": 6})) == "job web v1 scaled to 6"
    v2 = {**v1, "version": 2, "replicas": 6}
    assert summary(change("job", "web", 3, v2)) == "job web v2 submitted (changed spec, 6 replicas)"
    blocked = {**v2, "blocked": "1 node lacks cpu"}
    assert summary(change("job", "web", 4, blocked)) == "job web v2 blocked: 1 node lacks cpu"
    assert summary(change("job", "web", 5, v2)) == "job web v2 unblocked"
    stopped = {**v2, "status": "stopped", "purge": True}
    assert summary(change("job", "web", 6, stopped)) == "job web v2 stopped (purge)"
    gone = {"name": "web", "reason": "purged: no instance of it is left"}
    assert summary(change("job", "web", 0, gone)) == (
        "job web removed: purged: no instance of it is left"
    )
    # first seen mid-history: where it stands, not what changed
    later = events.Summaries()
    assert later(change("job", "web", 4, blocked)) == (
        "job web v2: running, 6 replicas; blocked: 1 node lacks cpu"
    )


def test_node_label_and_other_changes():
    summary = events.Summaries()
    node = dict(node="node-2-bbbbbb", name="node-2", address="127.0.0.1", cpu=2.0,
                memory=2**30, drivers=["process"], port_lo=20000, port_hi=20999,
                status="unknown", eligible=True)  # fmt: skip
    assert summary(change("node", "node-2-bbbbbb", 1, node)) == (
        "node node-2 registered: 2 cpu, 1.0 GiB, process, ports 20000-20999 at 127.0.0.1 (unknown)"
    )
    alive = {**node, "status": "alive"}
    assert summary(change("node", "node-2-bbbbbb", 2, alive)) == "node node-2 unknown -> alive"
    dead = {**node, "status": "dead", "reason": "suspected for 5 s"}
    assert summary(change("node", "node-2-bbbbbb", 3, dead)) == (
        "node node-2 alive -> dead: suspected for 5 s"
    )
    # once its node is known by name, an instance's node is shown by it
    placed = dict(id="web-0-1", slot=0, version=1, node="node-2-bbbbbb", state="pending",
                  desired="run")  # fmt: skip
    assert summary(change("instance", "web-0-1", 1, placed)).startswith(
        "instance web-0-1 placed on node-2 (slot 0"
    )
    labels = change("label", "node-2-bbbbbb", 1, {"labels": {"zone": "eu", "disk": "ssd"}})
    assert summary(labels) == "labels of node-2-bbbbbb: zone=eu, disk=ssd"
    lease = change("lease", "manager", 3, {"event": "granted", "holder": "node-1", "reason": ""})
    assert summary(lease) == "event=granted holder=node-1"
    long = summary(change("kv", "k", 1, {"v": "x" * 500}))
    assert len(long) == events.SUMMARY_MAX and long.endswith("…")


def test_instances_are_shown_on_nodes_named_before_the_changes_read():
    summary = events.Summaries({"node-2-bbbbbb": "node-2"})
    placed = dict(id="web-0-1", slot=0, version=1, node="node-2-bbbbbb", state="pending",
                  desired="run")  # fmt: skip
    assert summary(change("instance", "web-0-1", 1, placed)).startswith(
        "instance web-0-1 placed on node-2 (slot 0"
    )


def test_following_instances_follows_nodes_too_to_learn_their_names():
    assert events.followed_kinds(["instance"]) == {"instance", "node"}
    assert events.followed_kinds(["job"]) == {"job"}
    assert events.followed_kinds(None) == set()


def test_event_line_has_index_time_kind_id_version_summary():
    shown = events.line(change("job", "web", 3, {}, index=42), "job web v1 scaled to 6")
    assert shown.split() == ["42", "-", "job", "web", "3", "job", "web", "v1", "scaled", "to", "6"]


# --- arguments ------------------------------------------------------------------------


def test_every_job_verb_teaches_with_examples(capsys):
    for verb in ("validate", "plan", "run", "status", "list", "scale", "stop"):
        code, out, _ = colony(capsys, "job", verb, "--help")
        assert code == 0 and f"colony job {verb}" in out.split("examples:")[1], verb
        if verb != "validate":
            assert "--json" in out and "--server" in out
    for verb in ("events", "logs"):
        code, out, _ = colony(capsys, verb, "--help")
        assert code == 0 and "examples:" in out and "--json" in out and "--server" in out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["job", "scale", "web", "-1"], "must be a whole number from 0 to 10000"),
        (["job", "scale", "web", "many"], "must be a whole number from 0 to 10000"),
        (["job", "stop", "Web"], "'Web' is not a job name: lowercase letters"),
        (["job", "status", "[/]"], "'[/]' is not a job name"),
        (["job", "run", "x.yaml", "--timeout", "0"], "must be a finite number of seconds > 0"),
        (["events", "--since", "-3"], "must be a change index (0 or more)"),
        (["events", "--kind", "a.b"], "kind"),
        (["logs", "web-0-1", "--tail", "1GiB"], "must be a number of bytes from 1 to 524288"),
    ],
)
def test_bad_arguments_are_refused_by_the_parser(capsys, argv, says):
    code, _, err = colony(capsys, *argv)
    assert code == 2 and says in err, err


def test_validate_the_sample_jobs(capsys):
    code, out, _ = colony(capsys, "job", "validate", str(EXAMPLES / "web.yaml"))
    assert code == 0
    assert out.startswith(f"{EXAMPLES / 'web.yaml'}: valid (3 replicas of process python3 -c")
    assert out.rstrip().endswith("0.1 cpu and 64.0 MiB each, ports http)")


def test_validate_prints_every_problem_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Web\nreplicas: -1\ntask: {command: x, bogus: 1}\n")
    code, out, err = colony(capsys, "job", "validate", str(bad))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["error"] * 3
    assert f"{bad}:1: name:" in lines[0] and f"{bad}:3: task.bogus: unknown field" in lines[2]
    assert lines[3] == f"hint: 3 problems in {bad}"
    code, out, _ = colony(capsys, "job", "validate", str(bad), "--json")
    assert code == 1 and '"valid": false' in out and '"path": "task.bogus"' in out


def test_run_and_plan_send_nothing_when_the_file_is_invalid(tmp_path, capsys):
    # no cluster anywhere: an invalid file must be refused before any connection is tried
    for verb in ("run", "plan"):
        code, _, err = colony(capsys, "job", verb, str(tmp_path / "missing.yaml"),
                              "--server", "nats://127.0.0.1:1")  # fmt: skip
        assert code == 1 and "cannot be read" in err and "Traceback" not in err
        code, out, _ = colony(capsys, "job", verb, str(tmp_path / "missing.yaml"), "--json",
                              "--server", "nats://127.0.0.1:1")  # fmt: skip
        assert code == 1 and json.loads(out)["valid"] is False, out


def test_instance_only_options_on_process_logs_are_refused(tmp_path, capsys):
    from colony.cli.local.plan import plan
    from colony.cli.local.write import write_nodes
    from colony.shared.statedir import StateDir

    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(2, 21000))
    code, _, err = colony(capsys, "logs", "node-1", "--stderr", "--state-dir", str(state.path))
    assert code == 1 and "are for an instance's output" in err
