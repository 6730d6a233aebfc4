"""`python -m colony.consensus`: wired to the runner; its behaviour arrives with its issue."""

from colony.shared.runner import Unbuilt, main

if __name__ == "__main__":
    main(
        Unbuilt(
            "consensus",
            "Raft among the voters, the replicated management database and the manager lease",
        )
    )
