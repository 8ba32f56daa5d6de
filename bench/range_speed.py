"""How fast the emulated range comes up and goes down, and how much memory it holds.

For each scenario: time to `Range.up()` (every host answers, every service
listens, every program is ready), a few steps played in lockstep through the range's
own hub as fast as the hosts allow (mean "step s", and "late": steps in which some
program missed its deadline), then time to `down()`. Memory: the machine's peak
drop in MemAvailable while the range was up, and the summed PSS of the run's
processes (host shells, programs, implants; not the Docker engine's own processes),
split as `validate --ranges` sizes a range: the shells' PSS per host (MiB/host) and
the PSS per host program (MiB/prog).

Container hosts: a name `SCENARIO@docker` runs every host of the scenario in a
container, `SCENARIO@dockerN` its leading host groups that make exactly N hosts
(`small@docker50`: small's 48 users and 2 web servers); the engine is the
machine's or our own dockerd, started and stopped by the bench. Per host, the
table gives the time to create one host (Mininet's shell, or the container, not
counting the one-off import of our host image: "image s") and, at down, to remove
one container (its share of the removal phase).
Needs root. Usage: sudo .venv/bin/python bench/range_speed.py [tiny small large
xlarge tiny@docker small@docker50] [--steps N]. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from machine import describe_machine

from cyberdial.range.emulation.docker_engine import EngineUnavailable, OwnEngine, connect
from cyberdial.range.emulation.docker_hosts import HOST_IMAGE
from cyberdial.range.emulation.emulator import Range
from cyberdial.range.emulation.state import RunState, recorded_pids
from cyberdial.range.scenario import Scenario, load_scenario

GIB = 2**30
MIB = 2**20


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


def with_containers(scenario: Scenario, count: int | None) -> Scenario:
    """The scenario with its leading host groups (all if `count` is None) in containers."""
    data = scenario.model_dump()
    hosts = 0
    for group in data["hosts"]:
        if count is not None and hosts >= count:
            break
        group["backend"], group["image"] = "docker", HOST_IMAGE
        hosts += group["count"]
    if count is not None and hosts != count:
        raise SystemExit(f"{scenario.name}'s leading host groups make {hosts} hosts, not"
                         f" {count}: pick a count at a group boundary")
    return Scenario.model_validate(data)


def load(spec: str) -> Scenario:
    """`tiny`, `tiny@docker` (every host a container), `small@docker50` (the first 50)."""
    name, _, variant = spec.partition("@")
    scenario = load_scenario(name)
    if not variant:
        return scenario
    if not variant.startswith("docker"):
        raise SystemExit(f"unknown variant {variant!r}: use NAME@docker or NAME@dockerN")
    return with_containers(scenario, int(variant[6:]) if variant[6:] else None)


def bench(spec: str, steps: int) -> dict[str, float]:
    scenario = load(spec)
    watch = MemoryWatch()
    watch.start()
    emulated = Range(scenario)
    started = time.monotonic()
    try:
        emulated.up()
        up_s = time.monotonic() - started
        step_times: list[float] = []
        late_steps = 0
        for _ in range(steps):
            step_started = time.monotonic()
            emulated.wait_step(pace=False)  # in lockstep, as fast as the hosts allow
            step_times.append(time.monotonic() - step_started)
            late_steps += bool(emulated.last_late)
            emulated.alerts()
        assert emulated.referee is not None
        measure_started = time.monotonic()
        truth = emulated.referee.measure()
        measure_s = time.monotonic() - measure_started
        state = RunState.load(emulated.run_id)
        records = state.shells + state.programs + recorded_pids(state.run_dir)
        run_pss = sum(pss(r.pid) for r in records if r.alive())
        run_pss += pss(os.getpid())
        # The split `validate --ranges` sizes a range with (agents/parallel.py).
        shells_pss = sum(pss(r.pid) for r in state.shells if r.alive())
        programs = [r for r in state.programs if r.alive()]
        programs_pss = sum(pss(r.pid) for r in programs)
    finally:
        down_started = time.monotonic()
        emulated.down()
        down_s = time.monotonic() - down_started
        watch.stop.set()
        watch.join()
    containers = sum(1 for h in scenario.all_hosts if h.backend == "docker")
    namespaces = len(scenario.all_hosts) - containers
    timings = emulated.timings
    removal_s = timings.get("down_containers_s", 0.0) - timings.get("down_processes_s", 0.0)
    return {
        "hosts": len(scenario.all_hosts), "containers": containers, "up_s": up_s,
        "down_s": down_s,
        "namespace_host_ms": 1000 * timings.get("hosts_s", 0.0) / namespaces if namespaces
        else float("nan"),
        # Without building our image (once per run, whatever the number of containers).
        "container_host_ms": 1000 * (timings.get("containers_s", 0.0) - timings.get(
            "image_s", 0.0)) / containers if containers else float("nan"),
        "image_s": timings.get("image_s", 0.0),
        "container_down_ms": 1000 * removal_s / containers if containers else float("nan"),
        "network_s": emulated.timings.get("network_s", 0.0),
        "programs_s": emulated.timings.get("programs_s", 0.0),
        "measure_s": measure_s, "peak_gib": watch.peak_used / GIB, "pss_gib": run_pss / GIB,
        "shell_mib": shells_pss / MIB / len(scenario.all_hosts),
        "program_mib": programs_pss / MIB / max(len(programs), 1),
        "step_s": float(np.mean(step_times)) if step_times else float("nan"),
        "late_steps": late_steps,
        "compromised": int(np.count_nonzero(truth.compromise)),
        "green": truth.green_successes + truth.green_failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["tiny", "small", "large", "xlarge"],
                        help="shipped names, or NAME@docker / NAME@dockerN for container hosts")
    parser.add_argument("--steps", type=int, default=5, help="steps to run while up (default 5)")
    args = parser.parse_args()
    engine: OwnEngine | None = None
    if any("@" in spec for spec in args.scenarios):
        try:
            connect().close()
        except EngineUnavailable:
            engine = OwnEngine.start_engine()
    print(f"machine: {describe_machine()}")
    print(f"{'scenario':<16}{'hosts':>6}{'ctrs':>5}{'up s':>7}{'(net s':>8}{'progs s)':>9}"
          f"{'down s':>8}{'ns host ms':>11}{'image s':>8}{'ctr up ms':>10}{'ctr down ms':>12}"
          f"{'peak GiB':>9}{'PSS GiB':>8}{'referee s':>10}{'MiB/host':>9}{'MiB/prog':>9}"
          f"{'step s':>8}{'late':>5}")
    try:
        for spec in args.scenarios:
            r = bench(spec, args.steps)
            print(f"{spec:<16}{r['hosts']:>6.0f}{r['containers']:>5.0f}{r['up_s']:>7.2f}"
                  f"{r['network_s']:>8.2f}{r['programs_s']:>9.2f}{r['down_s']:>8.2f}"
                  f"{r['namespace_host_ms']:>11.1f}{r['image_s']:>8.2f}"
                  f"{r['container_host_ms']:>10.1f}"
                  f"{r['container_down_ms']:>12.1f}{r['peak_gib']:>9.2f}{r['pss_gib']:>8.2f}"
                  f"{r['measure_s']:>10.3f}{r['shell_mib']:>9.2f}{r['program_mib']:>9.1f}"
                  f"{r['step_s']:>8.2f}{r['late_steps']:>5}",
                  flush=True)
    finally:
        if engine is not None:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
