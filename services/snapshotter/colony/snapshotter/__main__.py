"""`python -m colony.snapshotter`: wired to the runner; its behaviour arrives with its issue."""

from colony.shared.runner import Unbuilt, main

if __name__ == "__main__":
    main(
        Unbuilt(
            "snapshotter",
            "Continuous replication of the management database with litestream; backup and restore",
        )
    )
