"""The supervisor's restart policy and how it describes an exit."""

import pytest

from colony.bootstrapper.state import RestartPolicy, describe_exit


def delays(policy: RestartPolicy, child: str, count: int, ran_for: float = 0.0) -> list[float]:
    return [policy.next_delay(child, ran_for) for _ in range(count)]


def test_backoff_doubles_from_initial():
    assert delays(RestartPolicy(), "monitor", 5) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_backoff_is_capped_at_maximum():
    policy = RestartPolicy(initial=1.0, maximum=5.0)
    assert delays(policy, "monitor", 6) == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_backoff_resets_after_a_stable_run():
    policy = RestartPolicy(initial=1.0, stable_after=10.0)
    assert delays(policy, "monitor", 3, ran_for=0.5) == [1.0, 2.0, 4.0]
    assert policy.next_delay("monitor", ran_for=10.0) == 1.0  # forgiven
    assert policy.next_delay("monitor", ran_for=0.5) == 2.0  # and counting again


def test_a_run_just_short_of_stable_is_not_forgiven():
    policy = RestartPolicy(initial=1.0, stable_after=10.0)
    policy.next_delay("monitor", 0.0)
    assert policy.next_delay("monitor", 9.99) == 2.0


def test_backoff_is_per_child():
    policy = RestartPolicy(initial=1.0)
    assert delays(policy, "monitor", 3) == [1.0, 2.0, 4.0]
    assert policy.next_delay("membership", 0.0) == 1.0
    assert policy.next_delay("monitor", 0.0) == 8.0


def test_a_long_crash_loop_stays_at_the_maximum():
    policy = RestartPolicy()
    assert delays(policy, "monitor", 1100)[-1] == policy.maximum


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exited cleanly"),
        (1, "exited with code 1"),
        (137, "exited with code 137"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(code, text):
    assert describe_exit(code) == text
