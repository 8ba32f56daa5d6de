"""Helpers shared by the command modules: console output, progress bars, stop signals."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
error_console = Console(stderr=True)


def progress_bar(*extra_columns: TextColumn) -> Progress:
    """A progress bar on stderr; quiet when stderr is not a terminal (CI, pipes)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt(*, sigint: bool = True) -> Iterator[None]:
    """While inside: SIGTERM raises KeyboardInterrupt in the main thread, so `kill` ends
    a command as Ctrl-C does, through its `finally`s and teardown (ranges go down);
    with `sigint`, SIGINT raises it too, even in a process that inherited SIGINT ignored
    (a job started with `cmd &` in a non-interactive shell, or CI: Python keeps the
    inherited SIG_IGN, and Ctrl-C was lost). Both handlers are restored on the way out,
    however it is left. Signal handlers can only be set in the main thread."""
    previous_term = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        if sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
    finally:
        # None: a handler not set from Python, which cannot be set back from here.
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if sigint and previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
