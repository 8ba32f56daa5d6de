"""The bridge charges wasted blue actions by the same rule as the simulator
(`GameModel.action_costs`), on real sockets with the simulated host side."""

from __future__ import annotations

from typing import Any

import zmq
from test_bridge_support import RUN, simulated_range

from cyberdial.bridge.env import EmulatedRange
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario, scenario_from_dict


def test_bridge_charges_wasted_actions_as_the_simulator(context: zmq.Context[Any]) -> None:
    data = load_scenario("small").model_dump(mode="json")
    data["blue"]["sau"] = False  # every action legal, so the costs are what is tested
    scenario = scenario_from_dict(data)
    model = GameModel(scenario)
    labels = [a.label for a in model.agents[0].actions]
    with simulated_range(scenario, context, step_period_s=0.01) as (_, _, ends):
        env = EmulatedRange(scenario, ends.agents, run_id=RUN, context=context)
        try:
            env.reset(seed=0)
            charged = []
            for label in ("analyse user9", "unblock user", "block user", "unblock user",
                          "sleep"):
                _, _, _, _, infos = env.step({"blue_user": labels.index(label)})
                charged.append(infos["blue_user"]["reward_terms"]["actions"])
        finally:
            env.close()
    # A clean host analysed, an open subnet unblocked, a Block no peer's finding
    # excuses, then an Unblock that does open a blocked subnet, then nothing.
    assert charged == [1.5, 1.0, 2.0, 0.0, 0.0]
