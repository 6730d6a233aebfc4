from colony.shared.runner import main
from colony.snapshotter.service import Snapshotter

if __name__ == "__main__":
    main(Snapshotter())
