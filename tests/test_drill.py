"""Drills on the simulator: recordings, reports with plots, replay, a person in one seat."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cyberdial.agents.baselines import ReactPolicy
from cyberdial.agents.drill import SimDrillRange, run_drill
from cyberdial.agents.recording import (
    RECORDING_NAME,
    Recorder,
    header_for,
    load_recording,
)
from cyberdial.agents.report import write_report
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario


def _cli(
    *args: str, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cyberdial", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )


def test_drill_records_reports_and_replays(tmp_path: Path) -> None:
    out = tmp_path / "drill"
    result = _cli(
        "drill", "tiny", "--range", "sim", "--policy", "react", "--episodes", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    recording = load_recording(out)
    assert recording.header.scenario == "tiny" and recording.header.range == "sim"
    assert recording.episodes() == [0, 1]
    assert len(recording.steps) == 2 * 30
    assert [end.interrupted for end in recording.ends] == [False, False]
    for step in recording.steps:
        assert math.isfinite(step.reward)
        assert set(step.actions) == {"blue_user", "blue_ops"}
        assert len(step.ground_truth.compromise) == 6
    for end in recording.ends:
        steps = recording.steps_of(end.episode)
        assert end.episode_return == pytest.approx(sum(s.reward for s in steps))
    report = (out / "report.md").read_text()
    assert "| 0 | 30 |" in report and "| 1 | 30 |" in report
    assert "nan" not in report.lower()
    for png in ("timeline_episode0.png", "timeline_episode1.png", "reward_terms.png", "bits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    replay = _cli("replay", str(out), "--speed", "0")
    assert replay.returncode == 0, replay.stderr
    assert f"episode 1: return {recording.ends[1].episode_return:.2f}" in replay.stdout

    rewritten = _cli("report", str(out / RECORDING_NAME), "--out", str(tmp_path / "again"))
    assert rewritten.returncode == 0, rewritten.stderr
    assert (tmp_path / "again" / "report.md").read_text() == report


def test_human_seat_takes_typed_actions_and_sleeps_on_nonsense(tmp_path: Path) -> None:
    out = tmp_path / "human"
    # blue_user: block its subnet at step 1, then type nonsense, then nothing at all.
    typed = "block user\nrestore nowhere\n99\n"
    result = _cli(
        "drill",
        "tiny",
        "--range",
        "sim",
        "--policy",
        "sleep",
        "--human",
        "blue_user",
        "--out",
        str(out),
        stdin=typed,
    )
    assert result.returncode == 0, result.stderr
    assert "you are blue_user" in result.stdout
    assert "'99' is not a legal action" in result.stdout
    steps = load_recording(out).steps
    assert steps[0].actions["blue_user"] == "block user"
    assert "user" in steps[0].ground_truth.blocked
    assert all(s.actions["blue_user"] == "sleep" for s in steps[1:])


def test_unknown_human_agent_is_one_line_error(tmp_path: Path) -> None:
    result = _cli(
        "drill", "tiny", "--range", "sim", "--human", "nobody", "--out", str(tmp_path / "x")
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --human nobody: no such agent; choose one of blue_user, blue_ops"
    ]


class _InterruptAt:
    """React, but a Ctrl-C arrives at a given step."""

    def __init__(self, model: GameModel, step: int) -> None:
        self.inner = ReactPolicy(model)
        self.step = step
        self.calls = 0

    def reset(self, n_envs: int) -> None:
        self.inner.reset(n_envs)

    def act(self, observations: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls > self.step:
            raise KeyboardInterrupt
        return self.inner.act(observations, masks)


def test_interrupted_drill_leaves_a_readable_recording(tmp_path: Path) -> None:
    model = GameModel(load_scenario("tiny"))
    path = tmp_path / RECORDING_NAME
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    with pytest.raises(KeyboardInterrupt), Recorder(path, header) as recorder:
        run_drill(SimDrillRange(model), _InterruptAt(model, 5), 2, 0, recorder)
    recording = load_recording(path)
    assert len(recording.steps) == 5
    assert recording.ends[0].interrupted and recording.ends[0].steps == 5
    report = write_report(recording, tmp_path).read_text()
    assert "| 0 | 5 |" in report and "| yes |" in report


def test_corrupt_recording_is_a_placed_error(tmp_path: Path) -> None:
    model = GameModel(load_scenario("tiny"))
    path = tmp_path / RECORDING_NAME
    with Recorder(path, header_for(model, range_kind="sim", policy="x", seed=0)):
        pass
    with path.open("a") as file:
        file.write(json.dumps({"type": "step", "episode": "zero"}) + "\n")
    with pytest.raises(CyberdialError, match=rf"{RECORDING_NAME}:2: not a cyberdial recording"):
        load_recording(path)
    with pytest.raises(CyberdialError, match="no recording found"):
        load_recording(tmp_path / "missing")


def test_emulated_drill_as_non_root_says_how(tmp_path: Path) -> None:
    """As root (CI) the check runs with privileges really dropped by setpriv."""
    argv = [sys.executable, "-m", "cyberdial", "drill", "tiny", "--out", str(tmp_path / "x")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv (util-linux) to drop root")
        tmp_path.chmod(0o777)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {**os.environ, "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path)}
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: a drill on the emulated range needs root: run with sudo or use --range sim"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_policy_that_is_neither_baseline_nor_file(tmp_path: Path) -> None:
    result = _cli("drill", "tiny", "--range", "sim", "--policy", str(tmp_path / "nope.pt"))
    assert result.returncode == 2
    assert "neither a baseline" in result.stderr
