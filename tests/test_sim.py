"""The simulated range: PettingZoo conformance, SAU masks, no-op illegal actions, learnability."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from cyberdial.agents.baselines import RandomPolicy, make_baseline
from cyberdial.agents.rollout import run_episodes
from cyberdial.range.model import (
    ACTION,
    ACTIVITY,
    COMPROMISE,
    OBSERVED,
    RED,
    ActionKind,
    Activity,
    Compromise,
    GameModel,
    Observed,
    RedActionKind,
)
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.sim import SimBatch, SimRange

SHIPPED = ("tiny", "small", "large")


def _with_blue(scenario: Scenario, **blue: object) -> Scenario:
    return scenario.model_copy(update={"blue": scenario.blue.model_copy(update=blue)})


@pytest.mark.parametrize("name", SHIPPED)
def test_pettingzoo_parallel_api(name: str) -> None:
    parallel_api_test(SimRange(load_scenario(name)), num_cycles=100)


@pytest.mark.parametrize("name", SHIPPED)
def test_pettingzoo_parallel_seed(name: str) -> None:
    scenario = load_scenario(name)
    parallel_seed_test(lambda: SimRange(scenario))


def test_spaces_are_cached_and_match_layout() -> None:
    env = SimRange(load_scenario("small"))
    for layout in env.model.agents:
        assert env.observation_space(layout.name) is env.observation_space(layout.name)
        assert env.action_space(layout.name).n == layout.n_actions
        assert env.observation_space(layout.name)["observation"].shape == (layout.obs_size,)


def _reference_mask(model: GameModel, agent: int, observation: np.ndarray) -> np.ndarray:
    """The paper's get_avail_agent_actions, read off the observation vector alone."""
    layout = model.agents[agent]
    bits = model.host_bits_of(observation, agent)
    peers = observation[layout.obs_slices()["messages"]]
    peer_sent = bool((peers >= 0.5).any())
    host_names = [model.scenario.all_hosts[h].name for h in layout.hosts]
    mask = np.zeros(layout.n_actions, dtype=np.int8)
    for slot, action in enumerate(layout.actions):
        if action.kind in (ActionKind.SLEEP, ActionKind.BLOCK, ActionKind.UNBLOCK):
            mask[slot] = 1
            continue
        b = bits[host_names.index(action.host)]
        count = int(b.sum())
        shows = count > 1 or (count == 1 and b[0] == 0)
        if action.kind == ActionKind.ANALYSE:
            mask[slot] = shows or peer_sent
        else:
            mask[slot] = shows
    return mask


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_masks_follow_the_papers_sau_rule_on_every_step(name: str) -> None:
    model = GameModel(load_scenario(name))
    batch = SimBatch(model, n_envs=16, seed=3)
    policy = RandomPolicy(model, seed=4, send_rate=0.2)
    observations, masks = batch.reset()
    checked = 0
    for _ in range(model.scenario.episode_length):
        actions, messages = policy.act(observations, masks)
        result = batch.step(actions, messages)
        observations, masks = result.observations, result.masks
        for env in range(batch.n_envs):
            for layout in model.agents:
                if batch.blue_timer[env, layout.index] > 0:
                    continue  # busy agents may only continue; checked below
                got = masks[env, layout.index, : layout.n_actions]
                want = _reference_mask(
                    model, layout.index, observations[env, layout.index, : layout.obs_size]
                )
                np.testing.assert_array_equal(got, want)
                checked += 1
    assert checked > 100


def test_mask_cases_by_hand() -> None:
    model = GameModel(load_scenario("tiny"))
    h = model.scenario.host_index
    activity = np.zeros((1, model.n_hosts), dtype=np.int8)
    observed = np.zeros((1, model.n_hosts), dtype=np.int8)
    messages = np.zeros((1, 2, 1), dtype=np.uint8)
    idle = np.zeros((1, 2), dtype=bool)
    ops = model.agents[1]
    slot = {a.label: i for i, a in enumerate(ops.actions)}

    def legal(label: str, **kw: np.ndarray) -> bool:
        args = {"activity": activity, "observed": observed, "messages": messages, "busy": idle} | kw
        return bool(model.action_masks(**args)[0, 1, slot[label]])

    assert legal("sleep") and legal("block operational") and legal("unblock operational")
    assert not legal("analyse opserver0") and not legal("restore opserver0")
    scan = activity.copy()
    scan[0, h["opserver0"]] = Activity.SCAN
    assert not legal("restore opserver0", activity=scan)  # a bare scan unmasks nothing
    exploit = activity.copy()
    exploit[0, h["opserver0"]] = Activity.EXPLOIT
    assert legal("restore opserver0", activity=exploit) and legal(
        "analyse opserver0", activity=exploit
    )
    assert not legal("restore ophost0", activity=exploit)
    user = observed.copy()
    user[0, h["ophost0"]] = Observed.USER
    assert legal("remove ophost0", observed=user)
    peer = messages.copy()
    peer[0, 0, 0] = 1  # blue_user sent a 1: blue_ops may analyse anything, nothing else
    assert legal("analyse defender", messages=peer) and not legal("remove defender", messages=peer)
    own = messages.copy()
    own[0, 1, 0] = 1  # an agent's own message does not unmask its own Analyse
    assert not legal("analyse defender", messages=own)
    busy = np.array([[False, True]])
    assert legal("sleep", busy=busy) and not legal("block operational", busy=busy)

    unlimited = GameModel(_with_blue(model.scenario, limit_analyse=False))
    assert unlimited.action_masks(activity, observed, messages, idle)[
        0, 1, slot["analyse defender"]
    ]
    no_sau = GameModel(_with_blue(model.scenario, sau=False))
    assert no_sau.action_masks(activity, observed, messages, idle)[0, 1, : ops.n_actions].all()


def _play(env: SimRange, seed: int, action_for: dict[str, int], steps: int) -> list[tuple]:
    observations, _ = env.reset(seed=seed)
    trace = []
    for _ in range(steps):
        observations, rewards, *_ = env.step(action_for)
        trace.append(
            (
                rewards[env.possible_agents[0]],
                {a: o["observation"].tobytes() for a, o in observations.items()},
            )
        )
    return trace


def test_illegal_and_out_of_range_actions_are_sleep() -> None:
    scenario = load_scenario("tiny")
    env = SimRange(scenario)
    ops = env.model.agents[1]
    restore = next(i for i, a in enumerate(ops.actions) if a.label == "restore opserver0")
    sleep = _play(env, 5, {"blue_user": 0, "blue_ops": 0}, 3)
    masked = _play(env, 5, {"blue_user": 0, "blue_ops": restore}, 3)  # masked at step 0..2
    wild = _play(env, 5, {"blue_user": 10_000, "blue_ops": -7}, 3)
    assert sleep == masked == wild


def test_same_seed_same_episode_other_seed_differs() -> None:
    scenario = load_scenario("small")
    a = _play(SimRange(scenario), 11, {}, 40)
    b = _play(SimRange(scenario), 11, {}, 40)
    c = _play(SimRange(scenario), 12, {}, 40)
    assert a == b
    assert a != c


def test_message_bits_cost_comm_cost_each() -> None:
    scenario = load_scenario("tiny")
    quiet, loud = SimBatch(scenario, 1, seed=2), SimBatch(scenario, 1, seed=2)
    actions = np.zeros((1, 2), dtype=np.int64)
    a = quiet.step(actions, np.zeros((1, 2, 1), dtype=np.uint8))
    b = loud.step(actions, np.ones((1, 2, 1), dtype=np.uint8))
    assert b.bits_sent[0] == 2
    assert a.rewards[0] - b.rewards[0] == pytest.approx(2 * scenario.blue.comm_cost)


def test_red_kill_chain_reaches_and_impacts_its_target_without_blue() -> None:
    scenario = load_scenario("tiny")
    batch = SimBatch(scenario, n_envs=8, seed=0)
    target = scenario.host_index["opserver0"]
    for _ in range(scenario.episode_length):
        batch.step(np.zeros((8, 2), dtype=np.int64))
    assert (batch.compromise[:, target] == Compromise.PRIVILEGED).all()
    assert batch.impacted[:, target].all()


def test_a_meandering_red_wanders_without_heading_for_its_targets() -> None:
    # `strategy: meander` gets the class scores without the bline's bonuses towards
    # its targets, and still plays whole episodes (it once failed on its first move).
    small = load_scenario("small")
    meander = small.model_copy(update={"red": small.red.model_copy(update={"strategy": "meander"})})
    model = GameModel(meander)
    assert not model.red_host_bonus.any() and GameModel(small).red_host_bonus.any()
    batch = SimBatch(meander, n_envs=8, seed=0)
    for _ in range(meander.episode_length):
        batch.step(np.zeros((8, model.n_agents), dtype=np.int64))
    assert ((batch.compromise > 0).sum(axis=1) > 1).all()  # red spread beyond its entry


def test_restore_clears_a_host_and_costs() -> None:
    scenario = load_scenario("tiny")
    batch = SimBatch(scenario, n_envs=1, seed=0)
    target = scenario.host_index["opserver0"]
    batch.compromise[0, target] = Compromise.PRIVILEGED
    batch.impacted[0, target] = True
    batch.activity[0, target] = Activity.EXPLOIT
    batch.mask = batch.model.action_masks(
        batch.activity, batch.observed, batch.messages, batch.blue_timer > 0
    )
    ops = batch.model.agents[1]
    restore = next(i for i, a in enumerate(ops.actions) if a.label == "restore opserver0")
    result = batch.step(np.array([[0, restore]]))
    assert batch.compromise[0, target] == Compromise.CLEAN
    assert not batch.impacted[0, target]
    assert result.terms["restore"][0] == pytest.approx(scenario.reward.restore)


def test_state_and_render() -> None:
    env = SimRange(load_scenario("tiny"), render_mode="ansi")
    env.reset(seed=0)
    assert env.state().shape == (env.model.state_size,)
    env.step({})
    frame = env.render()
    assert frame is not None and "opserver0" in frame and "blue_ops" in frame


def test_batched_copy_equals_single_env() -> None:
    scenario = load_scenario("small")
    single = SimRange(scenario)
    observations, _ = single.reset(seed=9)
    batch = SimBatch(scenario, n_envs=1, seed=9)
    batch.reset(seed=9)
    for _ in range(10):
        result = batch.step(np.zeros((1, 3), dtype=np.int64))
        observations, rewards, *_ = single.step({})
        assert rewards["blue_ops"] == pytest.approx(float(result.rewards[0]))
        for layout in batch.model.agents:
            np.testing.assert_array_equal(
                observations[layout.name]["observation"],
                result.observations[0, layout.index, : layout.obs_size],
            )


@pytest.mark.parametrize("name", SHIPPED)
def test_react_clearly_beats_sleep(name: str) -> None:
    model = GameModel(load_scenario(name))
    episodes = 32
    sleep = np.array(run_episodes(model, make_baseline("sleep", model), episodes, seed=100).returns)
    react = np.array(run_episodes(model, make_baseline("react", model), episodes, seed=100).returns)
    stderr = np.sqrt(sleep.var() / episodes + react.var() / episodes)
    assert react.mean() > sleep.mean() + 4 * stderr, (react.mean(), sleep.mean(), stderr)


def test_host_bits_are_cyborgs_for_every_activity_and_belief() -> None:
    model = GameModel(load_scenario("small"))
    pairs = [(a, o) for a in Activity for o in Observed]
    hosts = model.n_hosts
    activity = np.array([[pairs[h % len(pairs)][0] for h in range(hosts)]], dtype=np.int8)
    observed = np.array([[pairs[h % len(pairs)][1] for h in range(hosts)]], dtype=np.int8)
    obs = model.encode_observations(
        activity, observed, np.zeros((1, model.n_subnets), dtype=bool),
        np.zeros((1, model.n_agents, model.message_bits), dtype=np.uint8),
        np.zeros((1, model.n_agents), dtype=np.int64))
    cyborg_activity = {Activity.NONE: [0, 0], Activity.SCAN: [1, 0], Activity.EXPLOIT: [1, 1]}
    cyborg_belief = {Observed.NONE: [0, 0], Observed.USER: [0, 1], Observed.PRIVILEGED: [1, 1],
                     Observed.UNKNOWN: [1, 0]}
    for agent, layout in enumerate(model.agents):
        bits = model.host_bits_of(obs[0, agent], agent)
        for row, host in enumerate(layout.hosts):
            a, o = pairs[host % len(pairs)]
            assert bits[row].tolist() == cyborg_activity[a] + cyborg_belief[o], (agent, host)


def test_plain_values_are_the_enums_values_as_ints() -> None:
    for plain, kinds in ((ACTION, ActionKind), (ACTIVITY, Activity), (COMPROMISE, Compromise),
                         (OBSERVED, Observed), (RED, RedActionKind)):
        assert {m.name: getattr(plain, m.name) for m in kinds} == {m.name: m.value for m in kinds}
        assert all(type(getattr(plain, m.name)) is int for m in kinds)
