"""The `cyberdial` command: the front door to the range, the bridge and the agents.

Each command group lives in its own module under `cyberdial/commands/` and adds
itself with `register(subparsers)`. Any `CyberdialError` becomes one line per
problem on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cyberdial import __version__
from cyberdial.range.errors import CyberdialError

# Command modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "cyberdial.commands.scenario",
    "cyberdial.commands.simulate",
    "cyberdial.commands.drill",
    "cyberdial.commands.watch",
    "cyberdial.commands.validate",
    "cyberdial.commands.train",
    "cyberdial.commands.compare",
    "cyberdial.commands.bridge",
    "cyberdial.commands.range",
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyberdial",
        description="Emulation-backed cyber range for multi-agent autonomous cyber defence.",
    )
    parser.add_argument("--version", action="version", version=f"cyberdial {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except CyberdialError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
