"""A linearizability checker for histories recorded by tests of the replicated store.

A test drives several clients against the store and records, for every
operation, when it was invoked, when (if ever) it returned and what it
returned. The history is *linearizable* if there is one total order of its
operations that

- respects real time: an operation that returned before another was invoked
  comes first in the order, and
- is a legal sequential run of a model (for the store: a register per key),
  every operation taking effect at one instant between its call and its
  return.

The search is Wing & Gong's, with Lowe's memoization, as in Porcupine and
Knossos's linear checker (the "WGL" checker). The calls and returns of a
partition's operations go into one time-ordered doubly linked list. The
search walks it from the front: at a call it tries to make that operation the
next to take effect (stepping the model); if that works, the call and its
return are *lifted* out of the list and the walk starts again from the front.
Reaching a *return* means that operation had to take effect already and none
of the choices made so far let it, so the last choice is undone (*unlifted*,
popped off a stack) and the walk goes on to the next candidate after it. A
cache of (set of operations taken effect, model state) pairs prunes every
configuration already explored: from the same pair, the rest of the search
would go exactly the same way, so it cannot succeed the second time either.
(Operations that never returned get a stronger rule, see `_search`.)

Histories are split into independent partitions first (for the key-value
store: by key). Linearizability is compositional (Herlihy & Wing's
"locality", the P-compositionality Porcupine exploits): a history is
linearizable iff each key's sub-history is, and checking several small
histories is exponentially cheaper than one large one.

The cost: a history that is linearizable usually takes a few steps per
operation. Proving that one is not means exhausting every order, which is
cheap while few operations overlap, but each operation that never returned
stays a candidate from its call on, and many of them on one key can make the
search exponential. Spread a test over many keys, or give a budget: past it
the answer is `unknown`, never a wrong verdict.

Everything here is pure: no I/O and no clock reads, except the optional
wall-clock `timeout` of `check`; give `max_steps` instead for a budget that
gives the same answer on every run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: its invocation, its response and their times."""

    client: str | int
    """Who issued it; only used to explain a failure (intervals decide the order)."""
    kind: str
    """What the model should do; for `KV_REGISTER`: "put", "get" or "cas"."""
    key: str
    """The key it works on: operations on different keys are checked apart."""
    input: object
    """The argument sent, e.g. the value of a put."""
    output: object
    """The result received; meaningless while `ret` is None."""
    call: float
    """When the client invoked it (monotonic seconds as the test client measured them)."""
    ret: float | None
    """When the response arrived; None if it never did (timeout, crash): the
    operation then may take effect at any time after `call`, or never."""

    @property
    def pending(self) -> bool:
        """Whether the call never returned, so its effect and output are unknown."""
        return self.ret is None


def _by_key(op: Operation) -> Hashable:
    return op.key


def _never(op: Operation) -> bool:
    return False


def _describe(op: Operation) -> str:
    output = "?" if op.pending else repr(op.output)
    return f"{op.kind}({op.key!r}, {op.input!r}) -> {output}"


@dataclass(frozen=True)
class Model(Generic[S]):
    """A sequential specification: what one partition may do, one operation at a time."""

    name: str
    initial: S
    """The state before any operation; states must be hashable (they are cached)."""
    step: Callable[[S, Operation], tuple[bool, S]]
    """`step(state, op) -> (ok, new_state)`: whether `op` with its recorded
    output is legal in `state`, and the state after it. For a pending op
    (`op.ret is None`) the output is unknown: accept it and apply its effect.
    Must be a pure function; the search calls it many times for the same op."""
    partition: Callable[[Operation], Hashable] = _by_key
    """Which independent sub-history an operation belongs to."""
    pure: Callable[[Operation], bool] = _never
    """Whether `op` never changes the state (a read): such an op that never
    returned constrains nothing, so it is dropped before the search."""
    describe: Callable[[Operation], str] = _describe
    """How an operation reads in an explanation."""


# --- The key-value register ------------------------------------------------------------


def _kv_step(state: object, op: Operation) -> tuple[bool, object]:
    kind = op.kind
    if kind == "get":
        return (op.pending or op.output == state), state
    if kind == "put":
        return True, op.input
    if kind == "cas":
        expected, new = op.input
        if op.pending:
            # It either happened (and then did what a cas does) or never did,
            # and "never" is covered by the search leaving it out.
            return True, (new if state == expected else state)
        if op.output is True:
            return state == expected, new
        if op.output is False:
            return state != expected, state
        raise ValueError(f"KV_REGISTER: a cas must output True or False, got {op!r}")
    raise ValueError(f"KV_REGISTER: unknown operation kind {kind!r} in {op!r}")


def _kv_describe(op: Operation) -> str:
    output = "?" if op.pending else repr(op.output)
    if op.kind == "get":
        return f"get({op.key!r}) -> {output}"
    if op.kind == "put":
        return f"put({op.key!r}, {op.input!r})"
    if op.kind == "cas":
        expected, new = op.input
        return f"cas({op.key!r}, {expected!r}, {new!r}) -> {output}"
    return _describe(op)


KV_REGISTER: Model[object] = Model(
    name="kv-register",
    initial=None,
    step=_kv_step,
    pure=lambda op: op.kind == "get",
    describe=_kv_describe,
)
"""Each key is an independent register holding one value; None means absent
(so every key starts absent, and a put of None deletes).

- `put`: `input` is the value; always legal; the key then holds it. `output`
  is ignored.
- `get`: `output` is the value read, None if absent; legal iff it equals (==)
  the value held. A get that never returned is dropped.
- `cas`: `input` is `(expected, new)`, `output` whether it swapped. `True` is
  legal iff the value held equals `expected` (None: "only if absent"), and
  the key then holds `new`; `False` is legal iff it does not, and changes
  nothing. One that never returned swaps iff it matches, if it happened.

Values must be hashable and compare by ==."""


# --- The result ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """The verdict on a history, and on failure what went wrong where."""

    linearizable: bool
    """True only if an order was found for every partition."""
    unknown: bool = False
    """The budget ran out first: neither proven nor refuted (`linearizable` is False)."""
    key: Hashable | None = None
    """The partition that failed, or that the budget ran out on."""
    explanation: str = ""
    """For people: what was checked, or why it failed."""
    linearized: tuple[Operation, ...] = ()
    """On failure: the longest linearizable prefix found of `key`'s operations,
    in the order they took effect."""
    stuck: Operation | None = None
    """On failure: the operation that, after `linearized`, had to take effect
    next (its return came) but could not, in any order of those called by then."""
    steps: int = 0
    """Search steps spent, over all partitions (what `max_steps` bounds)."""

    @property
    def violation(self) -> bool:
        """Whether the history is proven not linearizable."""
        return not self.linearizable and not self.unknown


# --- The search ------------------------------------------------------------------------


_POLL_EVERY = 1024
"""Steps between two looks at the clock when a wall-clock timeout is set: a
clock read costs more than a step."""


@dataclass
class _Budget:
    """What is left to spend, shared by all partitions of one check."""

    steps_left: float = math.inf
    deadline: float | None = None
    now: Callable[[], float] | None = None
    spent: int = 0

    def poll(self) -> Callable[[], bool] | None:
        """A check that the deadline has passed, if there is one."""
        now, deadline = self.now, self.deadline
        if now is None or deadline is None:
            return None
        return lambda: now() >= deadline


class _Entry:
    """A call or a return in the linked list; a call knows its return (`match`)."""

    __slots__ = ("bit", "index", "is_call", "match", "next", "pending", "prev")

    def __init__(self, index: int, is_call: bool, pending: bool = False) -> None:
        self.index = index
        self.is_call = is_call
        self.pending = pending  # a call that never returned, so it has no `match`
        self.bit = 1 << index if index >= 0 else 0
        self.match: _Entry | None = None
        self.prev: _Entry = self
        self.next: _Entry = self


def _lift(call: _Entry) -> None:
    """Take an operation's call and return out of the list (they stay linked to it)."""
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    if ret is not None:
        ret.prev.next = ret.next
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    """Put back what `_lift` took out, in reverse order, so the pointers fit again."""
    ret = call.match
    if ret is not None:
        ret.prev.next = ret
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


@dataclass
class _Outcome:
    """How the search of one partition ended, and on failure its deepest dead end."""

    ok: bool | None  # None: out of budget
    steps: int
    prefix: list[int] = field(default_factory=list)
    state: object = None
    stuck: int = -1


def _search(ops: Sequence[Operation], model: Model, budget: _Budget) -> _Outcome:
    """Look for a legal order of one partition's operations (the WGL loop)."""
    # Ties put calls before returns: two operations that touch at one instant
    # count as concurrent. Clocks of different clients only agree so far, and
    # the checker should never reject a history over a tie.
    events = [(op.call, 0, i) for i, op in enumerate(ops)]
    events += [(op.ret, 1, i) for i, op in enumerate(ops) if op.ret is not None]
    events.sort()

    # Sentinels at both ends spare the None checks in lift/unlift. The walk
    # never reaches the tail: while a completed operation is left, its return
    # is ahead of every call the walk passes over.
    head, tail = _Entry(-1, False), _Entry(-1, False)
    calls: dict[int, _Entry] = {}
    last = head
    for _, is_ret, i in events:
        entry = _Entry(i, not is_ret, pending=ops[i].ret is None)
        if is_ret:
            calls[i].match = entry
        else:
            calls[i] = entry
        last.next, entry.prev = entry, last
        last = entry
    last.next, tail.prev = tail, last

    # Pending operations (never returned) need care, or each one doubles the
    # search: it may take effect at any point after its call, or never. Two
    # things tame them:
    #
    # - The search is done once every *completed* operation has taken effect:
    #   the pending ones left over are those that never did.
    # - The cache is keyed by (completed ones taken, state) and keeps, under
    #   each, the sets of pending ones taken that it was reached with. Reaching
    #   it again with a *superset* of one of those is pruned, not just with
    #   the same set: whatever the bigger set can still do, the smaller one
    #   can too (it may take those operations later, or never), with the same
    #   completed operations left under the same real-time constraints.
    step = model.step
    state = model.initial
    done = 0  # bit i set: completed ops[i] has taken effect
    taken = 0  # bit i set: pending ops[i] has taken effect
    cache: dict[tuple[int, object], list[int]] = {}
    stack: list[tuple[_Entry, object]] = []  # each lifted call and the state before it
    todo = sum(1 for op in ops if op.ret is not None)
    best = _Outcome(ok=False, steps=0)
    best_depth = -1
    steps = 0
    entry = head.next

    limit, poll = budget.steps_left, budget.poll()
    while todo:
        if steps >= limit or (poll is not None and not steps % _POLL_EVERY and poll()):
            return _Outcome(ok=None, steps=steps)
        steps += 1
        if entry.is_call:
            ok, new_state = step(state, ops[entry.index])
            if ok:
                if entry.pending:
                    seen, tried = (done, new_state), taken | entry.bit
                else:
                    seen, tried = (done | entry.bit, new_state), taken
                sets = cache.get(seen)
                if sets is None:
                    cache[seen] = [tried]
                    fresh = True
                else:
                    untried = ~tried
                    fresh = all(other & untried for other in sets)
                    if fresh:
                        # Keep only the smallest sets: a superset of `tried`
                        # prunes nothing that `tried` does not.
                        sets[:] = [other for other in sets if tried & ~other]
                        sets.append(tried)
                if fresh:
                    stack.append((entry, state))
                    state, done, taken = new_state, seen[0], tried
                    _lift(entry)
                    if not entry.pending:
                        todo -= 1
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # This operation had to take effect by now and no choice so far
            # let it: undo the last choice and try the next candidate after
            # it. The deepest such dead end is the best explanation a failure
            # can get: remember it (once per new depth reached).
            if len(stack) > best_depth:
                best_depth = len(stack)
                best.prefix = [e.index for e, _ in stack]
                best.state, best.stuck = state, entry.index
            if not stack:
                best.steps = steps
                return best
            entry, state = stack.pop()
            _unlift(entry)
            if entry.pending:
                taken ^= entry.bit
            else:
                done ^= entry.bit
                todo += 1
            entry = entry.next
    return _Outcome(ok=True, steps=steps)


# --- Explaining ------------------------------------------------------------------------


def _time(t: float | None) -> str:
    if t is None:
        return "never returned"
    return f"{t:.6f}".rstrip("0").rstrip(".")


def _show(model: Model, op: Operation) -> str:
    return f"{model.describe(op)} by client {op.client!r} [{_time(op.call)}, {_time(op.ret)}]"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_SHOW_PREFIX = 4
_SHOW_CANDIDATES = 6


def _explain(key: Hashable, ops: Sequence[Operation], model: Model, found: _Outcome) -> str:
    """Say, in a few lines, where the deepest attempt at an order got stuck."""
    stuck = ops[found.stuck]
    assert stuck.ret is not None  # only a return can stop the search
    lines = [f"key {key!r}: no order of its {_count(len(ops), 'operation')} fits {model.name}."]
    if found.prefix:
        shown = found.prefix[-_SHOW_PREFIX:]
        lines.append(
            f"The longest linearizable prefix found has {_count(len(found.prefix), 'operation')}"
            + (f", the last {len(shown)} of which are:" if len(shown) < len(found.prefix) else ":")
        )
        lines += [f"  {_show(model, ops[i])}" for i in shown]
        lines.append(f"leaving state {found.state!r}.")
    else:
        lines.append(f"No operation fits first, in state {found.state!r}.")
    # The candidates for the next step were all the operations not yet taken
    # that were called before the stuck one returned (calls win ties).
    done = set(found.prefix)
    candidates = [op for i, op in enumerate(ops) if i not in done and op.call <= stuck.ret]
    shown_candidates = candidates[:_SHOW_CANDIDATES]
    verdicts = []
    for op in shown_candidates:
        ok, _ = model.step(found.state, op)
        verdicts.append(
            "allowed, but no order after it fits" if ok else "not allowed in that state"
        )
    then = f"Then {_show(model, stuck)} had to take effect before it returned"
    if len(candidates) == 1:
        lines.append(f"{then}, and cannot: {verdicts[0]}.")
    else:
        lines.append(
            f"{then}, but none of the {len(candidates)} operations called by then can go next:"
        )
        lines += [
            f"  {_show(model, op)}: {why}"
            for op, why in zip(shown_candidates, verdicts, strict=True)
        ]
        if len(candidates) > _SHOW_CANDIDATES:
            lines.append(f"  and {len(candidates) - _SHOW_CANDIDATES} more")
    return "\n".join(lines)


# --- The entry point -------------------------------------------------------------------


def _validate(op: Operation) -> None:
    if not math.isfinite(op.call):
        raise ValueError(f"an operation's call time must be finite: {op!r}")
    if op.ret is not None and not op.ret >= op.call:  # `not >=` also catches NaN
        raise ValueError(f"an operation cannot return before it was called: {op!r}")


def check(
    history: Iterable[Operation],
    model: Model = KV_REGISTER,
    timeout: float | None = None,
    *,
    max_steps: int | None = None,
) -> Result:
    """Decide whether `history` is linearizable with respect to `model`."""
    partitions: dict[Hashable, list[Operation]] = {}
    total = 0
    for op in history:
        _validate(op)
        total += 1
        if op.pending and model.pure(op):
            continue
        partitions.setdefault(model.partition(op), []).append(op)

    budget = _Budget()
    if max_steps is not None:
        budget.steps_left = max_steps
    if timeout is not None:
        # The only clock read in this module, and only when asked for.
        budget.now = time.monotonic
        budget.deadline = time.monotonic() + timeout

    # Keys in order of first appearance, so the same history always fails on
    # the same key.
    for key, ops in partitions.items():
        found = _search(ops, model, budget)
        budget.spent += found.steps
        budget.steps_left -= found.steps
        if found.ok is None:
            return Result(
                linearizable=False,
                unknown=True,
                key=key,
                explanation=(
                    f"key {key!r}: out of budget after {_count(budget.spent, 'search step')}; "
                    "the history is neither proven nor refuted linearizable."
                ),
                steps=budget.spent,
            )
        if not found.ok:
            return Result(
                linearizable=False,
                key=key,
                explanation=_explain(key, ops, model, found),
                linearized=tuple(ops[i] for i in found.prefix),
                stuck=ops[found.stuck],
                steps=budget.spent,
            )
    return Result(
        linearizable=True,
        explanation=(
            f"linearizable: {_count(total, 'operation')} on {_count(len(partitions), 'key')} "
            f"({_count(budget.spent, 'search step')})."
        ),
        steps=budget.spent,
    )
