"""`python -m colony.membership`: wired to the runner; its behaviour arrives with its issue."""

from colony.shared.runner import Unbuilt, main

if __name__ == "__main__":
    main(
        Unbuilt(
            "membership",
            "SWIM-style gossip over NATS: who is alive, suspect, dead or left, with node metadata",
        )
    )
