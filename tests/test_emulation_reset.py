"""Episode reset on real hosts: after red's progress and blue's block, step 0 again,
with the range in this process and with a detached range reset by a bridge elsewhere."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from cyberdial.bridge.env import EmulatedRange
from cyberdial.range.emulation.netns import listening_ports
from cyberdial.range.emulation.referee import blocked_subnets, implants_by_host
from cyberdial.range.model import ActionKind, BlueAction
from cyberdial.range.scenario import load_scenario
from cyberdial.range.wire import Command

if TYPE_CHECKING:
    from cyberdial.range.emulation.emulator import Range

CLI = [sys.executable, "-m", "cyberdial"]
REPO = Path(__file__).resolve().parent.parent


def _wait(emulated: Range, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Step the range (red moves only on its step clock) until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        emulated.wait_step(pace=False)
    return False


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reset_episode_returns_every_host_to_step_zero() -> None:
    from cyberdial.range.emulation.emulator import Range

    scenario = load_scenario("tiny")
    with Range(scenario) as emulated:
        plan = emulated.plan
        assert emulated.referee is not None
        # Red lands on its entry host and spreads; blue blocks the user subnet.
        assert _wait(emulated, lambda: sum(map(len, implants_by_host(plan).values())) >= 2, 60)
        result = emulated.execute(Command(command_id="b1", action="block", subnet="user"))
        assert result.ok, result.detail
        assert blocked_subnets(plan) == ["user"]
        first_red = [p.pid for p in emulated.state.programs if p.role == "red"]  # type: ignore[union-attr]
        old_implants = {pid for pids in implants_by_host(plan).values() for pid in pids}

        started = time.monotonic()
        # What the bridge does at each episode start: the range's reset, the referee's.
        emulated.reset_episode(7)
        emulated.referee.start_episode()
        took = time.monotonic() - started
        truth = emulated.referee.measure()
        assert took < 30
        # No foothold is left, not even on red's entry host: its implants died with the
        # hosts' guest processes.
        assert truth.compromised(scenario) == {}
        now = {pid for pids in truth.implants.values() for pid in pids}
        assert not now & old_implants
        assert not truth.impacted.any() and not truth.blocked.any()
        for host in plan.hosts:
            ports = listening_ports(plan.host_pids[host.name])
            assert {s.port for s in host.services} <= ports, host.name
        # The same red process plays the new episode (no second start of Python, scapy).
        reds = [p for p in emulated.state.programs if p.role == "red"]  # type: ignore[union-attr]
        assert [p.pid for p in reds] == first_red and reds[0].alive()
        # Red starts the kill chain again from its entry host.
        assert _wait(emulated, lambda: bool(implants_by_host(plan)[scenario.red.entry]), 30)


def _compromised(env: EmulatedRange) -> dict[str, int]:
    """The hosts red holds by the global state (per host: compromise one-hot first)."""
    state = env.state()
    hosts = env.scenario.all_hosts
    levels = {h.name: int(np.argmax(state[10 * h.index: 10 * h.index + 3])) for h in hosts}
    return {name: level for name, level in levels.items() if level}


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_bridge_attached_by_run_id_resets_its_detached_range() -> None:
    """`range up`, then `cyberdial bridge RUN_ID` in its own process: a client's reset puts
    the range itself back at step 0 (red's footholds gone, the router's blocks flushed),
    through the range's controller."""
    from cyberdial.range.emulation.plan import RangePlan
    from cyberdial.range.emulation.state import RUNS_ROOT

    up = subprocess.run([*CLI, "range", "up", "tiny"], capture_output=True, text=True,
                        timeout=150, check=False, cwd=REPO)
    assert up.returncode == 0, up.stderr
    run_id = next(line.split()[-1] for line in up.stdout.splitlines()
                  if line.startswith("run id:"))
    bridge = None
    try:
        plan = RangePlan.load(RUNS_ROOT / run_id)
        bridge = subprocess.Popen([*CLI, "bridge", run_id, "--step-period", "0"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (RUNS_ROOT / run_id / "bridge.json").exists():
            assert time.monotonic() < deadline and bridge.poll() is None, "no bridge.json"
            time.sleep(0.1)
        env = EmulatedRange.attach(run_id)
        try:
            env.reset(seed=0)
            block = env.model.agents[0].actions.index(BlueAction(ActionKind.BLOCK,
                                                                 subnet="user"))
            env.step({"blue_user": block})
            for _ in range(env.scenario.episode_length - 1):
                if _compromised(env):
                    break
                env.step({})
            held = _compromised(env)
            assert held, "red never got a foothold"
            assert blocked_subnets(plan) == ["user"]
            old_implants = {pid for pids in implants_by_host(plan).values() for pid in pids}

            observations, _ = env.reset(seed=5)
            # Step 0 of a new episode on the range itself, not only in the bridge's view.
            assert _compromised(env) == {}
            assert blocked_subnets(plan) == []
            assert not {p for pids in implants_by_host(plan).values() for p in pids} \
                & old_implants
            for layout in env.model.agents:
                seen = observations[layout.name]["observation"]
                assert not seen[: 4 * len(layout.hosts) + len(layout.subnets)].any()
            # And the episode plays on: red starts again from its entry host.
            for _ in range(env.scenario.episode_length):
                env.step({})
                if _compromised(env):
                    break
            assert set(_compromised(env)) == {env.scenario.red.entry}
        finally:
            env.close()
    finally:
        down = subprocess.run([*CLI, "range", "down", run_id], capture_output=True, text=True,
                              timeout=120, check=False, cwd=REPO)
        if bridge is not None:
            try:
                _, stderr = bridge.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                bridge.kill()
                _, stderr = bridge.communicate()
            assert "Traceback" not in stderr, stderr[-2000:]
    assert down.returncode == 0, down.stderr
