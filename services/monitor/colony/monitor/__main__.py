from colony.monitor.service import Monitor
from colony.shared.runner import main

if __name__ == "__main__":
    main(Monitor())
