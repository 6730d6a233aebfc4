"""The CLI's issue-14 verbs, their pure parts: a plan's diff and what the update does,
rollout progress lines and how a followed rollout ends, history rows, health and last
checks in `job status`, endpoints, drain progress, the events said of health, rollouts
and drains, and how bad arguments are refused. No cluster is started."""

from __future__ import annotations

import pytest
from rich.console import Console

from colony.cli import endpoints, events, job, node, rollout, status
from colony.cli.main import main
from colony.shared.jobspec import JobSpec, SpecChange, Task, UpdateStrategy
from colony.shared.messages import (
    Change,
    CheckState,
    Endpoint,
    EndpointsReply,
    InstanceRecord,
    JobRecord,
    JobVersion,
    NodeRecord,
    PlanReply,
    Rollout,
)

NOW = 1_000_000.0
NODES = {"node-1-aaaaaa": NodeRecord(node="node-1-aaaaaa", name="node-1", address="127.0.0.1")}


def rendered(*things) -> str:
    console = Console(width=200, record=True, markup=False, emoji=False, highlight=False)
    with console.capture() as captured:
        for thing in things:
            console.print(thing)
    return captured.get()


def web(replicas=6, version=2, rollout_=None, **update) -> JobRecord:
    spec = JobSpec(
        name="web",
        task=Task(command="python3"),
        replicas=replicas,
        update=UpdateStrategy(**update),
    )
    return JobRecord(
        name="web", version=version, spec=spec, replicas=replicas, rollout=rollout_, stable=1
    )


def instance(id="web-0-3fa2", **fields) -> InstanceRecord:
    fields = {"job": "web", "version": 2, "slot": 0, "node": "node-1-aaaaaa", **fields}
    return InstanceRecord(id=id, cpu=0.1, memory=2**26, **fields)


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


# --- plan ----------------------------------------------------------------------------


def update_plan(**fields) -> PlanReply:
    return PlanReply(job="web", change="update", version=3, **fields)


def test_plan_shows_each_field_that_differs_and_what_the_update_does():
    plan = update_plan(
        diff=[
            SpecChange("task.args[1]", "8080", "9090"),
            SpecChange("checks[0].path", "", "/health"),
            SpecChange("meta.team", "web", ""),
        ],
        replace=6,
        max_parallel=2,
        canary=1,
    )
    assert rendered(*job.plan_lines(plan, NODES)).splitlines() == [
        "web: changed spec, version 3",
        "  task.args[1]: 8080 -> 9090",
        "  checks[0].path: (not set) -> /health",
        "  meta.team: web -> (removed)",
        "update: replace 6 instances, 2 at a time (1 canary first, then promote)",
        "nothing to place",
    ]


def test_what_an_update_does_in_words():
    assert rollout.update_said(update_plan(in_place=True, diff=[SpecChange("replicas", "3", "4")]))\
        == "in place (no instance replaced)"  # fmt: skip
    one = update_plan(replace=1, max_parallel=1)
    assert rollout.update_said(one) == "replace 1 instance, 1 at a time"
    canaries = update_plan(replace=4, max_parallel=2, canary=2)
    auto = web(auto_promote=True).spec
    assert rollout.update_said(canaries, auto) == (
        "replace 4 instances, 2 at a time (2 canaries first, promoted once healthy)"
    )
    assert rollout.update_said(PlanReply(job="web", change="new", version=1)) == ""
    # a manager that says nothing of diffs: no update line rather than a wrong one
    assert rollout.diff_lines(update_plan()) == []


# --- rollout progress and how it ends ------------------------------------------------


def test_rollout_lines_say_the_batch_canaries_and_outcome():
    batch = Rollout(version=2, previous=1, batch=2, placed=4, healthy=4, promoted=True)
    assert rollout.rollout_line(web(rollout_=batch, max_parallel=2)) == (
        "version 2: batch 2 of 3 — 4 of 6 healthy"
    )
    canary = Rollout(version=2, previous=1, canaries=1, placed=1, healthy=0)
    assert rollout.rollout_line(web(rollout_=canary)) == "version 2: canaries — 0 of 1 healthy"
    ready = Rollout(version=2, previous=1, canaries=1, placed=1, healthy=1)
    assert rollout.rollout_line(web(rollout_=ready)) == (
        "version 2: 1 canary healthy; promote with `colony job promote web`"
    )
    new = Rollout(version=1, placed=3, healthy=1, promoted=True)
    assert rollout.rollout_line(web(version=1, rollout_=new)) == (
        "version 1: 3 placed, 1 of 6 healthy"
    )
    failed = Rollout(version=2, previous=1, status="failed", reason="web-0-aa unhealthy")
    assert rollout.rollout_line(web(rollout_=failed)) == "version 2: failed: web-0-aa unhealthy"
    done = Rollout(version=2, previous=1, status="succeeded", healthy=6, batch=6)
    assert rollout.rollout_line(web(rollout_=done)) == "version 2: succeeded — 6 of 6 healthy"
    assert rollout.rollout_line(web()) == ""


def test_a_followed_rollout_ends_succeeded_waiting_for_promotion_or_failed():
    running = Rollout(version=2, previous=1, batch=1, placed=2, promoted=True)
    assert rollout.verdict(web(rollout_=running), 2) is None
    assert rollout.verdict(web(rollout_=None), 2) is None  # not recorded yet

    ok = rollout.verdict(web(rollout_=Rollout(version=2, status="succeeded", healthy=6)), 2)
    assert ok is not None and ok.code == 0 and ok.status == "succeeded"

    canary = Rollout(version=2, previous=1, canaries=2, healthy=2)
    waiting = rollout.verdict(web(rollout_=canary), 2)
    assert waiting is not None and waiting.code == 0 and "colony job promote web" in waiting.message
    # auto_promote: the manager promotes them; the rollout goes on
    assert rollout.verdict(web(rollout_=canary, auto_promote=True), 2) is None

    failed = Rollout(version=2, status="failed", reason="batch 1 not healthy after 10m")
    said = rollout.verdict(web(rollout_=failed), 2)
    assert said is not None and said.code == 1
    assert said.message == "the rollout of version 2 failed: batch 1 not healthy after 10m"


def test_a_reverted_rollout_says_why_and_to_which_version():
    after = JobRecord(
        name="web", version=3, spec=web().spec, replicas=6, stable=1,
        cause="auto-revert: version 2 failed: web-1-bb unhealthy (http): 500",
        rollout=Rollout(version=3, previous=2),
    )  # fmt: skip
    row = JobVersion(
        job="web",
        version=2,
        submitted=NOW,
        outcome="reverted",
        reason="reverted to version 1: web-1-bb unhealthy",
    )
    said = rollout.verdict(after, 2, row)
    assert said is not None and said.code == 1 and said.status == "reverted"
    assert said.message == (
        "version 2 failed and was reverted to version 1 (now version 3): web-1-bb unhealthy"
    )
    # without the history row, the new version's cause still says why
    said = rollout.verdict(after, 2)
    assert said is not None and "auto-revert: version 2 failed" in said.message

    newer = JobRecord(
        name="web", version=3, spec=web().spec, replicas=6, cause="bob@b: colony job run"
    )
    said = rollout.verdict(newer, 2)
    assert said is not None and said.code == 1 and said.status == "superseded"
    assert "superseded by version 3 (bob@b: colony job run)" in said.message
    gone = rollout.verdict(None, 2)
    assert gone is not None and gone.code == 1


def test_instance_news_says_failures_and_health_changes_once():
    said = lambda i: f"{i.id} is {i.state}"  # noqa: E731
    sick = instance(state="running", health="unhealthy", health_check="http",
                    health_output="HTTP 503")  # fmt: skip
    line = rollout.instance_news(sick, instance(state="running", health="healthy"), said)
    assert line is not None and line.plain == "✗ web-0-3fa2 unhealthy (http): HTTP 503"
    assert rollout.instance_news(sick, sick, said) is None
    failed = instance(state="failed", reason="exit code 3")
    line = rollout.instance_news(failed, sick, said)
    assert line is not None and line.plain == "✗ web-0-3fa2 is failed"
    well = rollout.instance_news(instance(state="running", health="healthy"), None, said)
    assert well is not None and well.plain == "✓ web-0-3fa2 healthy"


def test_progress_of_a_first_version_with_checks_waits_for_them_to_pass():
    checked = JobRecord(
        name="web", version=1, replicas=1,
        spec=JobSpec(name="web", task=Task(command="x"), replicas=1,
                     checks=[{"type": "exec", "command": "true"}]),
    )  # fmt: skip
    running = [instance(version=1, state="running", desired="run")]
    now = job.progress(checked, running)
    assert now is not None and not now.done and "0/1 healthy" in now.line("web")
    now = job.progress(checked, [instance(version=1, state="running", health="healthy")])
    assert now is not None and now.done
    halted = Rollout(version=1, status="failed", reason="web-0 not healthy after 5m")
    import msgspec

    assert job.rollout_halted(msgspec.structs.replace(checked, rollout=halted), 1) == (
        "the rollout of version 1 failed: web-0 not healthy after 5m"
    )
    assert job.rollout_halted(checked, 1) == ""


# --- history ---------------------------------------------------------------------------


RUN = "alice@a: colony job run web.yaml"


def test_history_lists_versions_newest_first_with_cause_and_outcome():
    versions = [
        JobVersion(job="web", version=1, submitted=NOW - 3600, cause=RUN, outcome="succeeded"),
        JobVersion(job="web", version=3, submitted=NOW - 5, cause="auto-revert: version 2 failed",
                   current=True),
        JobVersion(job="web", version=2, submitted=NOW - 60, cause=RUN, outcome="reverted",
                   reason="web-1 unhealthy"),
    ]  # fmt: skip
    lines = rendered(rollout.history_table(versions, NOW)).splitlines()
    assert lines[0].split() == ["VERSION", "SUBMITTED", "CAUSE", "OUTCOME"]
    assert lines[1].split()[:3] == ["*3", "5s", "ago"] and lines[1].rstrip().endswith("rolling out")
    assert lines[2].split()[:3] == ["2", "1m00s", "ago"]
    assert lines[2].rstrip().endswith("reverted: web-1 unhealthy")
    assert lines[3].split()[0] == "1" and "1h00m ago (" in lines[3]
    assert "spec" not in rollout.version_json(versions[0])


# --- job status: health and the last check --------------------------------------------


def test_health_column_says_how_long_and_marks_canaries():
    healthy = instance(state="running", health="healthy", healthy_since=NOW - 62)
    assert job.health_cell(healthy, NOW).plain == "healthy (1m02s)"
    sick = instance(state="running", health="unhealthy", health_at=NOW - 4, canary=True)
    assert job.health_cell(sick, NOW).plain == "unhealthy (4s) canary"
    assert job.health_cell(instance(state="starting"), NOW).plain == "—"
    assert job.health_cell(instance(state="exited", health="healthy"), NOW).plain == "—"


def test_last_check_asks_the_monitor_first_then_the_recorded_output():
    i = instance(state="running", health="unhealthy", health_check="http", health_output="503")
    live = [
        CheckState(instance=i.id, check="tcp http", ok=True, output="connected", at=NOW),
        CheckState(instance=i.id, check="http", ok=False, output="HTTP 500", at=NOW),
        CheckState(instance="other", check="http", ok=False, output="no", at=NOW),
    ]
    assert job.last_check(i, live) == "http: HTTP 500"
    assert job.last_check(i, []) == "http: 503"
    assert job.last_check(instance(), []) == "-"
    table = rendered(job.instance_table([i], NODES, NOW, live)).splitlines()
    assert "LAST CHECK" in table[0] and "http: HTTP 500" in table[1]


# --- endpoints --------------------------------------------------------------------------


def test_endpoints_one_line_each_host_port_instance_node_version():
    reply = EndpointsReply(
        job="web",
        port="http",
        endpoints=[
            Endpoint(instance="web-0-aa", node="node-1-aaaaaa", host="127.0.0.1", port=20001,
                     version=2),
            Endpoint(instance="web-1-bbbb", node="node-9", host="10.0.0.9", port=20002, version=3),
        ],
    )  # fmt: skip
    assert endpoints.endpoint_lines(reply, {"node-1-aaaaaa": "node-1"}) == [
        "127.0.0.1:20001  web-0-aa    node-1  2",
        "10.0.0.9:20002   web-1-bbbb  node-9  3",
    ]
    assert endpoints.endpoint_lines(EndpointsReply(job="web"), {}) == ["web: no healthy endpoints"]
    assert '"stale": true' in endpoints.endpoints_json(reply, True)


# --- drain and status -------------------------------------------------------------------


def test_drain_progress_counts_what_is_left_on_the_node():
    record = NodeRecord(node="n2", name="node-2", drain="draining", drain_deadline=NOW + 600)
    left = node.left_on("n2", [
        instance(node="n2", state="running"),
        instance(id="b", node="n2", desired="stop", state="running"),  # stopping: still there
        instance(id="c", node="n2", desired="stop", state="exited"),
        instance(id="d", node="n1", state="running"),
    ])  # fmt: skip
    assert [i.id for i in left] == ["web-0-3fa2", "b"]
    assert node.drain_line(record, 2, NOW) == "2 instances left on node-2 (deadline in 10m00s)"
    late = NodeRecord(node="n2", name="node-2", drain="draining", drain_deadline=NOW - 1)
    assert node.drain_line(late, 1, NOW) == "1 instance left on node-2 (deadline passed: stopping)"
    drained = NodeRecord(node="n2", name="node-2", drain="drained")
    assert node.drain_line(drained, 0, NOW) == "node-2 is drained (empty)"


def test_status_says_why_a_node_takes_no_instances():
    shown = status.NodeStatus(id="n2", name="node-2", reachable=True, drain="draining")
    assert status.scheduling(shown).plain == " (draining)"
    assert "draining" in rendered(status.table([shown]))
    assert status.scheduling(status.NodeStatus(id="n", name="n", eligible=False)).plain == (
        " (ineligible)"
    )
    assert status.scheduling(status.NodeStatus(id="n", name="n")).plain == ""
    assert shown.to_json()["drain"] == "draining"


# --- events -----------------------------------------------------------------------------


def change(kind: str, id: str, detail: dict, version: int = 2) -> Change:
    return Change(index=9, kind=kind, id=id, version=version, log_index=9, ts=NOW, detail=detail)


def test_events_say_health_canaries_rollouts_and_drains():
    said = events.Summaries({"n1": "node-1"})
    base = {"id": "web-0-aa", "job": "web", "node": "n1", "version": 2, "desired": "run"}
    placed = said(change("instance", "web-0-aa", {**base, "state": "pending", "slot": 0,
                                                  "canary": True}))  # fmt: skip
    assert placed == "instance web-0-aa placed on node-1 (slot 0, v2, canary)"
    said(change("instance", "web-0-aa", {**base, "state": "running", "pid": 7}))
    sick = {**base, "state": "running", "health": "unhealthy", "health_check": "http",
            "health_output": "HTTP 500"}  # fmt: skip
    assert said(change("instance", "web-0-aa", sick)) == (
        "instance web-0-aa on node-1 unhealthy (http): HTTP 500"
    )

    job_v1 = {"name": "web", "version": 2, "status": "running", "replicas": 3,
              "rollout": {"version": 2, "status": "running", "batch": 0}}  # fmt: skip
    said(change("job", "web", job_v1))
    batch = {**job_v1, "rollout": {"version": 2, "status": "running", "batch": 1}}
    assert said(change("job", "web", batch)) == "job web v2 rollout batch 1 started"
    failed = {**job_v1, "rollout": {"version": 2, "status": "failed", "reason": "deadline"}}
    assert said(change("job", "web", failed)) == "job web v2 rollout failed: deadline"
    reverted = {**failed, "version": 3, "cause": "auto-revert: version 2 failed: deadline"}
    assert said(change("job", "web", reverted)) == (
        "job web v3 submitted (auto-revert: version 2 failed: deadline, 3 replicas)"
    )

    node_ = {"node": "n2", "name": "node-2", "status": "alive", "eligible": True}
    said(change("node", "n2", node_))
    draining = {**node_, "eligible": False, "drain": "draining", "drain_reason": "maintenance"}
    assert said(change("node", "n2", draining)) == "node node-2 draining: maintenance"
    drained = {**draining, "drain": "drained"}
    assert said(change("node", "n2", drained)) == "node node-2 drained (empty)"
    assert said(change("node", "n2", node_)) == "node node-2 undrained (eligible again)"


# --- arguments ---------------------------------------------------------------------------


def test_new_verbs_teach_with_examples(capsys):
    for verb in ("history", "promote", "rollback", "endpoints"):
        code, out, _ = colony(capsys, "job", verb, "--help")
        assert code == 0 and f"colony job {verb}" in out.split("examples:")[1], verb
        assert "--json" in out and "--server" in out
    for verb in ("drain", "undrain"):
        code, out, _ = colony(capsys, "node", verb, "--help")
        assert code == 0 and f"colony node {verb}" in out.split("examples:")[1], verb


@pytest.mark.parametrize(
    "argv, says",
    [
        (["job", "rollback", "web", "0"], "must be a version number (1 or more), not '0'"),
        (["job", "rollback", "web", "latest"], "must be a version number"),
        (["job", "promote", "Web"], "'Web' is not a job name"),
        (["job", "endpoints", "[/]"], "'[/]' is not a job name"),
        (["node", "drain", "node-2", "--deadline", "soon"], "is not a duration"),
        (["node", "drain", "node-2", "--deadline", "8d"], "is not a duration"),
        (["node", "drain", "node-2", "--deadline", "200h"], "must be at most"),
    ],
)
def test_bad_arguments_of_the_new_verbs_are_refused(capsys, argv, says):
    code, _, err = colony(capsys, *argv)
    assert code == 2 and says in err, err


def test_drain_of_a_node_the_state_dir_does_not_have_names_those_it_has(tmp_path, capsys):
    from colony.cli.local.plan import plan
    from colony.cli.local.write import write_nodes
    from colony.shared.statedir import StateDir

    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(2, 21000))
    code, _, err = colony(capsys, "node", "drain", "node-9", "--state-dir", str(state.path))
    assert code == 1 and "no node 'node-9'" in err and "node-1, node-2" in err


def test_cause_names_who_and_what():
    said = rollout.cause("job", "run", "web.yaml")
    assert "@" in said and said.endswith(": colony job run web.yaml")
    assert len(rollout.cause("job", "run", "x" * 5000)) == rollout.CAUSE_MAX


class FakeBus:
    """Answers the endpoints request as told, and keeps one published set (a pure stand-in:
    what is tested is what `endpoints.current` makes of each answer)."""

    def __init__(self, answer, kept=None) -> None:
        self.answer, self.kept = answer, kept

    async def request(self, subject, request, timeout):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def last_message(self, stream, subject):
        assert stream == "COLONY_ENDPOINTS" and subject.name.endswith(".web")
        return self.kept


def test_endpoints_come_from_the_manager_else_from_the_last_set_published_said_stale():
    import asyncio

    from colony.shared.bus import NoResponders, RemoteError

    fresh = EndpointsReply(job="web", port="http", endpoints=[])
    kept = EndpointsReply(job="web", port="http", epoch=3)
    assert asyncio.run(endpoints.current(FakeBus(fresh, kept), "web", "")) == (fresh, False)
    asked = FakeBus(NoResponders("no service answers"), kept)
    assert asyncio.run(endpoints.current(asked, "web", "")) == (kept, True)
    with pytest.raises(endpoints.EndpointsError, match="published is of port 'http', not 'admin'"):
        asyncio.run(endpoints.current(asked, "web", "admin"))
    with pytest.raises(endpoints.EndpointsError, match="no manager answers, and no manager has"):
        asyncio.run(endpoints.current(FakeBus(NoResponders("x")), "web", ""))
    unknown = FakeBus(RemoteError("colony.endpoints.get", 404, "no job named 'web'"))
    with pytest.raises(endpoints.EndpointsError, match="no job named 'web'") as refused:
        asyncio.run(endpoints.current(unknown, "web", ""))
    assert refused.value.code == 404


def test_a_changed_field_reads_old_to_new_and_a_script_as_its_changed_lines():
    assert rollout.change_line(SpecChange("resources.memory", "64MiB", "128MiB")) == (
        "  resources.memory: 64MiB -> 128MiB"
    )
    assert rollout.change_line(SpecChange("task.env.A", "", "1")).endswith("(not set) -> 1")
    script = SpecChange("task.args[1]", "import os\nprint(1)\nrun()", "import os\nprint(2)\nrun()")
    assert rollout.change_line(script).splitlines() == [
        "  task.args[1]:",
        "      -print(1)",
        "      +print(2)",
    ]
