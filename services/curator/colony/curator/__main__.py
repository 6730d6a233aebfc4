"""`python -m colony.curator`: the manager's reconcile loop (acts only on the manager's node)."""

from colony.curator.service import CuratorService
from colony.shared.runner import main

if __name__ == "__main__":
    main(CuratorService())
