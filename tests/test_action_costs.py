"""Wasted-action costs (`reward.actions`): charged by the game model's one rule, in the
simulator exactly as the scenario says, and absent (with the hash unchanged) by default."""

from __future__ import annotations

import numpy as np

from cyberdial.range.model import Compromise, GameModel, Observed
from cyberdial.range.scenario import load_scenario, scenario_from_dict
from cyberdial.range.sim import SimBatch


def _slot(model: GameModel, agent: int, label: str) -> int:
    return [a.label for a in model.agents[agent].actions].index(label)


def _model() -> GameModel:
    return GameModel(load_scenario("small"))


def _step_costs(model: GameModel, actions: list[tuple[int, str]],
                setup: object = None) -> float:
    sim = SimBatch(model, n_envs=1, seed=0)
    sim.reset(0)
    # Make every action legal for this step (the rule is about effects, not masks).
    sim.mask[:] = model.action_valid[None].astype(np.int8)
    if callable(setup):
        setup(sim)
    chosen = np.zeros((1, model.n_agents), dtype=np.int64)
    for agent, label in actions:
        chosen[0, agent] = _slot(model, agent, label)
    return float(sim.step(chosen).terms["actions"][0])


def test_shipped_small_charges_the_authors_amounts() -> None:
    model = _model()
    costs = model.scenario.reward.actions
    assert (costs.analyse, costs.remove, costs.block, costs.unblock) == (1.5, 0.5, 2.0, 1.0)
    user9 = model.scenario.host_index["user9"]

    # Analyse of a clean host finds nothing: charged. Of a compromised host blue did not
    # know about: free. Of one blue already knows: charged again.
    assert _step_costs(model, [(0, "analyse user9")]) == 1.5

    def compromised(sim: SimBatch) -> None:
        sim.compromise[0, user9] = Compromise.USER

    assert _step_costs(model, [(0, "analyse user9")], compromised) == 0.0

    def known(sim: SimBatch) -> None:
        sim.compromise[0, user9] = Compromise.USER
        sim.observed[0, user9] = Observed.USER

    assert _step_costs(model, [(0, "analyse user9")], known) == 1.5
    # Remove finds a user-level foothold: free; nothing there: charged.
    assert _step_costs(model, [(0, "remove user9")], compromised) == 0.0
    assert _step_costs(model, [(0, "remove user9")]) == 0.5
    # Unblock of an open subnet is wasted; of a blocked one it is not.
    assert _step_costs(model, [(0, "unblock user")]) == 1.0

    def blocked(sim: SimBatch) -> None:
        sim.blocked[0, model.scenario.subnet_index["user"]] = True

    assert _step_costs(model, [(0, "unblock user")], blocked) == 0.0
    # Block is free only while a peer's Analyse of this step finds red privileged.
    assert _step_costs(model, [(0, "block user")]) == 2.0
    ent_host = model.scenario.all_hosts[model.agents[1].hosts[0]].name

    def privileged(sim: SimBatch) -> None:
        sim.compromise[0, model.scenario.host_index[ent_host]] = Compromise.PRIVILEGED

    assert _step_costs(model, [(0, "block user"), (1, f"analyse {ent_host}")], privileged) == 0.0
    # The agent's own Analyse does not excuse its Block (only one action per agent anyway),
    # and a peer's Analyse that finds a clean host does not either: 2 + 1.5.
    assert _step_costs(model, [(0, "block user"), (1, f"analyse {ent_host}")]) == 3.5


def test_costs_are_charged_when_a_multi_step_action_finishes() -> None:
    data = _model().scenario.model_dump(mode="json")
    data["blue"]["durations"]["analyse"] = 2
    model = GameModel(scenario_from_dict(data))
    sim = SimBatch(model, n_envs=1, seed=0)
    sim.reset(0)
    sim.mask[:] = model.action_valid[None].astype(np.int8)
    chosen = np.zeros((1, model.n_agents), dtype=np.int64)
    chosen[0, 0] = _slot(model, 0, "analyse user9")
    first = sim.step(chosen).terms["actions"][0]
    second = sim.step(np.zeros_like(chosen)).terms["actions"][0]
    assert (first, second) == (0.0, 1.5)


def test_no_costs_by_default_and_the_hash_of_older_scenarios_is_kept() -> None:
    tiny = load_scenario("tiny")
    assert tiny.reward.actions.analyse == 0.0
    model = GameModel(tiny)
    sim = SimBatch(model, n_envs=4, seed=1)
    sim.reset(1)
    rng = np.random.default_rng(0)
    for _ in range(tiny.episode_length):
        legal = sim.mask > 0
        actions = np.where(legal, rng.random(legal.shape), -1).argmax(axis=2)
        result = sim.step(actions)
        assert (result.terms["actions"] == 0).all()
    # The digest leaves out the new setting while it is at its default...
    data = tiny.model_dump(mode="json")
    del data["reward"]["actions"]
    assert scenario_from_dict(data).scenario_hash == tiny.scenario_hash
    # ...and counts it once it is used.
    data["reward"]["actions"] = {"analyse": 1.0}
    assert scenario_from_dict(data).scenario_hash != tiny.scenario_hash
