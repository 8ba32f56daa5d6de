"""`cyberdial compare` end to end on tiny: every algorithm trained briefly through the CLI,
a report whose table has every row with finite numbers, curves, resuming without
redoing finished runs, and refusal to mix runs made with other settings."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cyberdial.agents.compare import (
    CompareConfig,
    CompareError,
    every_step_bits,
    parse_algo,
    pending,
    t_quantile,
)
from cyberdial.cli import main
from cyberdial.commands.compare import parse_episodes
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario

ALGOS = ["dial-sau", "dial", "dial-sau-nocomm", "qmix", "iql", "react", "random", "sleep"]
NUMBER = re.compile(r"-?(?:\d+\.?\d*|nan|inf)")


def _table_rows(report: str, scenario: str, table: int = 0) -> dict[str, list[str]]:
    """The rows of one scenario's `table`-th table (0: the algorithms): name -> other cells."""
    section = report.split(f"## {scenario} ", 1)[1].split("\n## ", 1)[0]
    tables = [block for block in section.split("\n\n") if block.startswith("| ")]
    rows: dict[str, list[str]] = {}
    for line in tables[table].splitlines():
        if line.startswith(("| algorithm", "| comparison", "|-")):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _compare(results: Path, *extra: str) -> int:
    return main(["compare", "--name", "t", "--results-dir", str(results), "--scenarios", "tiny",
                 "--algos", *ALGOS, "--seeds", "2", "--episodes", "32", "--eval-points", "2",
                 "--eval-episodes", "4", "--final-episodes", "8", "--workers", "2", *extra])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compare_cli_on_tiny_reports_every_algorithm_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Budget: 16 runs of 32 episodes (about 15 s alone on 2 cores), then three resumes."""
    results = tmp_path / "results"
    assert _compare(results) == 0
    out_dir = results / "t"
    report = (out_dir / "report.md").read_text()
    assert "cyberdial compare --name t" in report  # the exact command is quoted
    rows = _table_rows(report, "tiny")
    reference = rows.pop("*send every step* (reference)")
    assert set(rows) == set(ALGOS)
    for algo, cells in rows.items():
        seeds, numbers = cells[0], [c for c in cells[1:] if c != "-"]
        assert seeds == "2", (algo, cells)
        values = [float(v) for cell in numbers for v in NUMBER.findall(cell)]
        assert len(values) >= 12 and all(math.isfinite(v) for v in values), (algo, cells)
    model = GameModel(load_scenario("tiny"))
    assert reference[3] == str(every_step_bits(model)) == "60"  # 2 agents × 1 bit × 30 steps
    for silent in ("sleep", "qmix", "iql", "dial-sau-nocomm"):  # none of these may talk
        assert rows[silent][3] == "0.0 ± 0.0", (silent, rows[silent])
    # What the messages carry: a row per message learner, the no-message ablation at 0.
    carried = _table_rows(report, "tiny", table=1)
    assert set(carried) == {"dial-sau", "dial", "dial-sau-nocomm"}
    assert carried["dial-sau-nocomm"][0].startswith("0.000 ± 0.000")
    assert carried["dial-sau-nocomm"][3].startswith("0.0 ± 0.0 %")
    # The paper's comparisons, paired by seed, each with its interval.
    pairs = _table_rows(report, "tiny", table=2)
    assert {"dial-sau − qmix", "dial-sau − dial-sau-nocomm", "dial-sau − dial",
            "dial-sau − react"} <= set(pairs)
    for cells in pairs.values():
        assert cells[0] == "2" and cells[2].startswith("[") and "nan" not in cells[2]
    assert (out_dir / "curves_tiny.png").stat().st_size > 1000
    finished = sorted((out_dir / "final").glob("*.json"))
    assert len(finished) == len(ALGOS) * 2
    record = json.loads(finished[0].read_text())
    assert {"curve", "final", "train_seconds", "every_step_bits"} <= set(record)

    # Resume: nothing finished is redone; a lost result is redone alone.
    stamps = {path: path.stat().st_mtime_ns for path in finished}
    capsys.readouterr()
    assert _compare(results) == 0
    assert "0 runs to do" in " ".join(capsys.readouterr().out.split())
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps
    lost = out_dir / "final" / "tiny__qmix__1.json"
    lost.unlink()
    assert _compare(results) == 0
    assert "1 run to do" in " ".join(capsys.readouterr().out.split()) and lost.is_file()

    # Other settings under the same name would mix incomparable runs: refused, one line.
    assert main(["compare", "--name", "t", "--results-dir", str(results), "--scenarios", "tiny",
                 "--algos", "qmix", "--episodes", "64", "--eval-points", "2",
                 "--eval-episodes", "4", "--final-episodes", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use another --name" in err[0]
    # So would the same budgets with other per-algorithm settings.
    assert _compare(results, "--option", "dial-sau:comm_penalty=1.0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "options" in err[0] and "use another --name" in err[0]

    # --report-only rewrites the report from the saved runs and the saved command.
    (out_dir / "report.md").unlink()
    assert main(["compare", "--name", "t", "--results-dir", str(results), "--report-only"]) == 0
    assert set(_table_rows((out_dir / "report.md").read_text(), "tiny")) == {
        *ALGOS, "*send every step* (reference)"}


def test_algorithm_names_and_budgets() -> None:
    assert parse_algo("dial-sau-nocomm") == ("dial-sau", {"no_comm": True})
    assert parse_algo("dial-sau-mix") == ("dial-sau", {"mixer": True})
    assert parse_algo("dial-nocomm-mix") == ("dial", {"no_comm": True, "mixer": True})
    with pytest.raises(CompareError, match="qmix is not DIAL: qmix always mixes"):
        parse_algo("qmix-mix")
    with pytest.raises(CompareError, match="choose from"):
        parse_algo("dial-sau-mix-nocomm")  # suffixes in one order only
    assert parse_algo("qmix") == ("qmix", {})
    assert parse_algo("react") == ("react", {})
    with pytest.raises(CompareError, match="choose from"):
        parse_algo("vdn")
    assert parse_episodes(["100", "large=7"], ["small", "large"]) == {"small": 100, "large": 7}
    with pytest.raises(CompareError, match="SCENARIO=N"):
        parse_episodes(["small=many"], ["small"])
    with pytest.raises(CompareError, match="no episode budget"):
        CompareConfig(scenarios=["tiny"], algos=["qmix"]).validate()
    # Hand-written blues need no budget.
    CompareConfig(scenarios=["tiny"], algos=["react"]).validate()


@pytest.mark.parametrize(("option", "message"), [
    ("qmix:gate_messages=false", "qmix sends no messages, so gate_messages makes no sense"),
    ("iql:comm_penalty=1", "iql sends no messages"),
    ("dial-sau:colour=red", "unknown setting 'colour'"),
    ("dial-sau:hidden=wide", "hidden takes an integer"),
    ("dial-sau:seed=4", "compare sets seed for every run itself"),
    ("vdn:hidden=4", "'vdn' is not one of --algos"),
    ("react:hidden=4", "react is a hand-written blue"),
    ("dial-sau-hidden=4", "expected ALGO:SETTING=VALUE"),
    ("dial-sau:target_update_unit=days", "--target-update-unit must be one of"),
    ("qmix:mixer=true", "--mixer is for dial and dial-sau: qmix always mixes"),
    ("iql:mixer=true", "--mixer is for dial and dial-sau: iql never mixes"),
])
def test_bad_options_are_one_line_errors_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    code = main(["compare", "--name", "bad", "--results-dir", str(tmp_path), "--scenarios",
                 "tiny", "--algos", "dial-sau", "qmix", "iql", "react", "--episodes", "8",
                 "--option", option])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()  # nothing half-made
    capsys.readouterr()
    assert main(["compare", "--name", "bad", "--results-dir", str(tmp_path), "--scenarios",
                 "tiny", "--algos", "qmix-nocomm", "--episodes", "8"]) == 2
    assert "qmix sends no messages" in capsys.readouterr().err


def test_options_reach_the_runs_and_the_command(tmp_path: Path) -> None:
    from cyberdial.commands.compare import _command_line, parse_options

    options = parse_options(["dial-sau:comm_penalty=0.5", "dial-sau:gate_messages=false",
                             "qmix:hidden=32"])
    assert options == {"dial-sau": {"comm_penalty": 0.5, "gate_messages": False},
                       "qmix": {"hidden": 32}}
    config = CompareConfig(name="o", scenarios=["tiny"], algos=["dial-sau", "qmix"], seeds=1,
                           episodes={"tiny": 8}, options=options, results_dir=str(tmp_path))
    config.validate()
    line = _command_line(config)
    assert "--option dial-sau:gate_messages=false" in line and "--option qmix:hidden=32" in line
    assert config.settings()["options"] == options


def test_jobs_run_largest_first_and_bands_use_student_t(tmp_path: Path) -> None:
    config = CompareConfig(scenarios=["tiny", "small"], algos=["react", "qmix"], seeds=2,
                           episodes={"tiny": 10, "small": 10}, results_dir=str(tmp_path))
    jobs = pending(config)
    assert len(jobs) == 8
    assert (jobs[0].scenario, jobs[0].algo) == ("small", "qmix")
    # Equal cost: seed by seed, every algorithm's seed 0 before any seed 1.
    config.algos = ["dial-sau", "qmix"]
    learners = [(j.algo, j.seed) for j in pending(config) if j.scenario == "small"]
    assert learners == [("dial-sau", 0), ("qmix", 0), ("dial-sau", 1), ("qmix", 1)]
    assert t_quantile(5) == pytest.approx(2.776)
    assert math.isnan(t_quantile(1))


def test_cli_evaluate_scores_a_hand_written_blue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "react", "--scenario", "tiny", "--episodes", "4"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "tiny: react, 4 episodes" in out and "bits sent" in out
    assert "bits sent 0.00" not in out and "bits sent" in out  # react warns its peers
    # Per sender: when it spoke (the gate's two reasons to open) and what its bit carried.
    assert "when each sender sends a 1" in out and "sends | flag" in out
    assert "what the messages carry" in out and "MI red | active" in out


def test_cli_evaluate_silent_sends_no_bit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "react", "--scenario", "tiny", "--episodes", "4", "--silent"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "tiny: react, messages silenced, 4 episodes" in out
    assert "bits sent 0.00 ± 0.00" in out and "cost: comm 0.00" in out


def _children(pid: int) -> set[int]:
    """Every process below `pid` (from /proc; threads' children lists together)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            frontier.extend(kids - found)
            found |= kids
    return found


@pytest.mark.timeout(900)
def test_kill_of_the_command_alone_stops_its_workers(tmp_path: Path) -> None:
    """`kill PID` (SIGTERM to the command only, not its group, as a scheduler or a user
    sends it) while the local workers train: the command exits as interrupted and takes
    its workers with it, where it used to wait for them to finish their runs."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "cyberdial", "compare", "--name", "k", "--results-dir",
               str(results), "--scenarios", "tiny", "--algos", "qmix", "dial-sau",
               "--seeds", "1", "--episodes", "200000", "--workers", "2"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 600
        # Both runs training: their folders have an eval.csv (written as training starts).
        while len(list((results / "k" / "runs").glob("*/eval.csv"))) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the runs did not start in 600 s"
            time.sleep(0.2)
        workers = _children(process.pid)
        assert workers
        os.kill(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert not list((results / "k" / "final").glob("*.json"))  # no run was finished


def test_a_stopped_run_continues_from_its_last_evaluation_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_job snapshots at each evaluation point; run again, it resumes from the last one
    and ends as a run left alone (the final record and curve, the time aside)."""
    import cyberdial.agents.training as training
    from cyberdial.agents.compare import Job, run_job

    def make(name: str) -> CompareConfig:
        return CompareConfig(name=name, scenarios=["tiny"], algos=["qmix"], seeds=1,
                             episodes={"tiny": 48}, eval_points=3, eval_episodes=4,
                             final_episodes=8, results_dir=str(tmp_path))

    job = Job("tiny", "qmix", 0)
    stale = tmp_path / "whole" / "runs" / job.key / "events.out.tfevents.1.earlier-start"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    whole = run_job(job, make("whole"))
    assert not stale.exists()  # a run started afresh does not mix with an earlier start

    real_save = training.save_snapshot

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C right after the first snapshot

    monkeypatch.setattr(training, "save_snapshot", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, make("stopped"))
    monkeypatch.setattr(training, "save_snapshot", real_save)
    run_dir = tmp_path / "stopped" / "runs" / job.key
    first_point = (run_dir / "eval.csv").read_text().splitlines()[1]
    resumed = run_job(job, make("stopped"))

    # The first evaluation is the stopped run's own (its time too): it was not made again.
    assert (run_dir / "eval.csv").read_text().splitlines()[1] == first_point
    assert not (run_dir / "resume.pt").exists()
    assert resumed["final"] == whole["final"]
    assert len(resumed["curve"]) == len(whole["curve"]) == 3
    for got, want in zip(resumed["curve"], whole["curve"], strict=True):
        assert {k: v for k, v in got.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in want.items() if k != "seconds"}, nan_ok=True)


def test_a_snapshot_the_run_cannot_continue_is_discarded(tmp_path: Path) -> None:
    from cyberdial.agents.compare import Job, run_job

    config = CompareConfig(name="d", scenarios=["tiny"], algos=["qmix"], seeds=1,
                           episodes={"tiny": 16}, eval_points=2, eval_episodes=4,
                           final_episodes=4, results_dir=str(tmp_path))
    job = Job("tiny", "qmix", 0)
    run_dir = tmp_path / "d" / "runs" / job.key
    run_dir.mkdir(parents=True)
    (run_dir / "resume.pt").write_bytes(b"not a snapshot")
    record = run_job(job, config)
    assert record["episodes"] == 16 and record["curve"][-1]["episodes"] == 16
    assert not (run_dir / "resume.pt").exists()
