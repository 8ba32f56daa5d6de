"""How fast the emulated range comes up and goes down, and how much memory it holds.

For each scenario: time to `Range.up()` (every host answers, every service
listens, every program is ready), a few steps of red and green running, then time
to `down()`. Memory: the machine's peak drop in MemAvailable while the range was
up, and the summed PSS of the run's processes (host shells, programs, implants).
Needs root. Usage: sudo .venv/bin/python bench/range_speed.py [tiny small large] [--steps N]
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import describe_machine

from cyberdial.range.emulation.emulator import Range
from cyberdial.range.emulation.state import RunState, recorded_pids
from cyberdial.range.scenario import load_scenario

GIB = 2**30


def mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemoryWatch(threading.Thread):
    """Samples MemAvailable every 0.2 s; `peak_used` is the largest drop from the start."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.baseline = mem_available()
        self.peak_used = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak_used = max(self.peak_used, self.baseline - mem_available())


def bench(name: str, steps: int) -> dict[str, float]:
    scenario = load_scenario(name)
    watch = MemoryWatch()
    watch.start()
    emulated = Range(scenario)
    started = time.monotonic()
    try:
        emulated.up()
        up_s = time.monotonic() - started
        for _ in range(steps):
            emulated.wait_step()
            emulated.alerts()
        assert emulated.referee is not None
        measure_started = time.monotonic()
        truth = emulated.referee.measure()
        measure_s = time.monotonic() - measure_started
        state = RunState.load(emulated.run_id)
        records = state.shells + state.programs + recorded_pids(state.run_dir)
        run_pss = sum(pss(r.pid) for r in records if r.alive())
        run_pss += pss(os.getpid())
    finally:
        down_started = time.monotonic()
        emulated.down()
        down_s = time.monotonic() - down_started
        watch.stop.set()
        watch.join()
    return {
        "hosts": len(scenario.all_hosts), "up_s": up_s, "down_s": down_s,
        "network_s": emulated.timings.get("network_s", 0.0),
        "programs_s": emulated.timings.get("programs_s", 0.0),
        "measure_s": measure_s, "peak_gib": watch.peak_used / GIB, "pss_gib": run_pss / GIB,
        "compromised": sum(1 for c in truth["compromise"].values() if c != "none"),
        "green": truth["green_successes"] + truth["green_failures"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["tiny", "small", "large"])
    parser.add_argument("--steps", type=int, default=5, help="steps to run while up (default 5)")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(f"{'scenario':<9}{'hosts':>6}{'up s':>8}{'(net s':>8}{'progs s)':>9}{'down s':>8}"
          f"{'peak GiB':>10}{'PSS GiB':>9}{'referee s':>10}")
    for name in args.scenarios:
        r = bench(name, args.steps)
        print(f"{name:<9}{r['hosts']:>6.0f}{r['up_s']:>8.2f}{r['network_s']:>8.2f}"
              f"{r['programs_s']:>9.2f}{r['down_s']:>8.2f}{r['peak_gib']:>10.2f}"
              f"{r['pss_gib']:>9.2f}{r['measure_s']:>10.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
