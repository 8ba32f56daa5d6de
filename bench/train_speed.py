"""Training speed on the CPU: episodes and environment steps per second, per learner.

Run: .venv/bin/python bench/train_speed.py [--episodes 512] [--threads 1]
         [--algos dial-sau qmix] [--scenarios small large] [--device cpu]
         [--against REV [--repeats 3]]

Times the whole loop (collecting episodes in the batched simulator with the
ε-greedy networks, the gradient steps through whole-episode unrolls), with each
algorithm's default settings, after a short warm-up run (imports, first
allocations). Each figure is measured in a fresh process; with `--against REV`
the code of git revision REV is measured too, in the same run, the two
alternating `--repeats` times, and the table gives both and their ratio.

Two rates: per wall-clock second, and per CPU-second of the measuring process.
On a machine shared with other jobs the wall rate moves with the load; the CPU
rate much less, so the ratio of CPU rates is the figure to compare code with.
Figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine

REPO = Path(__file__).resolve().parent.parent


def measure(algo: str, scenario_name: str, episodes: int, threads: int, device: str) -> None:
    """In this process: train `episodes` episodes and print one JSON line of rates."""
    import torch

    from cyberdial.agents.training import TrainConfig, config_for, train
    from cyberdial.range.scenario import load_scenario

    torch.set_num_threads(threads)
    scenario = load_scenario(scenario_name)
    device_setting = {"device": device} if "device" in TrainConfig.__dataclass_fields__ else {}
    with tempfile.TemporaryDirectory() as runs:
        def run(n: int) -> None:
            # Evaluation and checkpoints only at the very end, so the figure is the loop's.
            train(config_for(algo, scenario=scenario_name, episodes=n, eval_every=10**9,
                             eval_episodes=1, checkpoint_every=10**9, runs_dir=runs,
                             tensorboard=False, threads=threads, **device_setting))

        run(32)  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        run(episodes)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"episodes": episodes, "cpu": cpu, "wall": wall,
                      "steps": episodes * scenario.episode_length,
                      "hosts": len(scenario.all_hosts), "agents": len(scenario.blue.agents)}))


def package_tree(source: Path, into: Path) -> Path:
    """Lay `source` (a checkout) out as the installed package would be; returns the sys.path entry.

    pyproject.toml maps cyberdial.range -> range/ and so on; links rebuild that layout,
    so `import cyberdial` finds this code whatever is installed in the venv.
    """
    config = tomllib.loads((source / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    root = into / "cyberdial"
    root.mkdir(parents=True)
    for entry in (source / package_dir["cyberdial"]).iterdir():
        (root / entry.name).symlink_to(entry.resolve())
    for package, folder in package_dir.items():
        if package != "cyberdial":
            link = root / package.split(".", 1)[1]
            link.unlink(missing_ok=True)
            link.symlink_to((source / folder).resolve())
    return into


def checkout(revision: str, into: Path) -> Path:
    """The tree of git `revision` of this repository, extracted under `into`."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision],
                                 check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as error:
        sys.exit(f"train_speed: cannot read revision {revision!r}: "
                 f"{error.stderr.decode().strip()}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_measure(path_entry: Path, algo: str, scenario: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", algo, scenario,
               "--episodes", str(args.episodes), "--threads", str(args.threads),
               "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(path_entry)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"train_speed: measuring {algo} on {scenario} failed:\n{done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=512,
                        help="training episodes per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--scenarios", nargs="+", default=["small", "large"])
    parser.add_argument("--algos", nargs="+", default=["dial-sau", "qmix"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (if supported)")
    parser.add_argument("--against", metavar="REV",
                        help="also measure git revision REV (e.g. a commit before a change)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measurements per (code, algorithm, scenario); the median is shown")
    parser.add_argument("--measure", nargs=2, metavar=("ALGO", "SCENARIO"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1], args.episodes, args.threads, args.device)
        return

    print(f"machine: {describe_machine()}, {args.threads} torch thread(s), device {args.device},"
          f" {args.episodes} episodes per measurement, median of {args.repeats};"
          f" load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"this": package_tree(REPO, Path(scratch) / "this")}
        if args.against:
            old = checkout(args.against, Path(scratch) / "old-src")
            trees = {args.against: package_tree(old, Path(scratch) / "old"), **trees}
        header = f"{'scenario':<8} {'algo':<10} {'code':<10} {'episodes/s':>10} {'env-steps/s':>11}"
        print(header + f" {'episodes/cpu-s':>14}" + (f" {'cpu ratio':>9}" if args.against else ""))
        for scenario in args.scenarios:
            for algo in args.algos:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
                for _ in range(args.repeats):  # alternate, so both see the same load
                    for name, tree in trees.items():
                        runs[name].append(run_measure(tree, algo, scenario, args))
                rates = {}
                for name, results in runs.items():
                    wall = statistics.median(r["episodes"] / r["wall"] for r in results)
                    cpu = statistics.median(r["episodes"] / r["cpu"] for r in results)
                    steps = wall * results[0]["steps"] / results[0]["episodes"]
                    rates[name] = cpu
                    ratio = (f" {cpu / rates[args.against]:>8.2f}×"
                             if args.against and name != args.against else
                             (f" {'':>9}" if args.against else ""))
                    print(f"{scenario:<8} {algo:<10} {name[:10]:<10} {wall:>10.1f}"
                          f" {steps:>11,.0f} {cpu:>14.1f}{ratio}", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
