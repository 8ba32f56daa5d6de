"""QMIX and IQL: a monotonic mixer, masked actions never chosen nor bootstrapped,
checkpoints that round-trip, and pymarl's settings as the CLI's defaults for them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cyberdial.agents.buffer import EpisodeBatch, EpisodeBuffer
from cyberdial.agents.checkpoint import load_checkpoint, load_policy
from cyberdial.agents.options import add_config_arguments, config_from_args
from cyberdial.agents.qmix import DrqnPolicy, IqlLearner, QMixer, QmixLearner
from cyberdial.agents.rollout import run_episodes
from cyberdial.agents.training import (
    EVAL_SEED_OFFSET,
    TrainConfig,
    collect_episodes,
    config_for,
    make_learner,
    prepare_scenario,
    train,
)
from cyberdial.range.errors import CheckpointMismatch
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimBatch

torch.set_num_threads(1)


def _config(tmp_path: Path, algo: str = "qmix", **changes: object) -> TrainConfig:
    return config_for(algo, scenario="tiny", runs_dir=str(tmp_path / "runs"),
                      tensorboard=False, threads=1, **changes)


def _learner_and_batch(
    tmp_path: Path, algo: str = "qmix"
) -> tuple[QmixLearner | IqlLearner, EpisodeBatch]:
    config = _config(tmp_path, algo)
    torch.manual_seed(0)
    model = GameModel(prepare_scenario(config))
    learner = make_learner(model, config)
    assert isinstance(learner, QmixLearner | IqlLearner)
    buffer = EpisodeBuffer(model, 8, with_states=learner.uses_state)
    buffer.add(collect_episodes(SimBatch(model, n_envs=8, seed=3), learner, epsilon=0.5, seed=3))
    return learner, buffer.sample(8, np.random.default_rng(0))


# ------------------------------------------------------------------ the mixer


def test_mixer_is_monotonic_in_every_agent_q() -> None:
    torch.manual_seed(1)
    mixer = QMixer(n_agents=4, state_size=23)
    states = torch.randn(256, 23) * 3.0
    agent_qs = (torch.randn(256, 4) * 5.0).requires_grad_(True)
    q_tot = mixer(agent_qs, states)
    assert q_tot.shape == (256,)
    (gradient,) = torch.autograd.grad(q_tot.sum(), agent_qs)
    assert (gradient >= 0).all(), gradient.min()
    assert (gradient > 0).float().mean() > 0.5  # it mixes, it does not ignore the agents


def test_mixer_uses_the_state() -> None:
    torch.manual_seed(2)
    mixer = QMixer(n_agents=3, state_size=10)
    agent_qs = torch.randn(1, 3).expand(64, 3)
    q_tot = mixer(agent_qs, torch.randn(64, 10))
    assert q_tot.std() > 0  # same agent Q-values, other states: other Q_tot


# ------------------------------------------------------------------ masks and targets


@pytest.mark.parametrize("algo", ["qmix", "iql"])
def test_masked_actions_are_never_chosen_nor_bootstrapped(tmp_path: Path, algo: str) -> None:
    learner, batch = _learner_and_batch(tmp_path, algo)
    with torch.no_grad():
        # Make every action's Q huge, the masked ones included: they still must not win.
        learner.network.fc2.bias.fill_(1e6)
        learner.network.fc2.bias[1:] += torch.arange(1, learner.model.max_actions) * 1e3
    model = learner.model
    policy = learner.greedy_policy()
    assert isinstance(policy, DrqnPolicy)
    sim = SimBatch(model, n_envs=16, seed=5)
    observations, masks = sim.reset()
    policy.reset(16)
    learner.reset(16)
    for _ in range(model.scenario.episode_length):
        for actions, messages in (policy.act(observations, masks),
                                  learner.act(observations, masks, epsilon=0.3)):
            chosen = np.take_along_axis(masks, actions[..., None], axis=2)[..., 0]
            assert (chosen > 0).all()
            assert not messages.any()  # no learned messages: always silent
        result = sim.step(actions, messages)
        observations, masks = result.observations, result.masks

    # Bootstrapping: mask one slot at every next step, and make both the online network
    # (which picks the next action) and the target network (which values it) love it.
    slot = model.max_actions - 1
    masks = batch.masks.clone()
    masks[:, 1:, :, slot] = False
    masks[:, 1:, :, 0] = True  # Sleep stays legal, as in the range
    with torch.no_grad():
        learner.network.fc2.bias[slot] = 1e7
        learner.update_target()
        learner.target.fc2.bias[slot] = 1e12
    bounded = learner.td_errors(dataclasses.replace(batch, masks=masks))
    assert torch.isfinite(bounded).all()
    assert bounded.abs().max() < 1e10  # the masked slot's 1e12 was never bootstrapped
    # The same batch with the slot legal does bootstrap it: the check above can fail.
    masks[:, 1:, :, slot] = True
    assert learner.td_errors(dataclasses.replace(batch, masks=masks)).abs().max() > 1e10


def test_qmix_learns_one_team_value_iql_one_per_agent(tmp_path: Path) -> None:
    qmix, batch = _learner_and_batch(tmp_path, "qmix")
    iql, _ = _learner_and_batch(tmp_path, "iql")
    agents = qmix.model.n_agents
    assert qmix.td_errors(batch).shape == (batch.size, batch.steps)
    assert iql.td_errors(batch).shape == (batch.size, batch.steps, agents)
    assert iql.mixer is None and qmix.mixer is not None
    before = [p.clone() for p in qmix.mixer.parameters()]
    qmix.update(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, qmix.mixer.parameters(),
                                                     strict=True))


# ------------------------------------------------------------------ settings


def test_cli_gives_qmix_pymarl_settings_unless_told_otherwise() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    qmix = config_from_args(parser.parse_args(["--algo", "qmix"]))
    assert (qmix.hidden, qmix.batch_episodes, qmix.target_update_every,
            qmix.target_update_unit) == (64, 32, 200, "episodes")
    told = config_from_args(parser.parse_args(["--algo", "qmix", "--hidden", "32",
                                               "--no-tensorboard"]))
    assert told.hidden == 32 and told.target_update_every == 200 and not told.tensorboard
    dial = config_from_args(parser.parse_args([]))
    assert dial == TrainConfig()  # DIAL keeps the shared defaults


# ------------------------------------------------------------------ checkpoints


@pytest.mark.timeout(120)
def test_qmix_checkpoint_round_trips(tmp_path: Path) -> None:
    config = dataclasses.replace(_config(tmp_path), episodes=64, eval_every=64,
                                 eval_episodes=32, checkpoint_every=64)
    result = train(config)
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.algo == "qmix" and checkpoint.config.hidden == 64
    assert {"network", "target", "mixer", "target_mixer", "optimiser"} <= set(
        checkpoint.learner_state)

    # The checkpoint plays exactly the greedy policy the run evaluated.
    policy, model, _ = load_policy(result.checkpoint, load_scenario("tiny"))
    again = run_episodes(model, policy, 32, seed=config.seed + EVAL_SEED_OFFSET).summary()
    assert again["return_mean"] == pytest.approx(result.final_evaluation["return_mean"])

    learner = make_learner(model, checkpoint.config)
    learner.load_state_dict(checkpoint.learner_state)
    assert isinstance(learner, QmixLearner) and learner.mixer is not None
    for name, tensor in learner.mixer.state_dict().items():
        assert torch.equal(tensor, checkpoint.learner_state["mixer"][name])

    with pytest.raises(CheckpointMismatch, match="trained on scenario 'tiny'"):
        load_policy(result.checkpoint, load_scenario("small"))
