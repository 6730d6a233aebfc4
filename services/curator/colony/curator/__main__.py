"""`python -m colony.curator`: wired to the runner; its behaviour arrives with its issue."""

from colony.shared.runner import Unbuilt, main

if __name__ == "__main__":
    main(
        Unbuilt(
            "curator",
            "The management role: jobs, scheduling, reconciliation, rolling updates, draining",
        )
    )
