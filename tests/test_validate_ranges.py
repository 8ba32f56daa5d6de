"""`validate --ranges N`: the power calculation, the capacity refusal, N real ranges at once.

The fast tests check the formula for the episodes a 10% difference needs and the
refusals of `--ranges` the machine or the episodes cannot use (one line, exit 2,
nothing built). On real hosts (root, Mininet, tiny): two ranges play exactly the
episodes one range plays, recorded in seed order with their verdict line; and
SIGINT in the middle of a two-range validation leaves no link, run directory or
process of either run, nor a worker.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from cyberdial.agents.parallel import (
    GIB,
    MIB,
    RESERVE_MIB,
    Capacity,
    check_ranges,
    measure_capacity,
    range_programs,
)
from cyberdial.agents.validation import episodes_needed
from cyberdial.range.errors import CyberdialError
from cyberdial.range.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
CPUS = len(os.sched_getaffinity(0))


# ------------------------------------------------------------------ the power formula


def test_episodes_needed_is_the_two_sample_power_formula() -> None:
    sim = np.array([9.0, 11.0])  # mean 10, sample variance 2
    emulated = np.array([8.0, 12.0, 10.0])  # sample variance 4
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    # delta = 10% of |10| = 1
    assert episodes_needed(sim, emulated) == math.ceil(z * z * (2 + 4) / 1.0)
    assert episodes_needed(sim, emulated) == 48  # 7.849 × 6 = 47.09
    # Twice the difference to resolve: a quarter of the episodes.
    assert episodes_needed(sim, emulated, fraction=0.2) == math.ceil(z * z * 6 / 4)
    # A stricter test and more power need more.
    assert episodes_needed(sim, emulated, alpha=0.01, power=0.9) > 48
    # The scale is the verdict's: max(|simulated mean|, 1), so a mean near 0 is not /0.
    centred = np.array([-1.0, 1.0])  # mean 0, variance 2
    assert episodes_needed(centred, centred) == math.ceil(z * z * 4 / 0.1**2)
    # The sign of the mean does not matter.
    assert episodes_needed(-sim, -emulated) == 48


def test_episodes_needed_wants_a_spread_to_measure() -> None:
    assert episodes_needed(np.array([1.0]), np.array([1.0, 2.0])) is None
    assert episodes_needed(np.array([3.0, 3.0]), np.array([3.0, 3.0])) == 2


# ------------------------------------------------------------------ capacity


def _capacity(cpus: int = 4, available_gib: float = 8.0, hosts: int = 6,
              programs: int = 8) -> Capacity:
    return Capacity(scenario="tiny", hosts=hosts, programs=programs,
                    worker_bytes=300 * MIB, available_bytes=int(available_gib * GIB),
                    cpus=cpus)


def test_check_ranges_refuses_what_cannot_be_used() -> None:
    capacity = _capacity()
    check_ranges(1, 5, capacity)
    check_ranges(4, 4, capacity)
    with pytest.raises(CyberdialError, match="at least one range"):
        check_ranges(0, 5, capacity)
    with pytest.raises(CyberdialError, match=r"more than --episodes 3.*--ranges 3"):
        check_ranges(4, 3, capacity)
    with pytest.raises(CyberdialError, match=r"4 CPU cores.*--ranges 4 or fewer"):
        check_ranges(5, 10, capacity)
    # Memory: 300 MiB worker + 6 × 0.75 + 8 × 40 MiB per range = 624.5 MiB.
    assert capacity.range_bytes == int(300 * MIB + 6 * 0.75 * MIB + 8 * 40 * MIB)
    small_machine = _capacity(cpus=16, available_gib=3.0)
    fits = (3 * 1024 - RESERVE_MIB) * MIB // small_machine.range_bytes
    assert small_machine.most_ranges == fits == 3
    check_ranges(3, 10, small_machine)
    with pytest.raises(CyberdialError, match=r"4 ranges of tiny need about 2\.4 GiB.*"
                       r"--ranges 3 or fewer"):
        check_ranges(4, 10, small_machine)
    with pytest.raises(CyberdialError, match="free memory or validate a smaller scenario"):
        check_ranges(1, 10, _capacity(available_gib=1.2))


def test_capacity_is_measured_from_the_machine_and_the_scenario() -> None:
    small = load_scenario("small")
    capacity = measure_capacity(small)
    assert capacity.hosts == len(small.all_hosts)
    assert capacity.programs == range_programs(small)
    assert capacity.cpus == CPUS
    assert 0 < capacity.available_bytes and 10 * MIB < capacity.worker_bytes
    # tiny: per subnet services, sensor, actuator (2 subnets), green on the user one, red,
    # and the launcher that forks them.
    assert range_programs(load_scenario("tiny")) == 3 * 2 + 1 + 1 + 1


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _cli(*args: str, timeout: float, runs_root: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if runs_root is not None:
        env["CYBERDIAL_RUNS"] = str(runs_root)  # where a range would record itself
    return subprocess.run([sys.executable, "-m", "cyberdial", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=REPO, env=env)


def test_too_many_ranges_are_refused_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cyberdial.cli import main

    out, runs = tmp_path / "validate", tmp_path / "runs"
    many = CPUS + 1
    # Through the real command line once, with the runs' root where a range would go.
    line = _one_line_error(_cli("validate", "react", "--scenario", "tiny", "--episodes",
                                str(many), "--ranges", str(many), "--out", str(out),
                                timeout=120, runs_root=runs))
    assert line.startswith(f"error: --ranges {many}: this machine gives {CPUS} CPU cores"), line
    assert not runs.exists()  # no range was begun
    for options, says in [(["--episodes", "2", "--ranges", "3"], "more than --episodes 2"),
                          (["--ranges", "0"], "at least one range")]:
        code = main(["validate", "react", "--scenario", "tiny", *options, "--out", str(out)])
        err = capsys.readouterr().err
        line = _one_line_error(subprocess.CompletedProcess([], code, "", err))
        assert line.startswith("error: ") and says in line, line
    assert not out.exists()  # not even the simulated side ran


def refusing_policy(seed: int) -> tuple[object, object]:
    """A policy factory (run in each range's worker) that fails as a bad checkpoint does."""
    raise CyberdialError(f"no policy for seed {seed}")


def test_an_error_in_a_range_stops_every_range(tmp_path: Path) -> None:
    from cyberdial.agents.parallel import play_on_ranges
    from cyberdial.agents.recording import Recorder, header_for
    from cyberdial.range.model import GameModel

    model = GameModel(load_scenario("tiny"))
    header = header_for(model, range_kind="emulated", policy="x", seed=0,
                        run_ids=["a00001", "a00002"])
    with Recorder(tmp_path / "recording.jsonl", header) as recorder, pytest.raises(
            CyberdialError, match=r"^range a0000[12]: no policy for seed 3$"):
        play_on_ranges(refusing_policy, ranges=2, episodes=4, seed=3,
                       recorder=recorder, workdir=tmp_path, run_ids=["a00001", "a00002"])
    # Both workers are gone: the parent joined them before the error reached us.
    import multiprocessing

    assert multiprocessing.active_children() == []


# ------------------------------------------------------------------ real ranges


def _links_of(run_id: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()
            if line.split(":")[1].strip().startswith(f"c{run_id}")]


def _assert_gone(run_id: str) -> None:
    from cyberdial.range.emulation.state import RUNS_ROOT, list_runs

    assert run_id
    assert _links_of(run_id) == []
    assert run_id not in {state.run_id for state in list_runs()}
    assert not (RUNS_ROOT / run_id).exists()


two_cores = pytest.mark.skipif(CPUS < 2, reason="two ranges at once need two CPU cores")


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@two_cores
@pytest.mark.timeout(600)
def test_two_ranges_play_the_episodes_one_range_plays(tmp_path: Path) -> None:
    from cyberdial.agents.recording import load_recording

    runs = {}
    for ranges in (1, 2):
        out = tmp_path / f"ranges{ranges}"
        result = _cli("validate", "react", "--scenario", "tiny", "--episodes", "2", "--seed",
                      "7", "--tolerance", "0.5", "--ranges", str(ranges), "--out", str(out),
                      timeout=280)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        verdict = (out / "validation.md").read_text().strip().splitlines()[-1]
        assert verdict.startswith("PASS" if result.returncode == 0 else "FAIL")
        # The summary line: the interval and the power calculation, then the verdict.
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert any("95% interval [" in line for line in lines), result.stdout
        assert "episodes on each side" in result.stdout
        assert verdict.split(":")[0] in result.stdout
        runs[ranges] = (load_recording(out / "sim"), load_recording(out / "emulated"))
    (sim1, emu1), (sim2, emu2) = runs[1], runs[2]
    # The same seeds, in seed order, whichever range played them.
    assert emu1.header.seed == emu2.header.seed == 7
    assert emu1.episodes() == emu2.episodes() == [0, 1]
    assert [end.episode for end in emu2.ends] == [0, 1]
    assert [(s.episode, s.step) for s in emu2.steps] == [(s.episode, s.step)
                                                          for s in emu1.steps]
    assert [end.interrupted for end in emu2.ends] == [False] * 2
    # The simulated side does not depend on N at all.
    assert [s.reward for s in sim1.steps] == [s.reward for s in sim2.steps]
    # Two distinct ranges, each playing one episode (none starts before both are up),
    # each step saying which one played it.
    assert emu1.header.run_ids == [emu1.header.run_id]
    run_ids = emu2.header.run_ids
    assert len(set(run_ids)) == 2 and emu2.header.run_id is None
    played_by = {s.episode: s.infos["run_id"] for s in emu2.steps}
    assert sorted(played_by.values()) == sorted(run_ids)
    for run_id in [*run_ids, emu1.header.run_id or ""]:
        _assert_gone(run_id)


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@two_cores
@pytest.mark.timeout(400)
def test_ctrl_c_takes_every_range_down(tmp_path: Path) -> None:
    from cyberdial.agents.recording import load_recording
    from cyberdial.range.emulation.state import ProcessRecord, RunState

    out = tmp_path / "validate"
    # Started as a backgrounded job starts it (SIGINT ignored): it must take SIGINT anyway.
    process = subprocess.Popen(
        [sys.executable, "-m", "cyberdial", "validate", "react", "--scenario", "tiny",
         "--episodes", "40", "--ranges", "2", "--out", str(out)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    records: list[ProcessRecord] = []
    run_ids: list[str] = []
    try:
        recording = out / "emulated" / "recording.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            # Mid-run: both ranges up and at least one episode played.
            if recording.exists() and recording.read_text().count('"type":"episode_end"') >= 1:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("the validation never finished its first emulated episode")
        run_ids = load_recording(out / "emulated").header.run_ids
        assert len(run_ids) == 2
        for run_id in run_ids:
            state = RunState.load(run_id)
            records += state.shells + state.programs
            # The estimate `--ranges` sizes a range with counts the programs it really has.
            assert len(state.programs) == range_programs(load_scenario("tiny"))
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        workers = [ProcessRecord.of(int(pid), "worker") for pid in children]
        assert len(workers) >= 2  # the two ranges' workers (and multiprocessing's tracker)
        records += workers
        assert all(record.alive() for record in records)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=200)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "every range is down" in stdout
    for run_id in run_ids:
        _assert_gone(run_id)
    # multiprocessing's resource tracker ends when it sees its parent gone: give it a moment.
    deadline = time.monotonic() + 15
    while any(r.alive() for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r for r in records if r.alive()] == []
    # What was recorded is readable and in seed order.
    played = load_recording(out / "emulated")
    assert played.episodes() == list(range(len(played.episodes())))
