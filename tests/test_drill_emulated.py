"""Drills and validation on real hosts (tiny): recordings, reports, plots, nothing left behind.

Root and mnexec needed. Each run brings tiny up on Mininet with red, green,
sensors and actuators, plays 30-step episodes in real time through the bridge,
and must leave no link, run directory or process of its run — also when the
drill is interrupted with SIGINT.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyberdial.agents.recording import RECORDING_NAME, load_recording
from cyberdial.range.emulation.state import RUNS_ROOT, list_runs

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cyberdial", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _links_of(run_id: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()
            if line.split(":")[1].strip().startswith(f"c{run_id}")]


def _assert_gone(run_id: str) -> None:
    assert run_id
    assert _links_of(run_id) == []
    assert run_id not in {state.run_id for state in list_runs()}
    assert not (RUNS_ROOT / run_id).exists()


@pytest.mark.timeout(400)
def test_two_episode_drill_on_real_hosts(tmp_path: Path) -> None:
    out = tmp_path / "drill"
    result = _cli("drill", "tiny", "--policy", "react", "--episodes", "2", "--out", str(out),
                  timeout=380)
    assert result.returncode == 0, result.stdout + result.stderr
    recording = load_recording(out)
    header = recording.header
    assert header.range == "emulated" and header.run_id
    assert recording.episodes() == [0, 1]
    assert len(recording.steps) == 60
    assert [end.interrupted for end in recording.ends] == [False, False]
    for step in recording.steps:
        assert math.isfinite(step.reward)
        assert all(math.isfinite(v) for v in step.reward_terms.values())
        assert all(command.ok for command in step.commands), step.commands
        assert step.infos.get("dead_peers") == []
    # Real alerts reached the recording, and red really acted on real hosts.
    assert any(step.alerts for step in recording.steps)
    assert any(step.ground_truth.red_actions for step in recording.steps)
    assert any(step.commands for step in recording.steps), "react never acted"
    report = (out / "report.md").read_text()
    assert "| 0 | 30 |" in report and "| 1 | 30 |" in report and "nan" not in report.lower()
    for png in ("timeline_episode0.png", "timeline_episode1.png", "reward_terms.png", "bits.png"):
        assert (out / png).read_bytes()[:8] == PNG
    _assert_gone(header.run_id)


@pytest.mark.timeout(300)
def test_interrupted_drill_takes_the_range_down(tmp_path: Path) -> None:
    out = tmp_path / "drill"
    # Started as a backgrounded CI job starts it: with SIGINT ignored (what `cmd &` in a
    # non-interactive shell does). The drill must take SIGINT all the same.
    process = subprocess.Popen(
        [sys.executable, "-m", "cyberdial", "drill", "tiny", "--policy", "react",
         "--episodes", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 120
        recording = out / RECORDING_NAME
        while time.monotonic() < deadline:
            if recording.exists() and recording.read_text().count('"type":"step"') >= 3:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the drill never reached its third step")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "the range is down" in stdout
    recorded = load_recording(out)
    assert recorded.ends and recorded.ends[-1].interrupted
    assert (out / "report.md").exists()
    _assert_gone(recorded.header.run_id or "")


@pytest.mark.timeout(400)
def test_validation_on_real_hosts(tmp_path: Path) -> None:
    out = tmp_path / "validate"
    result = _cli("validate", "react", "--scenario", "tiny", "--episodes", "2",
                  "--tolerance", "0.5", "--out", str(out), timeout=380)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    text = (out / "validation.md").read_text()
    verdict = text.strip().splitlines()[-1]
    assert verdict.startswith("PASS" if result.returncode == 0 else "FAIL")
    assert verdict.split(":")[0] in result.stdout
    assert "nan" not in text.lower().replace("n/a", "")
    for png in ("returns.png", "terms.png", "actions.png", "sensors.png"):
        assert (out / png).read_bytes()[:8] == PNG
    sim, emulated = load_recording(out / "sim"), load_recording(out / "emulated")
    assert len(sim.steps) == len(emulated.steps) == 60
    assert sim.header.seed == emulated.header.seed
    _assert_gone(emulated.header.run_id or "")
