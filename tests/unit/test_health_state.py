"""The monitor's health decisions (pure): thresholds, grace, flapping, runs."""

from __future__ import annotations

import itertools

from colony.monitor.health import Decision, RunHealth, changed_runs
from colony.shared.jobspec import HealthCheck
from colony.shared.messages import CheckTarget

RUN = 1_700_000_000.0
HTTP = HealthCheck(type="http", port="web", healthy_threshold=2, unhealthy_threshold=3)
TCP = HealthCheck(type="tcp", port="admin", healthy_threshold=1, unhealthy_threshold=1)


def target(*checks: HealthCheck, id: str = "web-0-aaaa", run: float = RUN) -> CheckTarget:
    return CheckTarget(id=id, job="web", version=1, run=run, host="127.0.0.1", checks=list(checks))


def results(health: RunHealth, index: int, oks: str, start: float = RUN + 100) -> list:
    """Feed check `index` one result per letter of `oks` (p: pass, f: fail), a second
    apart: the decision after each."""
    return [health.record(index, ok == "p", f"result {n}", start + n) for n, ok in enumerate(oks)]


def test_without_checks_a_run_is_healthy_at_once_and_only_once():
    health = RunHealth.of(target())
    assert health.start() == Decision("healthy")
    assert health.start() is None
    assert health.states() == []


def test_healthy_after_the_threshold_of_passes_in_a_row_then_only_transitions():
    health = RunHealth.of(target(HTTP))
    assert health.start() is None  # checks decide
    decided = results(health, 0, "pppp")
    assert decided == [None, Decision("healthy", "http web", "result 1"), None, None]
    assert health.health == "healthy"


def test_unhealthy_after_the_threshold_of_failures_in_a_row_is_the_first_decision():
    health = RunHealth.of(target(HTTP))
    decided = results(health, 0, "ffff")
    assert decided == [None, None, Decision("unhealthy", "http web", "result 2"), None]
    [state] = health.states()
    assert (state.ok, state.passes, state.failures, state.health) == (False, 0, 4, "unhealthy")
    assert state.output == "result 3" and state.check == "http web"


def test_back_to_healthy_takes_the_healthy_threshold_again():
    health = RunHealth.of(target(HTTP))
    decided = results(health, 0, "pp" + "fff" + "pp")
    healthy, unhealthy = Decision("healthy", "http web", ""), Decision("unhealthy", "http web", "")
    said = [d and Decision(d.health, d.check, "") for d in decided]
    assert said == [None, healthy, None, None, unhealthy, None, healthy]


def test_every_check_must_pass_and_any_check_failing_decides():
    health = RunHealth.of(target(HTTP, TCP))
    assert health.record(1, True, "connected", RUN + 1) is None  # the http check has not
    assert health.record(0, True, "200", RUN + 2) is None
    assert health.record(0, True, "200", RUN + 3) == Decision("healthy", "http web", "200")
    # the tcp check's one failure is its threshold, the http one still passes
    assert health.record(1, False, "refused", RUN + 4) == Decision(
        "unhealthy", "tcp admin", "refused"
    )
    assert health.record(0, True, "200", RUN + 5) is None  # tcp still has 1 failure in a row
    assert health.record(1, True, "connected", RUN + 6) == Decision(
        "healthy", "tcp admin", "connected"
    )


def test_failures_within_the_grace_do_not_count_but_break_the_passes():
    graced = HealthCheck(
        type="tcp", port="web", grace=10, healthy_threshold=2, unhealthy_threshold=2
    )
    health = RunHealth.of(target(graced))
    decided = [health.record(0, False, "refused", RUN + t) for t in (1, 2, 3, 9.5)]
    assert decided == [None] * 4 and health.health == ""
    assert health.states()[0].failures == 0
    assert health.record(0, True, "ok", RUN + 9.7) is None
    assert health.record(0, False, "refused", RUN + 9.9) is None  # passes start over
    assert health.record(0, True, "ok", RUN + 10.1) is None
    assert health.record(0, True, "ok", RUN + 10.2) == Decision("healthy", "tcp web", "ok")
    # past the grace, failures count
    assert health.record(0, False, "refused", RUN + 11) is None
    assert health.record(0, False, "refused", RUN + 12) == Decision(
        "unhealthy", "tcp web", "refused"
    )


def test_flapping_never_moves_faster_than_the_thresholds():
    """Every pattern of results: between two decisions there are at least the threshold's
    results in a row of the kind decided, and no decision repeats the health."""
    check = HealthCheck(type="tcp", port="web", healthy_threshold=3, unhealthy_threshold=2)
    for pattern in itertools.product("pf", repeat=10):
        health = RunHealth.of(target(check))
        decided = results(health, 0, "".join(pattern))
        last = ""
        for n, decision in enumerate(decided):
            if decision is None:
                continue
            threshold = 3 if decision.health == "healthy" else 2
            want = "p" if decision.health == "healthy" else "f"
            assert n + 1 >= threshold and set(pattern[n + 1 - threshold : n + 1]) == {want}
            assert decision.health != last
            last = decision.health
    # alternating results never decide anything
    health = RunHealth.of(target(check))
    assert results(health, 0, "pf" * 20) == [None] * 40


def test_a_new_run_starts_over_and_a_gone_instance_stops():
    checking = {"web-0-aaaa": RUN, "web-1-bbbb": RUN}
    restarted = target(HTTP, run=RUN + 30)
    new = target(HTTP, id="web-2-cccc")
    start, stop = changed_runs(checking, [restarted, new])
    assert start == [restarted, new]
    assert sorted(stop) == ["web-0-aaaa", "web-1-bbbb"]  # a newer run; gone
    # the same runs again change nothing; a late set with an older run is not taken
    assert changed_runs({"web-0-aaaa": RUN}, [target(HTTP)]) == ([], [])
    assert changed_runs({"web-0-aaaa": RUN}, [target(HTTP, run=RUN - 5)]) == ([], [])
    # a new run's health is its own: it starts undecided
    old = RunHealth.of(target(HTTP))
    results(old, 0, "pp")
    assert old.health == "healthy" and RunHealth.of(restarted).health == ""
