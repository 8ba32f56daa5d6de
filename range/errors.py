"""Errors shared by the whole range: each says what went wrong and how to recover.

The CLI turns any of these into one line per problem and a non-zero exit, never a
traceback. `cyberdial.bridge` and `cyberdial.agents` raise them too.
"""

from __future__ import annotations

from dataclasses import dataclass


class CyberdialError(Exception):
    """Base of every user-facing error; `str()` is the message the CLI prints."""


@dataclass(frozen=True)
class Problem:
    """One problem in a scenario: where (file:line:column and field path) and what."""

    path: tuple[str | int, ...]
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def dotted_path(self) -> str:
        return ".".join(str(part) for part in self.path) or "<root>"

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}:{self.column or 1}"
            where += ": "
        return f"{where}{self.dotted_path()}: {self.message}"


class ScenarioError(CyberdialError):
    """A scenario that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class NotRootError(CyberdialError):
    def __init__(self, what: str = "emulation") -> None:
        super().__init__(f"{what} needs root: run with sudo or use --range sim")


class HostCommandError(CyberdialError):
    """A command on an emulated host failed."""


class BridgeTimeout(CyberdialError):
    """A peer of the bridge did not answer in time."""


class CheckpointMismatch(CyberdialError):
    """A checkpoint was trained for another scenario layout than the one it is used on."""
