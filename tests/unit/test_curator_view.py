"""The curator's view and issue 14's records: its own rollout progress, promotions and
drained nodes applied at commit, and several changes of one object from one entry."""

from __future__ import annotations

import msgspec

from colony.curator.view import View
from colony.shared.jobspec import JobSpec, Task
from colony.shared.messages import (
    Change,
    JobPromote,
    JobRecord,
    NodeDrained,
    NodeRecord,
    Rollout,
    RolloutProgress,
    Stored,
)

SPEC = JobSpec(name="web", task=Task(command="sleep", args=["60"]), replicas=3)


def with_rollout(**fields) -> View:
    view = View()
    rollout = Rollout(version=2, previous=1, **fields)
    view.jobs["web"] = JobRecord(name="web", version=2, spec=SPEC, replicas=3, rollout=rollout)
    view.specs[("web", 2)] = SPEC
    return view


def test_its_own_rollout_progress_applies_at_commit_and_its_end_ends_it():
    view = with_rollout()
    view.committed(RolloutProgress(job="web", version=2, batch=1, batch_started=5.0), 10, 6.0)
    rollout = view.jobs["web"].rollout
    assert (rollout.batch, rollout.batch_started, rollout.status, rollout.ended) == (
        1, 5.0, "running", 0.0,
    )  # fmt: skip
    view.committed(RolloutProgress(job="web", version=2, status="succeeded", placed=3), 11, 7.0)
    job = view.jobs["web"]
    assert (job.rollout.status, job.rollout.placed, job.rollout.ended, job.stable) == (
        "succeeded", 3, 7.0, 2,
    )  # fmt: skip
    # once ended (or about another version), progress changes nothing: as the jobs kind
    view.committed(RolloutProgress(job="web", version=2, status="failed"), 12, 8.0)
    view.committed(RolloutProgress(job="web", version=1, status="failed"), 12, 8.0)
    assert view.jobs["web"].rollout.status == "succeeded"


def test_a_failed_rollout_may_still_be_marked_reverted_keeping_where_it_ended():
    view = with_rollout()
    view.committed(RolloutProgress(job="web", version=2, batch=2, placed=4, healthy=1), 10, 6.0)
    failed = RolloutProgress(job="web", version=2, status="failed", reason="deadline")
    view.committed(failed, 11, 7.0)
    view.committed(RolloutProgress(job="web", version=2, status="reverted"), 11, 7.0)
    job = view.jobs["web"]
    assert (job.rollout.status, job.rollout.reason, job.rollout.batch, job.rollout.placed) == (
        "reverted", "deadline", 2, 4,
    )  # fmt: skip
    assert job.stable == 0


def test_a_promotion_and_a_drained_node_apply_at_commit():
    view = with_rollout(canaries=1)
    view.committed(JobPromote(job="web"), 10, 1.0)
    assert view.jobs["web"].rollout.promoted
    view.nodes["n1"] = NodeRecord(node="n1", eligible=False, drain="draining")
    view.committed(NodeDrained(node="n1"), 11, 1.0)
    assert view.nodes["n1"].drain == "drained" and not view.nodes["n1"].eligible


def test_an_older_change_keeps_what_the_curator_wrote_since():
    view = with_rollout()
    view.committed(RolloutProgress(job="web", version=2, batch=1), 20, 1.0)
    older = msgspec.to_builtins(msgspec.structs.replace(view.jobs["web"], blocked="no room"))
    del older["spec"]
    older["rollout"]["batch"] = 0
    assert view.apply(Change(index=5, kind="job", id="web", version=2, log_index=15, detail=older))
    assert view.jobs["web"].blocked == "no room" and view.jobs["web"].rollout.batch == 1


def test_of_several_changes_of_one_object_from_one_entry_the_last_wins():
    view = with_rollout()
    view.loaded("job", 10, [Stored("web", 2, msgspec.to_builtins(view.jobs["web"]))])
    detail = msgspec.to_builtins(view.jobs["web"])
    del detail["spec"]
    failed = {**detail, "rollout": {**detail["rollout"], "status": "failed"}}
    reverted = {**detail, "rollout": {**detail["rollout"], "status": "reverted"}}
    assert not view.apply(
        Change(index=3, kind="job", id="web", version=2, log_index=10, detail=failed)
    )
    assert view.apply(Change(index=7, kind="job", id="web", version=2, log_index=12, detail=failed))
    assert view.apply(
        Change(index=8, kind="job", id="web", version=2, log_index=12, detail=reverted)
    )
    assert not view.apply(
        Change(index=7, kind="job", id="web", version=2, log_index=12, detail=failed)
    )
    assert view.jobs["web"].rollout.status == "reverted"
