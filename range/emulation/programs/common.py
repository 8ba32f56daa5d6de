"""What every range program shares: arguments, the plan, logging, bounds and the step clock.

A program runs until SIGTERM/SIGKILL, until its run directory disappears, until
the controller that started it dies (its parent changes), or until
`MAX_LIFETIME_S` passes: no loop in the range is unbounded. Programs that talk
to the bridge (`keyed`) read their own key from stdin first (`keys.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from cyberdial.range.emulation.keys import read_program_key
from cyberdial.range.emulation.netns import raise_fd_limit
from cyberdial.range.emulation.plan import RangePlan
from cyberdial.range.hub import SensorLink, StepFollower
from cyberdial.range.wire import StepDone, StepTick

MAX_LIFETIME_S = 24 * 3600.0
# How often a program checks that its run still exists.
RUN_CHECK_S = 1.0


class Program:
    """Parsed arguments, the run's plan and a stop flag set by SIGTERM."""

    def __init__(self, role: str, description: str, *, subnet: bool = True,
                 extra: list[tuple[str, dict[str, Any]]] | None = None,
                 keyed: bool = False) -> None:
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--run-dir", required=True, type=Path)
        if subnet:
            parser.add_argument("--subnet", required=True)
        for name, options in extra or []:
            parser.add_argument(name, **options)
        self.args = parser.parse_args()
        # Before anything else: the controller's pipe holds this program's key.
        self.key: bytes = read_program_key() if keyed else b""
        self.parent = os.getppid()
        self.role = role
        self.run_dir: Path = self.args.run_dir
        self.plan = RangePlan.load(self.run_dir)
        self.subnet: str | None = getattr(self.args, "subnet", None)
        self.name = f"{role}-{self.subnet}" if self.subnet else role
        logging.basicConfig(level=logging.INFO,
                            format=f"%(asctime)s {self.name} %(levelname)s %(message)s")
        self.log = logging.getLogger(f"cyberdial.range.emulation.programs.{role}")
        self.started = time.monotonic()
        self.stopping = False
        self._checked = 0.0
        # A str seed is hashed stably (unlike hash(), which is salted per process).
        self.rng = random.Random(f"{self.plan.run_id}:{self.name}")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        raise_fd_limit()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def controller_gone(self) -> bool:
        """True once the controller that started us died (SIGKILL): its hosts' namespaces
        go with it, so the program stops (saying so once) and leaves the rest to
        `cyberdial range down`. A cheap check (getppid), made on every `running()`."""
        if os.getppid() == self.parent:
            return False
        if not self.stopping:
            self.log.warning("the range controller (pid %d) is gone: stopping; run"
                             " `cyberdial range down %s` to remove what is left",
                             self.parent, self.plan.run_id)
            self.stopping = True
        return True

    def running(self) -> bool:
        """False once asked to stop, the run or its controller is gone, or the lifetime
        bound passed."""
        now = time.monotonic()
        if self.stopping or self.controller_gone() or now - self.started > MAX_LIFETIME_S:
            return False
        if now - self._checked > RUN_CHECK_S:
            self._checked = now
            if not (self.run_dir / "plan.json").exists():
                self.log.info("run directory is gone: stopping")
                self.stopping = True
        return not self.stopping

    def ready(self) -> None:
        """Tell the controller this program is serving (it waits for every ready file)."""
        (self.run_dir / "ready" / self.name).write_text(f"{os.getpid()}\n", encoding="utf-8")
        self.log.info("ready")

    def follower(self) -> StepFollower:
        """This program's side of the bridge's step clock (its ticks, signed with its key)."""
        return StepFollower(self.plan.clock_endpoint, self.plan.run_id, self.name, key=self.key)

    def follow_steps(self, link: SensorLink, act: Callable[[StepTick], None]) -> None:
        """Red's and green's loop: each tick of the step clock, `act` once, then say done.

        A repeated tick (the hub repeats until it hears back) is answered again, not
        acted on again. Heartbeats go out while waiting, so the bridge knows we live.
        """
        with self.follower() as clock:
            self.ready()
            done = -1
            while self.running():
                link.maybe_heartbeat()
                tick = clock.poll(0.1)
                if tick is None:
                    continue
                if tick.tick > done:
                    act(tick)
                    done = tick.tick
                link.send("step_done", StepDone(tick=done), step=max(tick.step, 0))

    def append_jsonl(self, directory: str, record: dict[str, Any]) -> None:
        """One line per event, written in one O_APPEND write (readers tail these files)."""
        path = self.run_dir / directory / f"{self.name}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

