"""The supervisor's pure core: when to restart a child that exited."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    """Exponential backoff per child, forgiven once a child has run long enough.

    A child that crashes at start is retried at 0.1 s, 0.2 s, 0.4 s ... up to
    `maximum`; one that ran `stable_after` seconds before dying starts over
    at `initial`, so a rare crash is repaired at once.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 10.0
    stable_after: float = 10.0
    failures: dict[str, int] = field(default_factory=dict)

    def next_delay(self, child: str, ran_for: float) -> float:
        """Seconds to wait before restarting `child`, which ran `ran_for` seconds."""
        if ran_for >= self.stable_after:
            self.failures[child] = 0
        count = self.failures.get(child, 0)
        self.failures[child] = count + 1
        # the exponent stops growing once the cap is reached (no overflow in long crash loops)
        return min(self.initial * self.factor ** min(count, 64), self.maximum)


def describe_exit(returncode: int) -> str:
    """Say why a process ended, the way a person reads it."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return "exited cleanly" if returncode == 0 else f"exited with code {returncode}"
