"""The linearizability checker accepts what a register can do and rejects what it cannot."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from colony.harness.linearizability import KV_REGISTER, Model, Operation, check


def put(client, value, call, ret, key="x"):
    return Operation(client, "put", key, value, None, call, ret)


def get(client, value, call, ret, key="x"):
    return Operation(client, "get", key, None, value, call, ret)


def cas(client, expected, new, swapped, call, ret, key="x"):
    return Operation(client, "cas", key, (expected, new), swapped, call, ret)


def accepted(history, **kwargs) -> bool:
    result = check(history, **kwargs)
    assert not result.unknown
    return result.linearizable


# --- Accepts ---------------------------------------------------------------------------


def test_an_empty_history_is_linearizable():
    assert accepted([])


def test_accepts_a_sequential_history():
    assert accepted(
        [
            get(0, None, 0, 1),
            put(0, 1, 2, 3),
            get(1, 1, 4, 5),
            put(1, 2, 6, 7),
            get(0, 2, 8, 9),
        ]
    )


def test_a_read_overlapping_a_write_may_see_either_value():
    write = put(0, 1, 0, 10)
    assert accepted([write, get(1, None, 1, 2)])
    assert accepted([write, get(1, 1, 1, 2)])
    # Both, in that order: the write took effect between the two reads.
    assert accepted([write, get(1, None, 1, 2), get(1, 1, 3, 4)])


def test_concurrent_writes_may_take_effect_in_either_order():
    writes = [put(0, 1, 0, 5), put(1, 2, 0, 5)]
    assert accepted([*writes, get(2, 1, 6, 7), get(3, 1, 8, 9)])
    assert accepted([*writes, get(2, 2, 6, 7), get(3, 2, 8, 9)])
    # A read inside the writes may see the first while a later one sees the second.
    assert accepted([*writes, get(2, 2, 1, 2), get(3, 1, 6, 7)])


def test_operations_touching_at_one_instant_count_as_concurrent():
    # Timestamps of different clients only agree so far: never reject over a tie.
    assert accepted([put(0, 1, 0, 1), get(1, None, 1, 2)])


def test_accepts_cas_successes_and_failures():
    assert accepted(
        [
            cas(0, None, 1, True, 0, 1),  # None: only if absent
            cas(1, None, 2, False, 2, 3),
            cas(0, 0, 2, False, 4, 5),
            cas(1, 1, 2, True, 6, 7),
            get(0, 2, 8, 9),
        ]
    )


def test_of_two_concurrent_equal_cas_one_may_win():
    assert accepted(
        [put(0, 0, 0, 1), cas(1, 0, 1, True, 2, 5), cas(2, 0, 1, False, 2, 5), get(0, 1, 6, 7)]
    )


def test_a_put_that_never_returned_may_be_seen_later():
    assert accepted([put(0, 1, 0, None), get(1, None, 1, 2), get(1, 1, 100, 101)])


def test_a_put_that_never_returned_may_never_take_effect():
    assert accepted([put(0, 1, 0, None), get(1, None, 1, 2), get(1, None, 100, 101)])


def test_a_pending_cas_may_or_may_not_have_swapped():
    start = put(0, 0, 0, 1)
    assert accepted([start, cas(1, 0, 1, None, 2, None), get(2, 1, 10, 11)])
    assert accepted([start, cas(1, 0, 1, None, 2, None), get(2, 0, 10, 11)])


def test_a_pending_get_constrains_nothing():
    assert accepted([put(0, 1, 0, 1), get(1, "anything", 2, None)])


def test_keys_are_independent_registers():
    assert accepted(
        [
            put(0, 1, 0, 1, key="a"),
            put(0, 2, 2, 3, key="b"),
            get(1, 1, 4, 5, key="a"),
            get(1, 2, 4, 5, key="b"),
            get(1, None, 6, 7, key="c"),
        ]
    )


# --- Rejects ---------------------------------------------------------------------------


def rejected(history, **kwargs):
    result = check(history, **kwargs)
    assert result.violation, result.explanation
    return result


def test_rejects_a_stale_read_after_an_acknowledged_write():
    result = rejected([put(0, 1, 0, 1), get(1, None, 2, 3)])
    assert result.key == "x"
    assert result.stuck == get(1, None, 2, 3)
    rejected([put(0, 1, 0, 1), put(0, 2, 2, 3), get(1, 1, 4, 5)])


def test_rejects_a_read_of_a_value_never_written():
    result = rejected([put(0, 1, 0, 1), get(1, 7, 2, 3)])
    assert result.linearized == (put(0, 1, 0, 1),)
    assert "get('x') -> 7" in result.explanation


def test_rejects_two_sequential_equal_cas_both_succeeding():
    rejected([put(0, 0, 0, 1), cas(1, 0, 1, True, 2, 3), cas(2, 0, 1, True, 4, 5)])


def test_rejects_a_cas_failing_although_it_matched():
    rejected([put(0, 0, 0, 1), cas(1, 0, 1, False, 2, 3)])


def test_rejects_reads_flipping_back_although_each_client_looks_fine():
    # w(1) || w(2), then 1, 2, 1 by calls that do not overlap: whichever write
    # went last, the value cannot return to the other one. No client on its
    # own saw anything odd.
    history = [
        put(0, 1, 0, 5),
        put(1, 2, 0, 5),
        get(2, 1, 6, 7),
        get(3, 2, 8, 9),
        get(2, 1, 10, 11),
    ]
    result = rejected(history)
    assert result.key == "x"
    # The best try lets 2 be overwritten by 1 so that the first read fits,
    # and then the second read cannot.
    assert result.linearized == (put(1, 2, 0, 5), put(0, 1, 0, 5), get(2, 1, 6, 7))
    assert result.stuck == get(3, 2, 8, 9)
    assert "longest linearizable prefix found has 3 operations" in result.explanation


def test_rejects_a_pending_put_seen_and_then_unseen():
    rejected([put(0, 1, 0, None), get(1, 1, 5, 6), get(1, None, 7, 8)])


def test_the_failing_key_is_reported_among_good_ones():
    history = [
        put(0, 1, 0, 1, key="good"),
        put(0, 1, 0, 1, key="bad"),
        get(1, 1, 2, 3, key="good"),
        get(1, None, 2, 3, key="bad"),
    ]
    assert rejected(history).key == "bad"


# --- Budgets, validation, other models -------------------------------------------------


def test_out_of_budget_is_unknown_not_a_verdict():
    history = [put(0, 1, 0, 1), get(1, 1, 2, 3), get(1, 1, 4, 5)]
    result = check(history, max_steps=2)
    assert result.unknown
    assert not result.linearizable
    assert not result.violation
    assert result.key == "x"
    assert check(history, max_steps=1000).linearizable


def test_a_timeout_already_passed_is_unknown():
    # The clock is looked at before the first step, so this does not depend on speed.
    assert check([put(0, 1, 0, 1)], timeout=0.0).unknown


def test_rejects_a_return_before_the_call():
    with pytest.raises(ValueError, match="cannot return before"):
        check([put(0, 1, 2, 1)])


def test_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown operation kind"):
        check([Operation(0, "append", "x", 1, None, 0, 1)])


COUNTER = Model(
    name="counter",
    initial=0,
    step=lambda n, op: (True, n + op.input) if op.kind == "add" else (op.output == n, n),
)


def test_other_models_plug_in():
    def add(client, amount, call, ret):
        return Operation(client, "add", "c", amount, None, call, ret)

    def read(client, value, call, ret):
        return Operation(client, "read", "c", None, value, call, ret)

    history = [add(0, 1, 0, 10), add(1, 2, 0, 10), read(2, 2, 1, 2), read(2, 3, 11, 12)]
    assert check(history, COUNTER).linearizable
    assert check([*history, read(2, 1, 13, 14)], COUNTER).violation


# --- Property: a real linearizable register is always accepted ------------------------


def simulate(rng: random.Random, clients: int, per_client: int, keys=("x",), pending=0.03):
    """A history of a register that is linearizable by construction.

    Every client issues operations one after another; each takes effect at a
    point drawn uniformly inside its interval, and the outputs are what a
    register applying them in that order returns. A pending operation takes
    effect at some point after its call, or never. Every written value is
    unique, so a test can tell which operation wrote it.
    """
    intervals = []
    for client in range(clients):
        t = rng.uniform(0, 1)
        for _ in range(per_client):
            end = t + rng.expovariate(1.0)
            intervals.append((t, end, client))
            t = end + rng.expovariate(4.0)
    intervals.sort()

    values = itertools.count(1)
    written: dict[str, list[int]] = {key: [] for key in keys}
    planned = []  # (point of effect or None, operation with its output still unknown)
    for call, end, client in intervals:
        key = rng.choice(keys)
        kind = rng.choices(["get", "put", "cas"], weights=[5, 3, 2])[0]
        if kind == "put":
            arg: object = next(values)
            written[key].append(arg)
        elif kind == "cas":
            # Mostly a value written recently, so that a good share succeed.
            recent = [None, *written[key][-3:]]
            arg = (rng.choice(recent), next(values))
            written[key].append(arg[1])
        else:
            arg = None
        is_pending = rng.random() < pending
        if is_pending:
            point = rng.uniform(call, end + 5.0) if rng.random() < 0.5 else None
        else:
            point = rng.uniform(call, end)
        op = Operation(client, kind, key, arg, None, call, None if is_pending else end)
        planned.append((point, op))

    register: dict[str, object] = {}
    outputs: dict[int, object] = {}
    effective = sorted((p, n) for n, (p, _) in enumerate(planned) if p is not None)
    for _, n in effective:
        op = planned[n][1]
        now = register.get(op.key)
        if op.kind == "put":
            register[op.key] = op.input
        elif op.kind == "get":
            outputs[n] = now
        else:
            expected, new = op.input
            outputs[n] = now == expected
            if now == expected:
                register[op.key] = new
    return [
        dataclasses.replace(op, output=None if op.pending else outputs.get(n))
        for n, (_, op) in enumerate(planned)
    ]


def completed_reads(history):
    return [n for n, op in enumerate(history) if op.kind == "get" and not op.pending]


@pytest.mark.parametrize("seed", range(40))
def test_random_linearizable_histories_are_accepted_and_corruptions_rejected(seed):
    rng = random.Random(seed)
    clients = rng.randint(2, 5)
    keys = ("x",) if seed % 2 else ("x", "y", "z")
    history = simulate(rng, clients, rng.randint(10, 60), keys=keys)
    result = check(history)
    assert result.linearizable, result.explanation

    reads = completed_reads(history)
    # A read of a value nobody ever wrote can never fit.
    n = rng.choice(reads)
    corrupt = list(history)
    corrupt[n] = dataclasses.replace(history[n], output="never written")
    result = check(corrupt)
    assert result.violation, result.explanation
    assert result.key == history[n].key

    # Nor can a read of a value whose only writer was called after the read returned.
    writers = [op for op in history if op.kind in ("put", "cas")]
    later = [
        (r, w)
        for r in reads
        for w in writers
        if w.key == history[r].key and w.call > history[r].ret
    ]
    if later:
        r, w = rng.choice(later)
        corrupt = list(history)
        corrupt[r] = dataclasses.replace(
            history[r], output=w.input if w.kind == "put" else w.input[1]
        )
        result = check(corrupt)
        assert result.violation, result.explanation


def brute_force(history) -> bool:
    """Linearizable by trying every order (only for a handful of operations)."""

    def fits(left, state) -> bool:
        if all(op.pending for op in left):
            return True  # what is left never took effect
        for op in left:
            # `op` can go next unless something left returned before it was called.
            if any(o is not op and o.ret is not None and o.ret < op.call for o in left):
                continue
            ok, after = KV_REGISTER.step(state, op)
            if ok and fits([o for o in left if o is not op], after):
                return True
        return False

    return fits(list(history), KV_REGISTER.initial)


def small_random_history(rng: random.Random) -> list[Operation]:
    """A few operations with arbitrary outputs on a coarse time grid (so ties happen)."""
    ops = []
    for _ in range(rng.randint(1, 6)):
        call = rng.randint(0, 8)
        ret = None if rng.random() < 0.15 else call + rng.randint(0, 3)
        client = rng.randint(0, 3)
        kind = rng.choice(["get", "put", "cas"])
        if kind == "get":
            ops.append(get(client, rng.choice([None, 1, 2]), call, ret))
        elif kind == "put":
            ops.append(put(client, rng.choice([1, 2]), call, ret))
        else:
            expected, new = rng.choice([None, 1, 2]), rng.choice([1, 2])
            ops.append(cas(client, expected, new, rng.random() < 0.5, call, ret))
    return ops


def test_agrees_with_trying_every_order_on_small_histories():
    rng = random.Random(1)
    verdicts = set()
    for _ in range(1500):
        history = small_random_history(rng)
        expected = brute_force(history)
        assert check(history).linearizable == expected, history
        verdicts.add(expected)
    assert verdicts == {True, False}


def test_a_large_history_takes_a_modest_number_of_steps():
    # 5 clients x 200 operations on one key; a step bound rather than a time
    # bound keeps the test independent of the machine's speed.
    history = simulate(random.Random(7), clients=5, per_client=200)
    assert any(op.pending for op in history)
    assert any(op.kind == "cas" and op.output is True for op in history)
    result = check(history, max_steps=200_000)
    assert result.linearizable, result.explanation
