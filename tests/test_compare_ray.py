"""`cyberdial compare --engine ray` with a real Ray on this machine: the same rows as the
local workers for the same seeds, a failed run reported without stopping the others,
Ctrl-C that leaves no process of ours behind and a sweep that resumes after it, and a
sweep spread over two Ray nodes (`ray.cluster_utils.Cluster`).

Ray starts in 5-20 s on this loaded machine; every sweep is on `tiny` with a few episodes.
Nothing here runs `ray stop` (it would stop every Ray on the machine): each test stops
only the Ray it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyberdial.agents.compare import CompareConfig
from cyberdial.cli import main

pytest.importorskip("ray")

pytestmark = pytest.mark.slow
COLUMNS_THAT_VARY = ("train min",)  # wall-clock time of the run


def _rows(report: Path) -> list[str]:
    """The report's table rows, less the wall-clock column (the only one that may differ)."""
    rows = []
    for line in report.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| comparison"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| algorithm"):
            header = cells
        elif len(cells) == len(header) and header[-1] in COLUMNS_THAT_VARY:
            cells = cells[:-1]
        rows.append(" | ".join(cells))
    return rows


def _sweep(results: Path, *extra: str, algos: tuple[str, ...] = ("dial-sau", "qmix", "react"),
           seeds: int = 2, episodes: int = 32) -> list[str]:
    return ["compare", "--name", "t", "--results-dir", str(results), "--scenarios", "tiny",
            "--algos", *algos, "--seeds", str(seeds), "--episodes", str(episodes),
            "--eval-points", "2", "--eval-episodes", "4", "--final-episodes", "8",
            "--workers", "2", *extra]


def _records(results: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text())
            for path in sorted((results / "t" / "final").glob("*.json"))}


@pytest.mark.timeout(60)
def test_an_address_where_no_ray_listens_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    assert main(_sweep(tmp_path, "--engine", "ray", "--address", f"127.0.0.2:{port}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot join the Ray cluster" in err[0], err
    assert not (tmp_path / "t").exists()  # nothing half-made
    assert main(_sweep(tmp_path, "--address", f"127.0.0.2:{port}")) == 2
    assert "--address is for --engine ray" in capsys.readouterr().err


@pytest.mark.timeout(1500)  # ~140 s alone; several times that on a loaded 2-core machine
def test_ray_sweep_gives_the_local_rows_and_reports_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both engines, the same sweep, the same seeds, one run made to fail the same way in
    both (its run folder is blocked by a file on the machine that runs compare: with Ray,
    the run trains on its node and fails when its files come home)."""
    local, through_ray = tmp_path / "local", tmp_path / "ray"
    for results in (local, through_ray):
        (results / "t" / "runs").mkdir(parents=True)
        (results / "t" / "runs" / "tiny__qmix__1").write_text("in the way")
    assert main(_sweep(local)) == 2
    local_err = capsys.readouterr().err
    assert main(_sweep(through_ray, "--engine", "ray")) == 2
    out, err = capsys.readouterr()
    for text in (local_err, err):  # one line names the failed run; the others finished
        assert "1 run(s) failed (tiny__qmix__1; first:" in text
    assert "on a local Ray with 2 CPUs" in " ".join(out.split())
    assert "tiny__qmix__1: failed" in out
    assert len(_records(through_ray)) == len(_records(local)) == 5
    assert _rows(local / "t" / "report.md") == _rows(through_ray / "t" / "report.md")

    # Unblocked, the same command trains only the failed run; the rows still agree.
    for results in (local, through_ray):
        (results / "t" / "runs" / "tiny__qmix__1").unlink()
    assert main(_sweep(local)) == 0
    assert main(_sweep(through_ray, "--engine", "ray")) == 0
    assert "1 run to do" in " ".join(capsys.readouterr().out.split())
    local_records, ray_records = _records(local), _records(through_ray)
    assert set(local_records) == set(ray_records) and len(ray_records) == 6
    for key, record in ray_records.items():
        assert record["where"]["engine"] == "ray" and local_records[key]["where"]["engine"] == \
            "local"
        assert record["final"] == local_records[key]["final"], key
        assert [point["return_mean"] for point in record["curve"]] == \
            [point["return_mean"] for point in local_records[key]["curve"]], key
    assert _rows(local / "t" / "report.md") == _rows(through_ray / "t" / "report.md")
    # Every file of a run came home, not only its result.
    for learner in ("tiny__dial-sau__0", "tiny__qmix__1"):
        run_dir = through_ray / "t" / "runs" / learner
        assert (run_dir / "checkpoint.pt").stat().st_size > 1000
        assert len((run_dir / "eval.csv").read_text().splitlines()) == 3  # header + 2 points
        assert list(run_dir.glob("events.out.tfevents.*"))
    assert not list(through_ray.rglob("*.partial"))


def _descendants(root: int) -> dict[int, str]:
    """PID -> start time (ticks since boot) of every process below `root`, by /proc."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = (int(fields[1]), fields[19])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _still_alive(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, started in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == started:  # the same process, not a new one with a reused PID
            alive.append(pid)
    return alive


def _ctrl_c_enabled() -> None:
    """In the child: SIGINT as a terminal's user has it. A test run started in the background
    by a shell without job control inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(1500)  # ~80 s alone
def test_ctrl_c_stops_our_ray_and_the_sweep_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) once the first
    run is home: the command exits 130, every process it started (Ray's own included) is
    gone, and the same command then trains only the runs that were not finished."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "cyberdial",
               *_sweep(results, "--engine", "ray", algos=("qmix", "dial-sau"), seeds=2,
                       episodes=64)]
    finals = results / "t" / "final"
    scratch_before = set(Path("/tmp").glob("cyberdial-*"))
    seen: dict[int, str] = {}
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_enabled)
    try:
        deadline = time.monotonic() + 900
        while not list(finals.glob("*.json")) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            seen.update(_descendants(process.pid))
            time.sleep(0.2)
        assert list(finals.glob("*.json")), "no run finished in 900 s"
        seen.update(_descendants(process.pid))
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert len(seen) >= 4  # Ray's GCS, raylet, workers: all started below the command
    time.sleep(2)  # a process killed a moment ago may still be a zombie being reaped
    assert _still_alive(seen) == []
    # No Ray folder, no scratch folder of a killed run left (other users make none of these).
    assert set(Path("/tmp").glob("cyberdial-*")) - scratch_before == set()
    done = {path.name: path.stat().st_mtime_ns for path in finals.glob("*.json")}
    assert 1 <= len(done) < 4  # 2 CPUs: the last two runs start only as the first two end

    assert main(_sweep(results, "--engine", "ray", algos=("qmix", "dial-sau"), seeds=2,
                       episodes=64)) == 0
    assert len(list(finals.glob("*.json"))) == 4
    assert {name: (finals / name).stat().st_mtime_ns for name in done} == done  # not redone


@pytest.mark.timeout(1500)  # ~70 s alone
def test_a_sweep_spreads_over_two_ray_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two Ray nodes of one CPU each on this machine (on loopback); the command joins them
    with --address, runs go to both, and the cluster is left running for its owner.

    127.0.0.2, not 127.0.0.1: Ray's driver rewrites an address on 127.0.0.1 or localhost
    to the machine's outward address, where a cluster bound to loopback does not listen.
    """
    import ray
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.2", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    try:
        second = cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        nodes = {cluster.head_node.node_id, second.node_id}
        results = tmp_path / "results"
        assert main(_sweep(results, "--engine", "ray", "--address", cluster.address,
                           algos=("qmix", "dial-sau"))) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"on the Ray cluster at {cluster.address}" in out
        placement = {key: record["where"]["node"] for key, record in _records(results).items()}
        names = {cluster.head_node.node_id: "head", second.node_id: "second node"}
        print("placement:", json.dumps({key: f"{names.get(node, node)} ({node[:8]})"
                                        for key, node in placement.items()}, indent=1))
        assert len(placement) == 4 and set(placement.values()) == nodes
        assert cluster.remaining_processes_alive()  # joined, not stopped

        # A run that raises on its node comes back as that run's failure, named by its cause.
        from cyberdial.agents.compare import Job
        from cyberdial.agents.ray_engine import RayEngine

        def broken() -> None:
            raise ValueError("no such host in the scenario")

        ray.init(address=cluster.address, log_to_driver=False)
        job = Job("tiny", "qmix", 0)
        outcome = RayEngine._collect(ray, ray.remote(max_retries=0)(broken).remote(), job,
                                     CompareConfig(name="t", results_dir=str(results)))
        assert outcome.job == job and outcome.record is None
        assert outcome.error == "ValueError: no such host in the scenario"
    finally:
        ray.shutdown()
        cluster.shutdown()
