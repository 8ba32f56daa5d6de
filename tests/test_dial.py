"""DIAL / DIAL-SAU: gradients through messages, learning to signal, beating the rule-based
blue on tiny, checkpoints, and the train/evaluate commands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cyberdial.agents.baselines import ReactPolicy, SilencedPolicy
from cyberdial.agents.buffer import EpisodeBatch, EpisodeBuffer
from cyberdial.agents.checkpoint import load_checkpoint, load_policy
from cyberdial.agents.dial import DialLearner, DialPolicy, dru
from cyberdial.agents.options import field_docs
from cyberdial.agents.rollout import run_episodes
from cyberdial.agents.training import (
    EVAL_SEED_OFFSET,
    ConfigError,
    TrainConfig,
    collect_episodes,
    prepare_scenario,
    train,
)
from cyberdial.cli import main
from cyberdial.range.errors import CheckpointMismatch
from cyberdial.range.model import ActionKind, GameModel
from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimBatch

torch.set_num_threads(1)


def _config(tmp_path: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(runs_dir=str(tmp_path / "runs"), tensorboard=False, threads=1)
    return dataclasses.replace(base, **changes)


def _learner_and_batch(tmp_path: Path, **changes: object) -> tuple[DialLearner, EpisodeBatch]:
    config = _config(tmp_path, scenario="signal", **changes)
    torch.manual_seed(0)
    model = GameModel(prepare_scenario(config))
    learner = DialLearner(model, config)
    buffer = EpisodeBuffer(model, 8, with_states=learner.uses_state)
    buffer.add(collect_episodes(SimBatch(model, n_envs=8, seed=3), learner, epsilon=0.5, seed=3))
    return learner, buffer.sample(8, np.random.default_rng(0))


# ------------------------------------------------------------------ gradients


@pytest.mark.timeout(60)
def test_receiver_td_error_reaches_the_sender_message(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path)
    terms = learner.losses(batch, probe_logits=True)
    keeper_loss = terms.td_error[..., 1].pow(2).mean()  # agent B = keeper
    assert terms.unroll.logit_probe is not None
    grad = torch.autograd.grad(keeper_loss, terms.unroll.logit_probe, retain_graph=True)[0]
    # Agent A's (the watcher's) message logits get a gradient from B's TD error...
    assert float(grad[..., 0, :].abs().sum()) > 0
    # ...and so do the message parameters (the head's message row) they come from.
    head = learner.network.head[-1]
    weight_grad = torch.autograd.grad(keeper_loss, head.weight)[0]
    assert weight_grad[learner.network.max_actions :].abs().sum() > 0


@pytest.mark.timeout(60)
def test_no_comm_cuts_the_gradient_to_the_sender(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path, no_comm=True)
    terms = learner.losses(batch, probe_logits=True)
    keeper_loss = terms.td_error[..., 1].pow(2).mean()
    assert terms.unroll.logit_probe is not None
    grad = torch.autograd.grad(keeper_loss, terms.unroll.logit_probe, allow_unused=True,
                               retain_graph=True)[0]
    assert grad is None or grad.abs().sum() == 0
    head = learner.network.head[-1]
    weight_grad = torch.autograd.grad(keeper_loss, head.weight)[0]
    assert weight_grad[learner.network.max_actions :].abs().sum() == 0
    assert batch.messages.sum() == 0


@pytest.mark.timeout(60)
def test_the_mixer_learns_q_tot_through_the_messages(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path, mixer=True)
    assert learner.uses_state and batch.states.abs().sum() > 0  # the loop stored states
    terms = learner.losses(batch)
    assert terms.td_error.shape == batch.rewards.shape  # one TD error of Q_tot per step
    assert learner.mixer is not None
    mixer_grads = torch.autograd.grad(terms.loss, list(learner.mixer.parameters()),
                                      retain_graph=True)
    assert all(g.abs().sum() > 0 for g in mixer_grads[:2])
    # The team's TD error still reaches the senders' message rows through the receivers.
    head = learner.network.head[-1]
    weight_grad = torch.autograd.grad(terms.loss, head.weight)[0]
    assert weight_grad[learner.network.max_actions :].abs().sum() > 0


@pytest.mark.timeout(60)
def test_the_mixer_follows_the_target_copy_and_the_checkpoint(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path, mixer=True)
    assert learner.mixer is not None and learner.target_mixer is not None
    learner.update(batch)
    weight = learner.mixer.hyper_b1.weight
    assert not torch.equal(weight, learner.target_mixer.hyper_b1.weight)
    learner.update_target()
    assert torch.equal(weight, learner.target_mixer.hyper_b1.weight)
    again = DialLearner(learner.model, learner.config)
    again.load_state_dict(learner.state_dict())
    assert again.mixer is not None and torch.equal(again.mixer.hyper_b1.weight, weight)
    # Without the mixer nothing of it is made, saved or read.
    plain, _ = _learner_and_batch(tmp_path, run_name="plain")
    assert plain.mixer is None and not plain.uses_state and "mixer" not in plain.state_dict()


def test_dru_is_noisy_sigmoid_in_training_and_threshold_in_execution() -> None:
    logits = torch.tensor([-3.0, -0.1, 0.2, 4.0])
    assert torch.equal(dru(logits, 2.0, training=False), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    generator = torch.Generator().manual_seed(0)
    soft = dru(logits, 2.0, training=True, generator=generator)
    assert ((soft > 0) & (soft < 1)).all()
    noise = torch.zeros(4)
    assert torch.allclose(dru(logits, 2.0, training=True, noise=noise), torch.sigmoid(logits))


# ------------------------------------------------------------------ one game while training


def _record_acting_q(learner: DialLearner) -> list[torch.Tensor]:
    """Wrap the network so every forward pass of behaviour is remembered."""
    seen: list[torch.Tensor] = []
    forward = learner.network.forward

    def recording(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, logits, hidden = forward(*args)
        seen.append(q.detach().clone())
        return q, logits, hidden

    learner.network.forward = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.timeout(60)
def test_replay_of_the_latest_episodes_reproduces_the_acting_q_values(tmp_path: Path) -> None:
    """The noise that acted is the noise replayed: same weights, same episodes, same Q."""
    config = _config(tmp_path, scenario="small")
    model = GameModel(prepare_scenario(config))
    learner = DialLearner(model, config)
    seen = _record_acting_q(learner)
    episodes = collect_episodes(SimBatch(model, n_envs=4, seed=1), learner, epsilon=0.3, seed=1)
    del learner.network.forward  # back to the class's forward
    buffer = EpisodeBuffer(model, 4, with_states=learner.uses_state)
    buffer.add(episodes)
    batch = buffer.sample(4, np.random.default_rng(0))
    assert float(batch.messages.sum()) > 0, "no message was sent: the test shows nothing"
    with torch.no_grad():
        replay = learner.unroll(learner.network, batch)
    acting = torch.stack(seen, dim=1)  # (B, T, A, actions)
    assert torch.allclose(replay.q[:, :-1], acting, atol=1e-5)
    # The bits the range received (which set the masks and the cost) are the replayed
    # soft messages' bits, step for step.
    assert torch.equal((replay.messages[:, :-1] > 0.5).float(), batch.messages)


@pytest.mark.timeout(60)
def test_a_gated_sender_that_sees_nothing_sends_zero_with_no_gradient(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path)
    terms = learner.losses(batch, probe_logits=True)
    sees = learner.network.sees_activity(batch.observations)  # (B, T+1, A)
    messages = terms.unroll.messages[..., 0]
    assert (~sees).any() and sees.any()
    assert (messages[~sees] == 0).all()
    assert (batch.messages[..., 0][~sees[:, :-1]] == 0).all()
    # No gradient reaches a silent sender's logit from anyone's TD error.
    assert terms.unroll.logit_probe is not None
    grad = torch.autograd.grad(terms.td_error.pow(2).mean(), terms.unroll.logit_probe)[0]
    assert (grad[:, :-1][..., 0][~sees[:, :-1]] == 0).all()
    assert (grad[:, :-1][..., 0][sees[:, :-1]] != 0).any()  # the others do get one
    # Switched off, the same silent steps may send.
    ungated, ungated_batch = _learner_and_batch(tmp_path, gate_messages=False)
    quiet = ~ungated.network.sees_activity(ungated_batch.observations[:, :-1])
    assert ungated_batch.messages[..., 0][quiet].sum() > 0


@pytest.mark.timeout(120)
def test_gate_on_activity_keeps_a_sender_quiet_on_remembered_flags(tmp_path: Path) -> None:
    """The authors' gate opens on any host bit, a remembered compromise flag included;
    the ablation opens it on this step's scan or exploit only."""
    def collected(**changes: object) -> tuple[DialLearner, EpisodeBatch, GameModel]:
        config = _config(tmp_path, scenario="small", **changes)
        torch.manual_seed(0)
        model = GameModel(prepare_scenario(config))
        learner = DialLearner(model, config)
        buffer = EpisodeBuffer(model, 16, with_states=learner.uses_state)
        buffer.add(collect_episodes(SimBatch(model, n_envs=16, seed=5), learner, epsilon=1.0,
                                    seed=5))
        return learner, buffer.sample(16, np.random.default_rng(0)), model

    def seen(model: GameModel, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, A): any activity bit on the agent's own hosts, and only a compromise flag."""
        active = torch.zeros(observations.shape[:3], dtype=torch.bool)
        flagged = torch.zeros_like(active)
        for layout in model.agents:
            bits = model.host_bits_of(observations[:, :, layout.index], layout.index)
            active[:, :, layout.index] = bits[..., :2].sum(dim=(-1, -2)) > 0
            flagged[:, :, layout.index] = bits[..., 2:].sum(dim=(-1, -2)) > 0
        return active, flagged & ~active

    narrow, batch, model = collected(gate_on_activity=True)
    active, flagged_only = seen(model, batch.observations[:, :-1])
    assert flagged_only.any(), "no step had only a remembered flag: the test shows nothing"
    sent = batch.messages[..., 0] > 0
    assert not sent[~active].any() and sent[active].any()
    assert torch.equal(narrow.network.sees_activity(batch.observations[:, :-1]), active)
    # The authors' gate, on the same kind of steps, lets the sender speak.
    _, wide_batch, _ = collected()
    _, wide_flagged = seen(model, wide_batch.observations[:, :-1])
    assert (wide_batch.messages[..., 0] > 0)[wide_flagged].any()
    with pytest.raises(ConfigError, match="--gate-on-activity"):
        _config(tmp_path, gate_on_activity=True, gate_messages=False).validate()


def test_the_target_network_follows_every_n_updates(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[int] = []
    monkeypatch.setattr(DialLearner, "update_target", lambda self: copies.append(1))
    # 10 iterations of 16 episodes, one update each: copies after updates 3, 6 and 9.
    train(_config(tmp_path, scenario="tiny", episodes=160, envs=16, batch_episodes=16,
                  buffer_episodes=16, target_update_every=3, eval_every=160, eval_episodes=2))
    assert len(copies) == 3
    copies.clear()
    train(_config(tmp_path, scenario="tiny", episodes=160, envs=16, batch_episodes=16,
                  buffer_episodes=16, target_update_every=100, target_update_unit="episodes",
                  eval_every=160, eval_episodes=2, run_name="by-episodes"))
    assert len(copies) == 1


def test_defaults_follow_the_authors(tmp_path: Path) -> None:
    config = TrainConfig()
    assert config.gate_messages and config.comm_penalty == 0.0
    assert (config.target_update_every, config.target_update_unit) == (100, "updates")
    learner, batch = _learner_and_batch(tmp_path)
    terms = learner.losses(batch)
    assert torch.equal(terms.loss, terms.td_error.pow(2).mean())


# ------------------------------------------------------------------ SAU and the policy


@pytest.mark.timeout(60)
def test_masked_actions_are_never_chosen_nor_bootstrapped(tmp_path: Path) -> None:
    learner, batch = _learner_and_batch(tmp_path)
    with torch.no_grad():
        # Make masked actions look best: they still must not win.
        learner.network.head[-1].bias[: learner.network.max_actions] = 0.0
    policy = learner.greedy_policy()
    model = learner.model
    sim = SimBatch(model, n_envs=16, seed=5)
    observations, masks = sim.reset()
    policy.reset(16)
    for _ in range(model.scenario.episode_length):
        actions, messages = policy.act(observations, masks)
        chosen = np.take_along_axis(masks, actions[..., None], axis=2)[..., 0]
        assert (chosen > 0).all()
        result = sim.step(actions, messages)
        observations, masks = result.observations, result.masks
    terms = learner.losses(batch)
    assert torch.isfinite(terms.td_error).all()


def test_policy_keeps_hidden_state_within_an_episode(tmp_path: Path) -> None:
    learner, _ = _learner_and_batch(tmp_path)
    policy = learner.greedy_policy()
    assert isinstance(policy, DialPolicy)
    model = learner.model
    sim = SimBatch(model, n_envs=2, seed=1)
    observations, masks = sim.reset()
    policy.reset(2)
    policy.act(observations, masks)
    after_one = policy.hidden.clone()
    assert after_one.abs().sum() > 0
    policy.act(observations, masks)
    assert not torch.equal(policy.hidden, after_one)
    policy.reset(3)
    assert policy.hidden.shape[0] == 3 and policy.hidden.abs().sum() == 0


def test_ablation_switches_change_the_scenario(tmp_path: Path) -> None:
    base = load_scenario("tiny")
    assert prepare_scenario(_config(tmp_path, algo="dial-sau", scenario="tiny")) == base
    no_sau = prepare_scenario(_config(tmp_path, algo="dial", scenario="tiny"))
    assert base.blue.sau and not no_sau.blue.sau
    assert no_sau.scenario_hash != base.scenario_hash
    wide = prepare_scenario(_config(tmp_path, scenario="tiny", message_bits=2))
    assert wide.blue.message_bits == 2
    # A 2-bit DIAL trains end to end and its policy sends 2 bits per agent.
    result = train(_config(tmp_path, scenario="tiny", message_bits=2, episodes=64, envs=16,
                           batch_episodes=16, buffer_episodes=16, eval_every=64,
                           eval_episodes=8))
    policy, model, _ = load_policy(result.checkpoint)
    assert model.message_bits == 2
    observations, masks = SimBatch(model, n_envs=4, seed=0).reset()
    policy.reset(4)
    _, messages = policy.act(observations, masks)
    assert messages.shape == (4, model.n_agents, 2)


def test_every_config_field_has_help(tmp_path: Path) -> None:
    docs = field_docs(TrainConfig)
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    assert set(docs) == set(names)
    assert all(docs[name] for name in names)


# ------------------------------------------------------------------ learning


def _best_clock_return(model: GameModel, episodes: int, seed: int) -> float:
    """The best open-loop keeper: block the vault at a fixed step k (no message)."""
    keeper = model.agents[1]
    block = next(i for i, a in enumerate(keeper.actions) if a.kind == ActionKind.BLOCK)

    class Clock:
        def __init__(self, k: int) -> None:
            self.k, self.t = k, 0

        def reset(self, n_envs: int) -> None:
            self.t = 0

        def act(self, observations: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray,
                                                                             np.ndarray]:
            actions = np.zeros(observations.shape[:2], dtype=np.int64)
            if self.t >= self.k:
                actions[:, 1] = block
            self.t += 1
            return actions, np.zeros((*actions.shape, model.message_bits), dtype=np.uint8)

    return max(
        run_episodes(model, Clock(k), episodes, seed=seed).summary()["return_mean"]
        for k in range(0, model.scenario.episode_length, 2)
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~90 s alone; a loaded 2-core machine is several times slower
def test_dial_sau_learns_to_signal(tmp_path: Path) -> None:
    """On `signal`, only the watcher sees red coming and only the keeper can block.

    Budget: 12 000 episodes each (about 40 s per run on one idle CPU thread, 5 min on a
    loaded one). Gated senders, no comm penalty: seed 0 reached -34.4 (20.9 bits per
    episode), the silent learner -174.0; the best step-counting keeper is -57.7.
    """
    budget = {"scenario": "signal", "episodes": 12_000, "eval_every": 12_000,
              "eval_episodes": 200, "checkpoint_every": 12_000}
    trained = train(_config(tmp_path, run_name="dial", **budget))
    dial = trained.final_evaluation
    silent = train(_config(tmp_path, run_name="silent", no_comm=True, **budget)).final_evaluation
    model = GameModel(load_scenario("signal"))
    clock = _best_clock_return(model, 200, seed=EVAL_SEED_OFFSET)
    assert dial["bits_per_episode"] > 1.0, dial
    # Clearly above the same learner without messages, and above every policy that
    # can only count steps: the keeper acts on what the watcher tells it.
    assert dial["return_mean"] > silent["return_mean"] + 10.0, (dial, silent)
    assert dial["return_mean"] > clock + 10.0, (dial, clock)
    # The same trained agents with their messages silenced lose what the warning buys.
    policy, model, _ = load_policy(trained.checkpoint)
    speaking = run_episodes(model, policy, 200, seed=EVAL_SEED_OFFSET).summary()
    silenced = run_episodes(model, SilencedPolicy(policy), 200,
                            seed=EVAL_SEED_OFFSET).summary()
    assert silenced["bits_per_episode"] == 0.0 < speaking["bits_per_episode"]
    assert silenced["return_mean"] < speaking["return_mean"] - 10.0, (silenced, speaking)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dial_sau_beats_the_rule_based_blue_on_tiny_and_round_trips(tmp_path: Path) -> None:
    """Budget: 6 000 episodes on tiny (about 15 s on one CPU thread)."""
    config = _config(tmp_path, scenario="tiny", episodes=6_000, eval_every=6_000,
                     eval_episodes=200, checkpoint_every=6_000)
    result = train(config)
    learned = result.final_evaluation
    model = GameModel(load_scenario("tiny"))
    react = run_episodes(model, ReactPolicy(model), 200, seed=EVAL_SEED_OFFSET).summary()
    assert learned["return_mean"] > react["return_mean"] + 10.0, (learned, react)

    # The checkpoint plays exactly the greedy policy the run evaluated.
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.episodes == 6_000 and checkpoint.layout == model.layout_signature()
    policy, loaded_model, _ = load_policy(result.checkpoint, load_scenario("tiny"))
    again = run_episodes(loaded_model, policy, 200, seed=EVAL_SEED_OFFSET).summary()
    assert again["return_mean"] == pytest.approx(learned["return_mean"])
    assert again["bits_per_episode"] == pytest.approx(learned["bits_per_episode"])


# ------------------------------------------------------------------ checkpoints and CLI


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    result = train(_config(tmp_path, scenario="tiny", episodes=32, envs=16, batch_episodes=16,
                           buffer_episodes=16, eval_every=32, eval_episodes=4))
    return result.checkpoint


def test_checkpoint_refuses_another_layout(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointMismatch, match="trained on scenario 'tiny'"):
        load_policy(tiny_checkpoint, load_scenario("small"))
    tweaked = load_scenario("tiny").model_copy(update={"seed": 7})
    with pytest.raises(CheckpointMismatch, match="ignore-scenario-hash"):
        load_policy(tiny_checkpoint, tweaked)
    policy, _, _ = load_policy(tiny_checkpoint, tweaked, allow_other_hash=True)
    assert policy is not None


def test_cli_evaluate_mismatch_is_one_line(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tiny_checkpoint), "--scenario", "small", "--episodes", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def test_cli_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    code = main(["train", "--algo", "dial-sau", "--scenario", "tiny", "--seed", "3",
                 "--episodes", "48", "--envs", "16", "--batch-episodes", "16",
                 "--buffer-episodes", "16", "--eval-every", "32", "--eval-episodes", "4",
                 "--runs-dir", str(runs)])
    assert code == 0
    (run,) = runs.iterdir()
    assert run.name.startswith("tiny__dial-sau__3__")
    assert (run / "checkpoint.pt").is_file()
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard log missing"
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("episodes,") and len(rows) == 3  # header, 32 and 48 episodes
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoint.pt"), "--scenario", "tiny",
                 "--episodes", "4"]) == 0
    out = capsys.readouterr().out
    assert "return" in out and "±" in out and "bits sent" in out
