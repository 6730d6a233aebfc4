"""`python -m colony.bootstrapper.agent --config FILE`: run the node agent (the supervisor does)."""

from colony.bootstrapper.agent.service import Agent
from colony.shared.runner import main

if __name__ == "__main__":
    main(Agent())
