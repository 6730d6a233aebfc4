"""Argument types and option groups that several `colony` verbs share."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path


def seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, not {text}")
    return value


def nats_url(text: str) -> str:
    if not re.fullmatch(r"(nats|tls)://[^\s/:]+(:\d{1,5})?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a NATS URL like nats://HOST:4222")
    return text


def add_management_options(
    parser: argparse.ArgumentParser,
    timeout: float = 10.0,
    timeout_help: str = "seconds to keep retrying while no leader answers",
    state_dir: bool = True,
) -> None:
    """--server, --json, --timeout and --state-dir (unless the parser has it: `state_dir`
    False) of a verb that asks the management voters."""
    parser.add_argument(
        "--server",
        action="append",
        type=nats_url,
        help="ask through this NATS URL instead of the state dir's nodes (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=timeout,
        help=f"{timeout_help} (default: {timeout:g})",
    )
    if state_dir:  # also after the verb (`colony kv get k --state-dir D`), without resetting it
        parser.add_argument(
            "--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )


def sub_verbs(verbs, examples: dict[str, str]):
    """`sub(name, summary, func)`: adds verb `name` to the sub-parsers `verbs`, its help
    and description `summary`, its epilog `examples[name]`, run by `func`."""

    def sub(name: str, summary: str, func) -> argparse.ArgumentParser:
        parser = verbs.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=examples[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=func)
        return parser

    return sub
