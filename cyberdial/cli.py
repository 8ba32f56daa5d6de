"""The `cyberdial` command: the front door to the range, the bridge and the agents.

Each command group lives in its own module under `cyberdial/commands/` and adds
itself with `register(subparsers)`. Any `CyberdialError` becomes one line per
problem on stderr and exit status 2, never a traceback.

Start-up stays fast: only the module of the command being run is imported (torch
and matplotlib load only for the commands that need them); the others appear in
`--help` from `COMMANDS`, whose help lines tests keep equal to the modules' own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cyberdial import __version__
from cyberdial.range.errors import CyberdialError

# Every command, in the order `--help` lists them: its module and its help line.
COMMANDS: dict[str, tuple[str, str]] = {
    "scenario": ("cyberdial.commands.scenario", "validate or summarise scenario files"),
    "simulate": ("cyberdial.commands.simulate",
                 "run episodes of a baseline blue in the simulator and summarise them"),
    "drill": ("cyberdial.commands.drill",
              "run a policy's agents (and optionally you) against red and green, recorded"),
    "report": ("cyberdial.commands.drill", "write report.md and PNG plots of a recording"),
    "replay": ("cyberdial.commands.drill", "replay a recording in the drill's live view"),
    "watch": ("cyberdial.commands.watch",
              "replay a drill's recording on a web page (step slider; Ctrl-C stops)"),
    "validate": ("cyberdial.commands.validate",
                 "play a policy in the simulator and on real hosts with the same seeds, and"
                 " compare"),
    "calibrate": ("cyberdial.commands.calibrate",
                  "fit the simulator's sensor model to what the real sensors did, as a"
                  " scenario"),
    "train": ("cyberdial.commands.train",
              "train learning blue agents (DIAL-SAU, DIAL, QMIX, IQL) in the simulator"),
    "evaluate": ("cyberdial.commands.train",
                 "play greedy episodes of a trained checkpoint (or a hand-written blue) and"
                 " print its scores"),
    "compare": ("cyberdial.commands.compare",
                "train and score algorithms over scenarios and seeds; write a report"),
    "bridge": ("cyberdial.commands.bridge",
               "serve agents (EmulatedRange clients) from a running emulated range"),
    "range": ("cyberdial.commands.range", "run a scenario as an emulated network (root)"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; with a command name, only that command's module is loaded ("*": all)."""
    parser = argparse.ArgumentParser(
        prog="cyberdial",
        description="Emulation-backed cyber range for multi-agent autonomous cyber defence.",
    )
    parser.add_argument("--version", action="version", version=f"cyberdial {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = COMMAND_MODULES if command == "*" else (
        (COMMANDS[command][0],) if command in COMMANDS else ())
    loaded: argparse._SubParsersAction[argparse.ArgumentParser] = subparsers
    for name, (module, help_line) in COMMANDS.items():
        if module in wanted:
            if name not in subparsers.choices:
                importlib.import_module(module).register(loaded)
        elif name not in subparsers.choices:
            subparsers.add_parser(name, help=help_line)  # listed; loaded when it is run
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of a command line (the first argument that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
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
