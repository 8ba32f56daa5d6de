"""Packet captures of an emulated run: every subnet bridge's traffic to pcapng files.

One `dumpcap` (Wireshark's capture engine) per subnet bridge, in the root namespace
where the bridges live, promiscuous, writing a ring of pcapng files so a long run
stays bounded. Each capture process is recorded in the run's state like the range's
programs, so `range down` removes it also after a crash; `stop()` ends them with
SIGTERM first so the last packets reach the files.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cyberdial.range.emulation.plan import RangePlan
from cyberdial.range.emulation.state import ProcessRecord, RunState
from cyberdial.range.errors import HostCommandError

logger = logging.getLogger(__name__)

START_WAIT_S = 15.0
STOP_WAIT_S = 10.0
DUMPCAP = "dumpcap"


RING_FILES = 5
DEFAULT_MB = 100


@dataclass(frozen=True)
class CaptureLimits:
    """The ring per subnet: at most `files` files of `file_mb` MB; the oldest is dropped."""

    file_mb: int = DEFAULT_MB // RING_FILES
    files: int = RING_FILES

    def __post_init__(self) -> None:
        if not 1 <= self.file_mb <= 10_000 or not 2 <= self.files <= 1000:
            raise ValueError("a capture ring needs 1-10000 MB per file and 2-1000 files")

    @classmethod
    def per_subnet(cls, megabytes: int) -> CaptureLimits:
        """At most about `megabytes` MB per subnet, as a ring of RING_FILES files."""
        if not RING_FILES <= megabytes <= 100_000:
            raise HostCommandError(
                f"--pcap-mb {megabytes}: choose {RING_FILES} to 100000 MB per subnet"
            )
        return cls(file_mb=megabytes // RING_FILES, files=RING_FILES)


def capture_files(directory: Path, subnet: str) -> list[Path]:
    """One subnet's ring files, oldest first (dumpcap numbers them)."""
    return sorted(directory.glob(f"{subnet}_*.pcapng"))


class BridgeCapture:
    """Captures of one run's subnet bridges; `start()` after the bridges are up."""

    def __init__(
        self, plan: RangePlan, directory: Path, logs_dir: Path, limits: CaptureLimits
    ) -> None:
        self.plan = plan
        self.directory = directory
        self.logs_dir = logs_dir
        self.limits = limits
        self._popens: list[subprocess.Popen[bytes]] = []

    def start(self, state: RunState) -> None:
        dumpcap = shutil.which(DUMPCAP)
        if dumpcap is None:
            raise HostCommandError(
                "--pcap needs dumpcap (Debian package wireshark-common): run 'sudo make setup'"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        for subnet in self.plan.subnets:
            log = (self.logs_dir / f"capture-{subnet.name}.log").open("ab")
            with log:
                popen = subprocess.Popen(
                    [
                        dumpcap, "-q", "-i", subnet.bridge,
                        "-w", str(self.directory / f"{subnet.name}.pcapng"),
                        "-b", f"filesize:{self.limits.file_mb * 1000}",
                        "-b", f"files:{self.limits.files}",
                    ],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                )  # fmt: skip
            self._popens.append(popen)
            state.programs.append(ProcessRecord.of(popen.pid, "capture", subnet.name))
        state.save()
        deadline = time.monotonic() + START_WAIT_S
        waiting = list(zip(self.plan.subnets, self._popens, strict=True))
        while waiting and time.monotonic() < deadline:
            for subnet, popen in list(waiting):
                if popen.poll() is not None:
                    raise HostCommandError(
                        f"the capture of subnet {subnet.name} ended at once:"
                        f" {self._log_tail(subnet.name)}"
                    )
                if capture_files(self.directory, subnet.name):
                    waiting.remove((subnet, popen))
            time.sleep(0.05)
        if waiting:
            raise HostCommandError(
                f"the captures of {', '.join(s.name for s, _ in waiting)} did not start in"
                f" {START_WAIT_S:.0f} s"
            )
        logger.info("capturing %d bridges into %s", len(self._popens), self.directory)

    def _log_tail(self, subnet: str) -> str:
        try:
            text = (self.logs_dir / f"capture-{subnet}.log").read_text(errors="replace")
        except OSError:
            return "no log"
        return " ".join(text.split()[-30:]) or "no output"

    def stop(self) -> None:
        """SIGTERM (dumpcap then closes its files cleanly), SIGKILL what is left, reap all."""
        for popen in self._popens:
            if popen.poll() is None:
                try:
                    os.kill(popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_WAIT_S
        for popen in self._popens:
            try:
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("capture %d did not stop on SIGTERM; killing it", popen.pid)
                popen.kill()
                popen.wait()
        self._popens.clear()

    def files(self) -> dict[str, list[Path]]:
        return {s.name: capture_files(self.directory, s.name) for s in self.plan.subnets}

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for paths in self.files().values() for p in paths)
