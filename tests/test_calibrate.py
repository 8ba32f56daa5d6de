"""`cyberdial calibrate`: the sensor model fitted back from recordings, written as a scenario."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cyberdial.agents.baselines import make_baseline
from cyberdial.agents.calibration import fit_sensors
from cyberdial.agents.checkpoint import CheckpointMismatch, load_policy
from cyberdial.agents.drill import SimDrillRange, run_drill
from cyberdial.agents.recording import RECORDING_NAME, Recorder, header_for, load_recording
from cyberdial.cli import main
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario, resolve_scenario_path

CLI = [sys.executable, "-m", "cyberdial"]
REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "scenarios" / "policies" / "tiny_dial_sau.pt"
CPUS = len(os.sched_getaffinity(0))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command in this process (fast: torch is loaded once); (status, stdout, stderr)."""
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[:2000]
    return lines[0]


def tiny_with_sensors(tmp_path: Path, scan: float, exploit: float) -> Path:
    """tiny.yaml with other sensor rates (a simulator whose sensors we know)."""
    text = resolve_scenario_path("tiny").read_text(encoding="utf-8")
    assert "  scan_detect: 0.95\n" in text and "  exploit_detect: 0.95\n" in text
    text = text.replace("  scan_detect: 0.95\n", f"  scan_detect: {scan}\n").replace(
        "  exploit_detect: 0.95\n", f"  exploit_detect: {exploit}\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def sim_recording(scenario_file: Path, folder: Path, episodes: int) -> Path:
    model = GameModel(load_scenario(scenario_file))
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    with Recorder(folder / RECORDING_NAME, header) as recorder:
        run_drill(SimDrillRange(model), make_baseline("react", model, seed=0), episodes, 0,
                  recorder)
    return folder


def test_fit_recovers_the_simulators_own_sensor_rates(tmp_path: Path) -> None:
    # Played in the simulator with known rates, the fit must find those rates again.
    scenario_file = tiny_with_sensors(tmp_path, scan=0.7, exploit=0.6)
    scenario = load_scenario(scenario_file)
    fit = fit_sensors(load_recording(sim_recording(scenario_file, tmp_path / "sim", 60)),
                      scenario)
    rates = {rate.name: rate for rate in fit.rates}
    assert set(rates) == {"scan_detect", "exploit_detect"}  # tiny does not watch sweeps
    for name, true in (("scan_detect", 0.7), ("exploit_detect", 0.6)):
        rate = rates[name]
        assert rate.trials >= 50, rate
        low, high = rate.interval()
        assert low <= true <= high, (rate, low, high)
        assert abs(rate.fitted - true) < 0.12, rate
    assert fit.episodes == 60 and fit.steps == 60 * scenario.episode_length


def test_calibrated_scenario_keeps_the_game_and_plays_base_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario_file = tiny_with_sensors(tmp_path, scan=0.9, exploit=0.8)
    recording = sim_recording(scenario_file, tmp_path / "sim", 20)
    out = tmp_path / "cal" / "tiny-cal.yaml"
    status, stdout, stderr = run(capsys, "calibrate", str(scenario_file), "--recording",
                                 str(recording), "--out", str(out))
    assert status == 0, stdout + stderr
    assert "calibrated scenario:" in stdout
    base, calibrated = load_scenario(scenario_file), load_scenario(out)
    # Only the name, the sensor model and the provenance differ: same range, same game.
    data, written = yaml.safe_load(scenario_file.read_text()), yaml.safe_load(out.read_text())
    assert written.pop("name") == "tiny-cal" and data.pop("name") == "tiny"
    written_sensors, provenance = written.pop("sensors"), written.pop("calibration")
    data.pop("sensors")
    assert written == data
    fit = fit_sensors(load_recording(recording), base)
    assert calibrated.sensors.exploit_detect == pytest.approx(fit.fitted()["exploit_detect"],
                                                              abs=1e-4)
    assert written_sensors["scan_detect"] == pytest.approx(fit.fitted()["scan_detect"], abs=1e-4)
    assert provenance == {"base": "tiny", "base_hash": base.scenario_hash, "policy": "react",
                          "episodes": 20, "seed": 0}
    assert "# fitted by `cyberdial calibrate`" in out.read_text()
    assert GameModel(calibrated).layout_signature()["state_size"] == GameModel(
        base).layout_signature()["state_size"]
    # A checkpoint trained on the shipped tiny plays on tiny's calibration...
    shipped_cal = tmp_path / "shipped-cal.yaml"
    shipped = sim_recording(resolve_scenario_path("tiny"), tmp_path / "shipped", 3)
    assert run(capsys, "calibrate", "tiny", "--recording", str(shipped), "--out",
               str(shipped_cal))[0] == 0
    _, model, _ = load_policy(POLICY, load_scenario(shipped_cal))
    assert model.scenario.name == "tiny-cal"
    # ...but not on a calibration of another scenario version.
    other = shipped_cal.read_text().replace(
        load_scenario("tiny").scenario_hash, "0123456789abcdef")
    (tmp_path / "other.yaml").write_text(other)
    with pytest.raises(CheckpointMismatch):
        load_policy(POLICY, load_scenario(tmp_path / "other.yaml"))


def test_calibrate_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario_file = tiny_with_sensors(tmp_path, scan=0.9, exploit=0.9)
    recording = sim_recording(scenario_file, tmp_path / "sim", 2)
    # A recording of another scenario (the shipped tiny's hash differs): the real CLI.
    line = one_line_error(cli("calibrate", "tiny", "--recording", str(recording)))
    assert "not on this tiny" in line
    status, _, err = run(capsys, "calibrate", "tiny", "--episodes", "0")
    assert status == 2 and "--episodes" in err
    out = tmp_path / "cal.yaml"
    assert run(capsys, "calibrate", str(scenario_file), "--recording", str(recording),
               "--out", str(out))[0] == 0
    status, _, err = run(capsys, "calibrate", str(out), "--recording", str(recording))
    assert status == 2 and "already a calibration" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cal.yaml.tmp").exists()
    if os.geteuid() != 0:
        status, _, err = run(capsys, "calibrate", "tiny")
        assert status == 2 and "root" in err


def test_calibrate_refuses_ranges_it_cannot_use_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `validate --ranges`: one line, exit 2, no range begun, no file written.
    runs, out = tmp_path / "runs", tmp_path / "cal.yaml"
    many = CPUS + 1
    result = subprocess.run(
        [*CLI, "calibrate", "tiny", "--episodes", str(many), "--ranges", str(many), "--out",
         str(out)], capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        env=dict(os.environ, CYBERDIAL_RUNS=str(runs)))
    line = one_line_error(result)
    assert line.startswith(f"error: --ranges {many}: this machine gives {CPUS} CPU cores"), line
    assert not runs.exists()
    recording = sim_recording(resolve_scenario_path("tiny"), tmp_path / "sim", 1)
    for options, says in [(["--episodes", "2", "--ranges", "3"], "more than --episodes 2"),
                          (["--ranges", "0"], "at least one range"),
                          (["--recording", str(recording), "--ranges", "2"], "with --recording")]:
        status, _, err = run(capsys, "calibrate", "tiny", *options, "--out", str(out))
        assert status == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not out.exists() and not (tmp_path / "cal.episodes").exists()


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.skipif(CPUS < 2, reason="two ranges at once need two CPU cores")
@pytest.mark.timeout(600)
def test_calibrate_on_real_hosts_writes_a_scenario_the_simulator_uses(tmp_path: Path) -> None:
    # On two ranges at once (the one-range path is validate's, tested there).
    from cyberdial.range.emulation.state import RUNS_ROOT, list_runs

    out = tmp_path / "tiny-cal.yaml"
    result = cli("calibrate", "tiny", "--episodes", "3", "--ranges", "2", "--out", str(out),
                 timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every range is down: 3 episode(s) played on 2" in result.stdout
    calibrated = load_scenario(out)
    assert calibrated.calibration is not None
    assert calibrated.calibration.episodes == 3
    assert calibrated.calibration.base_hash == load_scenario("tiny").scenario_hash
    recording = load_recording(tmp_path / "tiny-cal.episodes" / "emulated")
    assert recording.header.range == "emulated" and recording.episodes() == [0, 1, 2]
    assert len(set(recording.header.run_ids)) == 2
    assert {step.infos["run_id"] for step in recording.steps} == set(recording.header.run_ids)
    for run_id in recording.header.run_ids:
        assert run_id not in {state.run_id for state in list_runs()}
        assert not (RUNS_ROOT / run_id).exists()
    fit = fit_sensors(recording, load_scenario("tiny"))
    exploits = {rate.name: rate for rate in fit.rates}["exploit_detect"]
    assert exploits.trials > 0  # red really exploited on three episodes of tiny
    assert calibrated.sensors.exploit_detect == pytest.approx(exploits.fitted, abs=1e-4)
    # The simulator trains and evaluates on it.
    evaluate = cli("evaluate", "react", "--scenario", str(out), "--episodes", "3")
    assert evaluate.returncode == 0, evaluate.stderr
    assert "tiny-cal" in evaluate.stdout


@pytest.mark.parametrize("path", sorted((REPO / "scenarios" / "calibrated").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_calibrations_are_of_the_shipped_scenarios_as_they_are(path: Path) -> None:
    # A calibration measured a range: if its base scenario changed since, measure again.
    calibrated = load_scenario(path)
    assert calibrated.calibration is not None
    base = load_scenario(calibrated.calibration.base)
    assert calibrated.calibration.base_hash == base.scenario_hash
    assert calibrated.model_copy(update={
        "name": base.name, "sensors": base.sensors, "calibration": None}) == base
