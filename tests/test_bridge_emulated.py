"""EmulatedRange over tiny on real Mininet hosts, the react baseline playing a full episode.

Needs root and mnexec: builds the range (namespaces, sensors, actuators, red,
green), attaches a bridge to its endpoints with the emulator's own referee, and
plays 30 real-time steps (about 40 s in all).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_bridge_support import wait_for

from cyberdial.agents.baselines import ReactPolicy
from cyberdial.bridge.env import EmulatedRange
from cyberdial.bridge.service import BridgeService, BridgeThread
from cyberdial.range.scenario import load_scenario


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
def test_react_baseline_plays_tiny_on_real_hosts() -> None:
    from cyberdial.range.emulation.emulator import Range

    scenario = load_scenario("tiny")
    with Range(scenario, hub=False) as emulated, \
            tempfile.TemporaryDirectory(dir="/tmp", prefix="cdr") as folder:
        assert emulated.referee is not None
        hub = emulated.new_hub()
        agents = f"ipc://{Path(folder) / 'agents'}"
        service = BridgeService(scenario, hub, emulated.referee, agents, range_reset=emulated)
        with BridgeThread(service):
            # Every subnet's sensor and actuator finds the hub (they reconnect on their own).
            wait_for(lambda: sum(s.heard for s in hub._peers.values())
                     >= 2 * len(scenario.subnets), timeout_s=10)
            env = EmulatedRange(scenario, agents, run_id=emulated.run_id)
            policy = ReactPolicy(env.model)
            m = env.model
            try:
                observations, _ = env.reset(seed=0)
                steps, alerts, failures = 0, 0, []
                while env.agents:
                    obs = np.zeros((1, m.n_agents, m.max_obs), dtype=np.float32)
                    masks = np.zeros((1, m.n_agents, m.max_actions), dtype=np.int8)
                    for a in m.agents:
                        obs[0, a.index, : a.obs_size] = observations[a.name]["observation"]
                        masks[0, a.index, : a.n_actions] = observations[a.name]["action_mask"]
                    chosen, bits = policy.act(obs, masks)
                    observations, rewards, _, _, infos = env.step(
                        {a.name: int(chosen[0, a.index]) for a in m.agents},
                        {a.name: bits[0, a.index] for a in m.agents})
                    steps += 1
                    for info in infos.values():
                        alerts += info["alerts"]
                        failures.extend(info["failed_commands"])
                    assert set(rewards) == set(m.agent_names)
                dead = infos[m.agent_names[0]]["dead_peers"]
            finally:
                env.close()
    assert steps == scenario.episode_length
    assert alerts > 0, "red and green made no alert on real hosts in a whole episode"
    assert failures == [], failures
    assert dead == ()
    assert service.drops.total == 0 and hub.drops.total == 0
