"""Keeps one CPU core busy until killed: the load a benchmark puts beside the cluster.

    python -m colony.harness.busy

The benchmarks start it to check that heartbeats and leases hold while a core is
taken, and kill it when done.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m colony.harness.busy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)  # no arguments: only --help
    while True:
        pass


if __name__ == "__main__":
    main()
