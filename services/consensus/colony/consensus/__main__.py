from colony.consensus.service import ConsensusService
from colony.shared.runner import main

if __name__ == "__main__":
    main(ConsensusService())
