"""Errors shared by the whole range: each says what went wrong and how to recover.

The CLI turns any of these into one line per problem and a non-zero exit, never a
traceback. `cyberdial.bridge` and `cyberdial.agents` raise them too.
"""

from __future__ import annotations

from dataclasses import dataclass

# What one problem may show of the user's own text: a short prefix, never a whole value.
MAX_PATH_PART = 40
MAX_MESSAGE = 300
MAX_PROBLEMS_SHOWN = 20


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
        return ".".join(_cut(str(part), MAX_PATH_PART) for part in self.path) or "<root>"

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}:{self.column or 1}"
            where += ": "
        message = _cut(" ".join(self.message.split("\n")), MAX_MESSAGE)
        return f"{where}{self.dotted_path()}: {message}"


class ScenarioError(CyberdialError):
    """A scenario that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [str(problem) for problem in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems")
        super().__init__("\n".join(lines))


class NotRootError(CyberdialError):
    def __init__(self, what: str = "emulation") -> None:
        super().__init__(f"{what} needs root: run with sudo or use --range sim")


class HostCommandError(CyberdialError):
    """A command on an emulated host failed."""


class BridgeTimeout(CyberdialError):
    """A peer of the bridge did not answer in time."""


class CheckpointMismatch(CyberdialError):
    """A checkpoint was trained for another scenario layout than the one it is used on."""
