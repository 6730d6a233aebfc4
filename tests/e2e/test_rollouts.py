"""End to end, on a real `colony up --nodes 5` cluster: new versions shipped, undone and
moved while clients keep asking, as issue 14's "Bad input and faults" lists them.

Every job runs `colony.harness.webapp` (an HTTP service whose /health a test turns
sick, flapping or back) with an HTTP health check on it. What clients suffer is
measured by `rollouts.Prober`: a loop that asks the job's endpoints (the request
programs use) and GETs one of them per request; what the cluster committed, by
`rollouts.Sampler` (the job's instances read through the voters every 0.2 s, each
sample checked) and the CLI (`colony job history|promote|rollback`, `colony node
drain`). Each test purges its jobs; the least destructive come first, the manager's
node killed last.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from _cli import colony
from _colony import SETTLE, Colony, labelled_cluster, on_host

from colony.harness.jobs import table, wanted
from colony.harness.processes import wait_for
from colony.harness.rollouts import (
    EndpointWatch,
    Prober,
    Sampler,
    all_healthy,
    body,
    healthy,
    nats_urls,
    rollout_ended,
    rollout_violations,
    sick,
    web_job,
)
from colony.shared.messages import InstanceRecord, JobRecord

pytestmark = pytest.mark.e2e

NODES = 5
DEAD = 60
"""Seconds for a killed manager's node to be replaced as manager (lease, election)."""
ROLLOUT = 90
"""Seconds for a small rollout to end (placements, starts, checks, min_healthy_time)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with labelled_cluster(tmp_path_factory.mktemp("colony") / "state", NODES) as here:
        yield here


# --- reading what happened ----------------------------------------------------------------


def job_record(cluster: Colony, job: str) -> JobRecord | None:
    return cluster.jobs.jobs().get(job)


def rolled_out(cluster: Colony, job: str, version: int, ends=("succeeded",), timeout=ROLLOUT):
    """The job's record once its rollout of `version` ended as one of `ends`."""

    return wait_for(
        lambda: rollout_ended(job_record(cluster, job), version, ends),
        timeout,
        f"{job}'s rollout of version {version} {'/'.join(ends)}",
    )


def history(cluster: Colony, job: str) -> dict[int, dict]:
    """`colony job history JOB --json`, by version."""
    shown = json.loads(colony("job", "history", job, "--json", state=cluster.state).stdout)
    versions = shown["versions"] if isinstance(shown, dict) else shown
    return {v["version"]: v for v in versions}


def refused(cluster: Colony, *args: str, said: str) -> str:
    """Run a verb that must fail: nonzero, no traceback, its message matching `said`."""
    done = colony(*args, state=cluster.state, check=False)
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, f"colony {' '.join(args)} succeeded: {text}"
    assert "Traceback" not in text, text
    assert re.search(said, text, re.I), f"colony {' '.join(args)} said: {text}"
    print(f"\ncolony {' '.join(args)} -> exit {done.returncode}: {text}")
    return text


def answers(instances: list[InstanceRecord]) -> set[str]:
    """What each instance answers on GET / ("<id> v<version>"), by asking it."""
    return {body("127.0.0.1", i.ports["http"]) for i in instances}


# --- bad input, canaries, rollback by hand --------------------------------------------------


def test_the_verbs_refuse_unknown_names_missing_rollouts_and_versions_clearly(cluster, tmp_path):
    refused(cluster, "job", "promote", "no-such-job", said=r"no-such-job")
    refused(cluster, "job", "rollback", "no-such-job", said=r"no-such-job")
    refused(cluster, "job", "history", "no-such-job", said=r"no-such-job")
    refused(cluster, "node", "drain", "no-such-node", said=r"no-such-node")
    refused(cluster, "node", "undrain", "no-such-node", said=r"no-such-node")
    # a check on a port the job does not have: a spec error, nothing sent
    bad = web_job("bad-port", 1, check={"port": "admin"})
    path = tmp_path / "bad-port.yaml"
    path.write_text(json.dumps(bad))
    refused(cluster, "job", "run", str(path), said=r"admin")
    assert "bad-port" not in cluster.jobs.jobs()


def test_a_canary_waits_beside_the_old_version_until_promoted_then_a_rollback_by_hand(
    cluster, tmp_path
):
    update = {"canary": 1, "max_parallel": 2, "min_healthy_time": "1s"}
    cluster.run(web_job("canary", 3, update=update), tmp_path)
    first = rolled_out(cluster, "canary", 1)
    assert first.stable == 1
    old = {i.id for i in cluster.jobs.until(all_healthy(3, 1), "canary", SETTLE, "3 healthy")}
    try:
        refused(cluster, "job", "promote", "canary", said=r"no rollout|not rolling|nothing")

        # version 2: its canary runs beside slot 0's old instance; `job run` says to promote
        ran = cluster.run(web_job("canary", 3, version="2", update=update), tmp_path)
        assert "promote" in ran.stdout + ran.stderr, ran.stdout + ran.stderr

        def canary_ready(seen: list[InstanceRecord]) -> list[InstanceRecord] | None:
            run = wanted(seen)
            canaries = [i for i in run if i.version == 2]
            ok = len(canaries) == 1 and canaries[0].canary and healthy(canaries[0])
            return run if ok and {i.id for i in run if i.version == 1} == old else None

        run = cluster.jobs.until(canary_ready, "canary", SETTLE, "a healthy canary beside v1")
        [canary] = [i for i in run if i.version == 2]
        assert canary.slot == 0 and canary.replaces in old, table(run)
        record = job_record(cluster, "canary")
        assert record.rollout.status == "running" and not record.rollout.promoted
        refused(cluster, "job", "rollback", "canary", "9", said=r"no version 9")
        refused(cluster, "job", "rollback", "canary", "2", said=r"runs version 2 now|nothing to")

        colony("job", "promote", "canary", state=cluster.state)
        rolled_out(cluster, "canary", 2)
        done = cluster.jobs.until(all_healthy(3, 2), "canary", SETTLE, "3 healthy at v2")
        assert not {i.id for i in done} & old and canary.id in {i.id for i in done}
        assert answers(done) == {f"{i.id} v2" for i in done}
        refused(cluster, "job", "promote", "canary", said=r"no rollout|not rolling|nothing")

        # by hand: back to the last good version before this one (1), as version 3
        colony("job", "rollback", "canary", state=cluster.state)
        rollback = job_record(cluster, "canary").rollout
        if rollback.status == "running" and rollback.canaries and not rollback.promoted:
            # version 1's spec has a canary: its rollout waits for a promotion as any does
            colony("job", "promote", "canary", state=cluster.state)
        back = rolled_out(cluster, "canary", 3)
        assert back.version == 3 and back.stable == 3
        done = cluster.jobs.until(all_healthy(3, 3), "canary", SETTLE, "3 healthy at v3")
        assert answers(done) == {f"{i.id} v1" for i in done}  # version 1's spec
        versions = history(cluster, "canary")
        assert sorted(versions) == [1, 2, 3]
        assert [versions[v]["outcome"] for v in (1, 2, 3)] == ["succeeded"] * 3
        assert "rollback" in versions[3]["cause"], versions[3]
        assert "colony job run" in versions[1]["cause"], versions[1]
    finally:
        cluster.purge("canary")


# --- a broken version ----------------------------------------------------------------------


def test_a_version_whose_check_never_passes_halts_after_one_batch_and_reverts_unnoticed(
    cluster, tmp_path
):
    replicas, parallel = 4, 2
    update = {
        "max_parallel": parallel,
        "min_healthy_time": "1s",
        "healthy_deadline": "6s",
        "progress_deadline": "30s",
        "auto_revert": True,
    }
    cluster.run(web_job("rolling", replicas, update=update), tmp_path)
    rolled_out(cluster, "rolling", 1)
    old = {i.id for i in cluster.jobs.until(all_healthy(replicas, 1), "rolling", SETTLE, "v1")}

    def old_serves(instances: list[InstanceRecord], job: JobRecord | None) -> list[str]:
        serving = [i for i in instances if i.id in old and healthy(i)]
        return [] if len(serving) == replicas else [f"only {len(serving)} old ones healthy"]

    try:
        urls = nats_urls(cluster.state)
        with Prober(urls, "rolling") as probe:
            wait_for(lambda: probe.result.requests >= 20, 30, "the client's first requests")
            with Sampler(cluster.state, "rolling", old_serves) as seen:
                broken = web_job("rolling", replicas, version="2", health="fail", update=update)
                ran = cluster.run(broken, tmp_path, check=False)
                said = ran.stdout + ran.stderr
                assert ran.returncode != 0, said
                assert re.search(r"revert", said, re.I) and "Traceback" not in said, said
                rolled_out(cluster, "rolling", 3)
                cluster.jobs.until(all_healthy(replicas, 1), "rolling", SETTLE, "v1 alone")
            asked = probe.result.requests
            wait_for(lambda: probe.result.requests >= asked + 20, 30, "requests after")
        print(f"\nwhile version 2 failed and was reverted: {probe.result.describe()}")
        assert probe.result.requests > 50
        assert probe.result.failed == 0, probe.result.describe()
        assert probe.result.empty == 0, probe.result.describe()
        assert not seen.violations, seen.violations[:5]

        # halted after the first batch: version 2 only ever in its first max_parallel slots
        v2 = [r for records in seen.seen.values() for r in records if r.version == 2]
        assert v2 and {r.slot for r in v2} <= set(range(parallel)), table(v2)
        runs = [r.rollout for r in seen.records if r.rollout and r.rollout.version == 2]
        assert max(r.batch for r in runs) == 1, runs
        # version 3 is version 1's spec: the old instances are kept as they are
        assert {i.id for i in wanted(cluster.jobs.instances("rolling"))} == old
        versions = history(cluster, "rolling")
        assert versions[2]["outcome"] == "reverted", versions[2]
        assert versions[2]["reason"], versions[2]
        assert versions[3]["cause"].startswith("auto-revert"), versions[3]
        assert versions[3]["outcome"] == "succeeded", versions[3]
        print(f"version 2: {versions[2]['outcome']}: {versions[2]['reason']}")
    finally:
        cluster.purge("rolling")


# --- flapping ----------------------------------------------------------------------------


def test_a_flapping_instance_does_not_flap_the_endpoint_set(cluster, tmp_path):
    """Its check passes and fails in turn: never 3 of one kind in a row, so with both
    thresholds at 3 its health never changes, nor the set. Then failing for good, it
    leaves the set within its threshold's checks."""
    control = tmp_path / "control"
    check = {"interval": "300ms", "timeout": "300ms", "healthy_threshold": 3,
             "unhealthy_threshold": 3, "grace": "3s"}  # fmt: skip
    cluster.run(web_job("flappy", 2, control=control, check=check), tmp_path)
    rolled_out(cluster, "flappy", 1)
    first, other = cluster.jobs.until(all_healthy(2), "flappy", SETTLE, "2 healthy")
    both = tuple(sorted((first.id, other.id)))

    def checks_done() -> int:
        return int(body("127.0.0.1", first.ports["http"], "/checks"))

    # past the grace, where failures count
    wait_for(lambda: time.time() > first.started_at + 3, 10, "the grace over")
    try:
        with EndpointWatch(nats_urls(cluster.state), "flappy") as watch:
            sick(control, first.id, "flap")
            began = checks_done()
            wait_for(lambda: checks_done() >= began + 20, 30, "20 checks of the flapping one")
            assert all(p.ids == both for p in watch.seen), watch.seen
            [now] = [i for i in cluster.jobs.instances("flappy") if i.id == first.id]
            assert healthy(now) and now.restarts == 0, table([now])

            sick(control, first.id, "fail")
            failing = time.time()
            left = watch.until(lambda ids: first.id not in ids, 15, f"{first.id} gone")
            print(f"\nfailing for good: out of the set {left - failing:.2f} s later "
                  f"(3 checks 0.3 s apart)")  # fmt: skip
            sick(control, first.id, "ok")  # restarted for being unhealthy: healthy again
            watch.until(lambda ids: ids == both, SETTLE, "both back")
    finally:
        cluster.purge("flappy")


# --- drain ---------------------------------------------------------------------------------


def test_draining_the_node_of_a_job_s_only_instance_moves_it_healthy_first(cluster, tmp_path):
    here, there = cluster.others()[:2]
    spec = web_job("solo", 1, constraints=on_host(here, there), shutdown_delay="2s")
    cluster.run(spec, tmp_path)
    rolled_out(cluster, "solo", 1)
    [old] = cluster.jobs.until(all_healthy(1), "solo", SETTLE, "solo healthy")
    node = cluster.name_of(old.node)
    try:
        with (
            Prober(nats_urls(cluster.state), "solo") as probe,
            Sampler(cluster.state, "solo") as seen,
        ):
            wait_for(lambda: probe.result.requests >= 20, 30, "the client's first requests")
            began = time.monotonic()
            drained = colony("node", "drain", node, "--deadline", "120", state=cluster.state)
            took = time.monotonic() - began
            record = cluster.jobs.nodes()[old.node]
            assert record.drain == "drained" and not record.eligible, (drained.stdout, record)
            [new] = cluster.jobs.until(all_healthy(1), "solo", SETTLE, "solo moved")
            wait_for(lambda: seen.seen.get(old.id, [])[-1:] and old.id not in
                     {i.id for i in seen.last}, 30, f"{old.id} gone")  # fmt: skip
        assert new.node != old.node and cluster.name_of(new.node) in (here, there)
        assert new.slot == 0 and new.replaces == old.id, table([new])
        ready = seen.first(new.id, lambda r: r.healthy_since > 0).healthy_since
        stopped = seen.first(old.id, lambda r: r.desired == "stop").changed
        assert ready <= stopped, f"{old.id} stopped at {stopped}, {new.id} healthy at {ready}"
        assert probe.result.failed == 0 and probe.result.empty == 0, probe.result.describe()
        shown = colony("status", state=cluster.state).stdout
        assert re.search(rf"{node}\b.*drained", shown), shown
        print(f"\n{node} drained in {took:.1f} s; {new.id} healthy {stopped - ready:.2f} s "
              f"before {old.id} was stopped; client: {probe.result.describe()}")  # fmt: skip
    finally:
        colony("node", "undrain", node, state=cluster.state, check=False)
        cluster.purge("solo")
    record = cluster.jobs.nodes()[old.node]
    assert record.drain == "" and record.eligible, record


# --- the manager's node killed ----------------------------------------------------------------


def test_the_manager_s_node_killed_mid_rollout_the_next_manager_finishes_it(cluster, tmp_path):
    replicas, parallel = 5, 1
    others = cluster.others()
    first = cluster.manager()
    update = {"max_parallel": parallel, "min_healthy_time": "2s"}
    spec = web_job("steady", replicas, constraints=on_host(*others), update=update)
    cluster.run(spec, tmp_path)
    rolled_out(cluster, "steady", 1)
    cluster.jobs.until(all_healthy(replicas, 1), "steady", SETTLE, "v1 healthy")
    killed_at = 0.0
    try:
        check = rollout_violations(replicas, parallel, old=1, new=2)
        new = web_job("steady", replicas, "2", constraints=on_host(*others), update=update)
        cluster.run(new, tmp_path, "--detach")
        with Sampler(cluster.state, "steady", check) as seen:
            at_kill = wait_for(
                lambda: (
                    (r := job_record(cluster, "steady"))
                    and r.rollout
                    and r.rollout.batch >= 2
                    and r
                ),
                ROLLOUT,
                "the second batch of version 2",
            )
            cluster.crash(first.node, instances=True)
            killed_at = time.time()
            second = cluster.manager(above_epoch=first.epoch, timeout=DEAD)
            done = rolled_out(cluster, "steady", 2, timeout=ROLLOUT + DEAD)
            cluster.jobs.until(all_healthy(replicas, 2), "steady", SETTLE, "v2 healthy")
        assert at_kill.rollout.status == "running" and at_kill.rollout.healthy < replicas
        assert second.node != first.node
        assert not seen.violations, "\n".join(f"{t:.2f}: {v}" for t, v in seen.violations[:10])
        assert seen.samples > 20, seen.samples
        print(
            f"\nkilled {first.node} at batch {at_kill.rollout.batch}; epoch {first.epoch} -> "
            f"{second.epoch}; done {done.rollout.ended - killed_at:.1f} s later after "
            f"{done.rollout.batch} batches; {seen.samples} samples "
            f"({sum(seen.failed_reads.values())} reads failed), nothing wrong in any"
        )
    finally:
        cluster.purge("steady")
        if killed_at:
            colony("up", "--detach", state=cluster.state)
            cluster.nodes_alive([first.node])
