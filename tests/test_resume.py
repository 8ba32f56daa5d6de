"""A training run stopped after a resume snapshot and continued with `--resume` ends exactly
as the same run left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cyberdial.agents.buffer import EpisodeBuffer, buffer_snapshot, restore_buffer
from cyberdial.agents.checkpoint import load_checkpoint
from cyberdial.agents.training import (
    RESUME_FILE,
    ConfigError,
    Progress,
    TrainConfig,
    config_for,
    train,
)
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario


class Stop(Exception):
    pass


def _config(algo: str, runs: Path, name: str, **changes: object) -> TrainConfig:
    # A buffer larger than the batch, so that replay sampling draws from the loop's stream.
    return config_for(algo, scenario="tiny", seed=3, episodes=48, envs=8, eval_every=16,
                      eval_episodes=4, batch_episodes=8, buffer_episodes=32,
                      runs_dir=str(runs), run_name=name, tensorboard=False, **changes)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(checkpoint).learner_state
    return {f"{part}.{key}": value for part in ("network", "target", "mixer")
            if part in state for key, value in state[part].items()}


@pytest.mark.parametrize("algo", ["dial-sau", "qmix"])
def test_a_resumed_run_ends_as_the_run_left_alone(algo: str, tmp_path: Path) -> None:
    whole = train(_config(algo, tmp_path, "whole"))

    def stop_after_snapshot(progress: Progress) -> None:
        if progress.episodes == 24:  # after the snapshot at 16, before the one at 32
            raise Stop

    with pytest.raises(Stop):
        train(_config(algo, tmp_path, "stopped", resume_every=16), on_progress=stop_after_snapshot)
    stopped = tmp_path / "stopped"
    assert (stopped / RESUME_FILE).is_file()
    resumed = train(_config(algo, tmp_path, "other-name", resume=str(stopped)))

    assert resumed.run_dir == stopped and resumed.episodes == whole.episodes
    assert not (stopped / RESUME_FILE).exists()  # finished: nothing left to resume
    for got, want in zip(resumed.evaluations, whole.evaluations, strict=True):
        assert {k: v for k, v in got.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in want.items() if k != "seconds"}, nan_ok=True)
    # The evaluation at 16 came from the snapshot, the ones at 32 and 48 were made again.
    assert (stopped / "eval.csv").read_text().count("\n") == 1 + 3
    resumed_weights, whole_weights = _weights(resumed.checkpoint), _weights(whole.checkpoint)
    assert resumed_weights.keys() == whole_weights.keys()
    for key, value in whole_weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_resume_refuses_other_settings_and_missing_snapshots(tmp_path: Path) -> None:
    def stop(progress: Progress) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(_config("qmix", tmp_path, "run", resume_every=8), on_progress=stop)
    run = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="--lr"):
        train(_config("qmix", tmp_path, "x", resume=run, lr=0.01))
    with pytest.raises(ConfigError, match=r"no resume\.pt"):
        train(_config("qmix", tmp_path, "x", resume=str(tmp_path / "nowhere")))
    (tmp_path / "run" / RESUME_FILE).write_bytes(b"not a snapshot")
    with pytest.raises(ConfigError, match="not a readable resume snapshot"):
        train(_config("qmix", tmp_path, "x", resume=run))


def test_the_buffer_packs_to_the_same_episodes() -> None:
    model = GameModel(load_scenario("small"))
    buffer = EpisodeBuffer(model, 6)
    rng = np.random.default_rng(0)
    t, a = model.scenario.episode_length, model.n_agents
    episodes = {
        "observations": (rng.random((4, t + 1, a, model.max_obs)) < 0.02).astype(np.uint8),
        "masks": rng.random((4, t + 1, a, model.max_actions)) < 0.3,
        "actions": rng.integers(0, 5, (4, t, a)),
        "messages": (rng.random((4, t, a, model.message_bits)) < 0.5).astype(np.uint8),
        "rewards": rng.normal(size=(4, t)).astype(np.float32),
        "state_bits": (rng.random((4, t + 1, model.state_size - 1)) < 0.1).astype(np.uint8),
        "noise": rng.normal(size=(4, t + 1, a, model.message_bits)).astype(np.float32),
    }
    buffer.add(episodes)
    buffer.add({k: v[:3] for k, v in episodes.items()})  # wraps around the ring
    copy = EpisodeBuffer(model, 6)
    restore_buffer(copy, buffer_snapshot(buffer))
    assert (copy.next, copy.filled) == (buffer.next, buffer.filled) == (1, 6)
    for name in episodes:
        assert np.array_equal(getattr(copy, name), getattr(buffer, name)), name
    with pytest.raises(ValueError, match="6 episodes"):
        restore_buffer(EpisodeBuffer(model, 5), buffer_snapshot(buffer))

    # A snapshot from before the states were kept as bits holds them as float32 with
    # their progress column: it restores to the same buffer.
    old = buffer_snapshot(buffer)
    states = np.concatenate([buffer.state_bits, np.broadcast_to(
        buffer.progress[None, :, None], (6, t + 1, 1))], axis=2, dtype=np.float32)
    del old["fields"]["state_bits"]
    old["fields"]["states"] = {"raw": states}
    from_old = EpisodeBuffer(model, 6)
    restore_buffer(from_old, old)
    assert np.array_equal(from_old.state_bits, buffer.state_bits)
