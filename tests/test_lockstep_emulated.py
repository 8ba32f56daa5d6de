"""Lockstep on real hosts: red's exploit at step t is in the observation that step t returns.

The simulator's order within a step is blue, red, green, observe: an exploit red
carries out at step t shows as exploit activity on its target in the observation
`step(t)` returns (the agents' observation at t + 1), never earlier or later. The
emulated range must do the same by construction (the bridge's step clock), not by
timing luck. Both tests play tiny with every exploit detectable and green's false
positives off, so the exploit bits agents see must be exactly red's exploits.

The emulated tests need root and mnexec; they play as fast as the hosts allow, on
whatever load the machine carries (the first until red made 100 exploits). The
last stops a sensor (SIGSTOP) mid-episode: it is named late, then dead, and the
episode goes on.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_bridge_support import wait_for

from cyberdial.bridge.env import EmulatedRange
from cyberdial.bridge.service import BridgeService, BridgeThread, StepLog
from cyberdial.range.hub import PHASE_DEADLINE_S
from cyberdial.range.model import Compromise, GameModel, RedActionKind
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.sim import SimBatch

EXPLOITS = 100
MAX_EPISODES = 60


def exploit_heavy_tiny() -> Scenario:
    """tiny where red exploits often (most attempts fail, so it tries again), every exploit
    is detectable and green raises no false alerts: exploit bits are red's alone."""
    tiny = load_scenario("tiny")
    return tiny.model_copy(update={
        "red": tiny.red.model_copy(update={"exploit_success": 0.3}),
        "sensors": tiny.sensors.model_copy(update={"exploit_detect": 1.0, "scan_detect": 1.0}),
        "green": tiny.green.model_copy(update={"fp_exploit": 0.0, "fp_scan": 0.0}),
    })


def first_privileged_step(scenario: Scenario) -> int:
    """The earliest step red can hold its entry host privileged: it lands at step
    `start_delay` and picks Escalate in that same step (the simulator's phase)."""
    return scenario.red.start_delay + scenario.red.durations.escalate - 1


def exploit_bits(model: GameModel, observations: dict[str, np.ndarray]) -> set[str]:
    """The hosts whose activity bits read "exploit" (11) in the agents' observations."""
    hosts = set()
    for layout in model.agents:
        bits = model.host_bits_of(np.asarray(observations[layout.name], dtype=np.float32),
                                  layout.index)
        for k, host in enumerate(layout.hosts):
            if bits[k, 0] == 1 and bits[k, 1] == 1:
                hosts.add(model.scenario.all_hosts[host].name)
    return hosts


def test_simulator_shows_each_exploit_in_the_observation_of_its_step() -> None:
    """The reference the emulated range is held to."""
    scenario = exploit_heavy_tiny()
    sim = SimBatch(scenario, n_envs=1, seed=3)
    model = sim.model
    defended = {scenario.all_hosts[h].name for a in model.agents for h in a.hosts}
    exploits = 0
    entry = model.entry_host
    privileged_at: list[int] = []
    for episode in range(20):
        sim.reset(seed=episode)
        for t in range(scenario.episode_length):
            result = sim.step(np.zeros((1, model.n_agents), dtype=np.int64))
            if sim.compromise[0, entry] == Compromise.PRIVILEGED and len(privileged_at) == episode:
                privileged_at.append(t)
            red = set()
            if sim.red_done_kind[0] == RedActionKind.EXPLOIT and sim.red_done_reached[0]:
                red.add(scenario.all_hosts[int(sim.red_done_target[0])].name)
            seen = exploit_bits(model, {a.name: result.observations[0, a.index]
                                        for a in model.agents})
            assert seen == red & defended
            exploits += len(red & defended)
    assert exploits >= EXPLOITS
    assert min(privileged_at) == first_privileged_step(scenario), privileged_at


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_red_exploit_is_observed_at_its_own_step_on_real_hosts() -> None:
    from cyberdial.range.emulation.emulator import Range

    scenario = exploit_heavy_tiny()
    model = GameModel(scenario)
    defended = {scenario.all_hosts[h].name for a in model.agents for h in a.hosts}
    logs: list[StepLog] = []
    with Range(scenario, hub=False) as emulated, \
            tempfile.TemporaryDirectory(dir="/tmp", prefix="cdl") as folder:
        assert emulated.referee is not None
        hub = emulated.new_hub()
        agents = f"ipc://{Path(folder) / 'agents'}"
        service = BridgeService(scenario, hub, emulated.referee, agents, range_reset=emulated,
                                step_period_s=0.0)
        service.step_log = logs.append
        with BridgeThread(service):
            wait_for(lambda: sum(s.heard for s in hub._peers.values()) >= len(hub.expected),
                     timeout_s=30)
            env = EmulatedRange(scenario, agents, run_id=emulated.run_id)
            exploits, mismatches, late, steps = 0, [], set(), 0
            entry = scenario.red.entry
            privileged_at: dict[int, int] = {}
            started = time.monotonic()
            try:
                for episode in range(MAX_EPISODES):
                    env.reset(seed=episode)
                    while env.agents:
                        logs.clear()
                        observations, _, _, _, infos = env.step(
                            {name: 0 for name in model.agent_names})
                        steps += 1
                        assert len(logs) == 1
                        log = logs[0]
                        red = {move.target for move in log.measurement.red_moves
                               if move.kind == RedActionKind.EXPLOIT}
                        seen = exploit_bits(model, {name: np.asarray(o["observation"])
                                                    for name, o in observations.items()})
                        if seen != red & defended:
                            mismatches.append((episode, log.step, sorted(red), sorted(seen)))
                        exploits += len(red & defended)
                        if log.measurement.level(scenario, entry) == Compromise.PRIVILEGED:
                            privileged_at.setdefault(episode, log.step)
                        for info in infos.values():
                            late |= set(info["late_peers"])
                    if exploits >= EXPLOITS:
                        break
            finally:
                env.close()
    print(f"{exploits} exploits in {steps} steps, {time.monotonic() - started:.1f} s")
    assert exploits >= EXPLOITS, f"red made only {exploits} exploits in {MAX_EPISODES} episodes"
    assert mismatches == [], mismatches
    assert late == set()
    # Red's kill chain keeps the simulator's phase: it lands and picks Escalate in one step.
    assert min(privileged_at.values()) == first_privileged_step(scenario), privileged_at


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stopped_sensor_is_named_late_then_dead_and_the_episode_goes_on() -> None:
    from cyberdial.range.emulation.emulator import Range

    scenario = load_scenario("tiny")
    model = GameModel(scenario)
    with Range(scenario, hub=False) as emulated, \
            tempfile.TemporaryDirectory(dir="/tmp", prefix="cdl") as folder:
        assert emulated.referee is not None and emulated.state is not None
        hub = emulated.new_hub()
        agents = f"ipc://{Path(folder) / 'agents'}"
        service = BridgeService(scenario, hub, emulated.referee, agents, range_reset=emulated,
                                step_period_s=0.0)
        sensor = next(p for p in emulated.state.programs if p.name == "sensor-user")
        with BridgeThread(service):
            wait_for(lambda: sum(s.heard for s in hub._peers.values()) >= len(hub.expected),
                     timeout_s=30)
            env = EmulatedRange(scenario, agents, run_id=emulated.run_id)
            sleep = {name: 0 for name in model.agent_names}
            try:
                env.reset(seed=0)
                env.step(sleep)
                os.kill(sensor.pid, signal.SIGSTOP)  # alive a moment ago: it is waited for
                try:
                    started = time.monotonic()
                    _, _, _, _, infos = env.step(sleep)
                    took = time.monotonic() - started
                    late = infos[model.agent_names[0]]["late_peers"]
                    assert late == ("sensor-user",) and took >= PHASE_DEADLINE_S["close"]
                    # Silent past the liveness span: dead, no longer waited for.
                    time.sleep(2 * hub.heartbeat_interval_s * hub.liveness)
                    started = time.monotonic()
                    _, _, _, _, infos = env.step(sleep)
                    info = infos[model.agent_names[0]]
                    assert "sensor-user" in info["dead_peers"] and info["late_peers"] == ()
                    assert time.monotonic() - started < PHASE_DEADLINE_S["close"]
                finally:
                    os.kill(sensor.pid, signal.SIGCONT)
                # Back: it closes steps again, and the episode plays to its end.
                deadline = time.monotonic() + 30
                steps = 3
                while env.agents and time.monotonic() < deadline:
                    _, _, _, _, infos = env.step(sleep)
                    steps += 1
                info = infos[model.agent_names[0]]
                assert steps == scenario.episode_length
                assert info["dead_peers"] == () and info["late_peers"] == ()
            finally:
                env.close()
