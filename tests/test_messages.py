"""What messages carry (agents/messages.py): the information estimates on known tables,
and the listener effect measured on real policies: 0 for a network that cannot hear,
above 0 for one that does, absent for a learner without a message input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cyberdial.agents.dial import DialLearner
from cyberdial.agents.messages import MessageStats, mutual_information
from cyberdial.agents.qmix import QmixLearner
from cyberdial.agents.rollout import run_episodes
from cyberdial.agents.training import TrainConfig, prepare_scenario
from cyberdial.range.model import GameModel

torch.set_num_threads(1)


def test_mutual_information_of_known_tables() -> None:
    assert mutual_information(np.array([[25, 25], [25, 25]])) == pytest.approx(0.0)
    assert mutual_information(np.array([[50, 0], [0, 50]])) == pytest.approx(1.0)
    assert mutual_information(np.array([[0, 0], [30, 70]])) == pytest.approx(0.0)  # constant
    # p(x=1) = 0.2, y = x: I = H(0.2) = 0.7219 bits.
    assert mutual_information(np.array([[80, 0], [0, 20]])) == pytest.approx(0.72193, abs=1e-4)
    assert mutual_information(np.zeros((2, 2), dtype=np.int64)) == 0.0


def test_a_sender_that_says_what_it_sees_and_one_that_always_talks() -> None:
    rng = np.random.default_rng(0)
    stats = MessageStats(n_agents=2)
    for _ in range(200):
        activity = rng.random((8, 2)) < 0.3
        red = activity & (rng.random((8, 2)) < 0.5)  # half the activity is red's
        bits = np.zeros((8, 2, 1), dtype=np.uint8)
        bits[:, 0, 0] = activity[:, 0]  # agent 0: a 1 exactly when it sees activity
        bits[:, 1, 0] = 1  # agent 1: always 1
        stats.add_step(bits, activity, red)
    honest, chatty = stats.per_sender()
    p = 0.3
    entropy = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert honest["mi_activity"] == pytest.approx(entropy, abs=0.02)
    assert honest["mi_red"] > 0.1
    # Given activity, its bit is always 1: nothing more about red than the activity itself.
    assert honest["mi_red_given_activity"] == pytest.approx(0.0, abs=1e-9)
    assert chatty["mi_activity"] == chatty["mi_red"] == 0.0
    assert chatty["send_rate"] == 1.0 and honest["send_rate"] == pytest.approx(0.3, abs=0.02)
    assert math.isnan(honest["listener_effect"])  # nobody was probed


def test_a_gated_sender_that_speaks_on_remembered_flags_reads_low_on_activity() -> None:
    """The gate opens on activity or on a compromise flag still in the observation; a
    sender that speaks whenever its gate is open says little about activity itself."""
    rng = np.random.default_rng(1)
    stats = MessageStats(n_agents=2)
    for _ in range(300):
        activity = rng.random((8, 2)) < 0.3
        remembered = ~activity & (rng.random((8, 2)) < 0.5)
        bits = np.zeros((8, 2, 1), dtype=np.uint8)
        bits[:, 0, 0] = activity[:, 0]  # agent 0: speaks on activity only
        bits[:, 1, 0] = activity[:, 1] | remembered[:, 1]  # agent 1: whenever its gate is open
        stats.add_step(bits, activity, activity, remembered=remembered)
    on_activity, on_gate = stats.per_sender()
    assert on_activity["send_when_active"] == on_gate["send_when_active"] == 1.0
    assert on_activity["send_when_remembered"] == 0.0
    assert on_gate["send_when_remembered"] == 1.0
    assert on_gate["remembered_rate"] == pytest.approx(0.35, abs=0.03)
    assert on_gate["mi_activity"] < on_activity["mi_activity"] / 2
    # Without the remembered flags every inactive step counts as "nothing seen".
    blind = MessageStats(n_agents=1)
    blind.add_step(np.ones((4, 1, 1), dtype=np.uint8), np.zeros((4, 1), dtype=bool),
                   np.zeros((4, 1), dtype=bool))
    assert blind.per_sender()[0]["remembered_rate"] == 0.0
    assert math.isnan(blind.per_sender()[0]["send_when_active"])
    summary = stats.summary()  # means over the two senders
    assert summary["send_when_active"] == 1.0 and summary["send_when_remembered"] == 0.5


def _policy(tmp_path: Path, algo: str = "dial-sau", **changes: object) -> tuple[object, GameModel]:
    config = dataclasses.replace(
        TrainConfig(runs_dir=str(tmp_path), tensorboard=False, scenario="small", algo=algo),
        **changes)
    torch.manual_seed(1)
    model = GameModel(prepare_scenario(config))
    learner = (QmixLearner if algo == "qmix" else DialLearner)(model, config)
    return learner, model


def test_listener_effect_reads_what_the_network_does_with_the_bit(tmp_path: Path) -> None:
    learner, model = _policy(tmp_path)
    assert isinstance(learner, DialLearner)
    with torch.no_grad():  # a network that listens hard to its peers' bits
        embedding = learner.network.message_embedding
        assert embedding is not None
        embedding.weight.mul_(50.0)
    loud = run_episodes(model, learner.greedy_policy(), 16, seed=4).summary()
    with torch.no_grad():  # and the same network deaf to them
        embedding.weight.zero_()
        embedding.bias.zero_()
    deaf = run_episodes(model, learner.greedy_policy(), 16, seed=4).summary()
    assert loud["listener_effect"] > 0.05, loud
    assert deaf["listener_effect"] == 0.0, deaf
    # Messages were sent in both (gated by activity), so the information figures exist.
    assert loud["bits_per_episode"] > 0 and deaf["bits_per_episode"] > 0
    assert 0.0 <= loud["mi_activity"] <= 1.0


def test_no_messages_read_zero_and_learners_without_an_input_read_nothing(
    tmp_path: Path,
) -> None:
    silent, model = _policy(tmp_path, no_comm=True)
    summary = run_episodes(model, silent.greedy_policy(), 8, seed=2).summary()
    assert summary["bits_per_episode"] == 0.0
    assert summary["mi_activity"] == summary["mi_red"] == 0.0
    assert summary["listener_effect"] == 0.0
    qmix, model = _policy(tmp_path, algo="qmix")
    summary = run_episodes(model, qmix.greedy_policy(), 8, seed=2).summary()
    assert summary["mi_activity"] == 0.0 and math.isnan(summary["listener_effect"])
