"""Plot greedy-evaluation learning curves of training runs against the hand-written blues.

Run: .venv/bin/python scripts/plot_learning_curve.py runs/small__dial-sau__0__* \
        --scenario small --out docs/dial_small_curve.png
Reads each run's eval.csv (written by `cyberdial train`), measures the baselines
(react, random, sleep) on the same evaluation seeds, and draws return and bits
per episode against minutes of training.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cyberdial.agents.baselines import make_baseline
from cyberdial.agents.rollout import run_episodes
from cyberdial.agents.training import EVAL_SEED_OFFSET
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario


def read_eval(run: Path) -> dict[str, list[float]]:
    with (run / "eval.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with eval.csv")
    parser.add_argument("--scenario", required=True, help="scenario the runs trained on")
    parser.add_argument("--episodes", type=int, default=500, help="episodes per baseline")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    model = GameModel(scenario)
    figure, (returns_axis, bits_axis) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    lowest = 0.0
    for run in args.runs:
        log = read_eval(run)
        if not log:
            continue
        minutes = [seconds / 60 for seconds in log["seconds"]]
        parts = run.name.split("__")
        label = f"{parts[1]} seed {parts[2]}" if len(parts) >= 3 else run.name
        returns_axis.plot(minutes, log["return_mean"], marker=".", label=f"{label} (greedy)")
        lowest = min(lowest, *log["return_mean"])
        bits_axis.plot(minutes, log["bits_per_episode"], marker=".", label=label)
    styles = {"react": "tab:red", "random": "tab:gray", "sleep": "black"}
    for name, colour in styles.items():
        summary = run_episodes(model, make_baseline(name, model), args.episodes,
                               seed=EVAL_SEED_OFFSET).summary()
        returns_axis.axhline(summary["return_mean"], color=colour, linestyle="--",
                             label=f"{name} blue ({summary['return_mean']:.1f})")
        if name == "react":
            lowest = min(lowest, summary["return_mean"])
            bits_axis.axhline(summary["bits_per_episode"], color=colour, linestyle="--",
                              label="react blue")
    # Zoom on the learner and the rule-based blue; weaker baselines stay in the legend.
    returns_axis.set_ylim(1.5 * lowest, max(5.0, -0.05 * lowest))
    returns_axis.set_ylabel(f"greedy return per episode ({args.episodes}-episode baselines)")
    returns_axis.set_title(args.title or f"{scenario.name}: greedy evaluation during training")
    returns_axis.legend(loc="lower right", fontsize=8)
    returns_axis.grid(alpha=0.3)
    bits_axis.set_ylabel("bits sent / episode")
    bits_axis.set_xlabel("minutes of training (CPU)")
    bits_axis.grid(alpha=0.3)
    bits_axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
