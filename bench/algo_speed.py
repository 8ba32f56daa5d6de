"""Training speed of each learning algorithm (DIAL-SAU, QMIX, IQL, ...) on the CPU.

Run: .venv/bin/python bench/algo_speed.py [--algos dial-sau qmix iql] [--episodes 512]
Times the shared loop (collection in the batched simulator, gradient steps with each
algorithm's own default settings) on small and large, one torch thread, as
`cyberdial compare` runs it. Used to choose the comparison's episode budget.
Figures, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine

from cyberdial.agents.training import config_for, train
from cyberdial.range.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["dial-sau", "qmix", "iql"])
    parser.add_argument("--scenarios", nargs="+", default=["small", "large"])
    parser.add_argument("--episodes", type=int, default=512, help="training episodes per run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'scenario':<8} {'algo':<9} {'episodes':>8} {'seconds':>8} {'episodes/s':>10}"
          f" {'env-steps/s':>12}")
    for name in args.scenarios:
        scenario = load_scenario(name)
        for algo in args.algos:
            with tempfile.TemporaryDirectory() as runs:
                # Evaluation and checkpoints only at the very end: the figure is the loop's.
                config = config_for(algo, scenario=name, episodes=args.episodes,
                                    eval_every=10**9, eval_episodes=1, checkpoint_every=10**9,
                                    runs_dir=runs, tensorboard=False, threads=args.threads)
                start = time.perf_counter()
                result = train(config)
                seconds = time.perf_counter() - start
            steps = result.episodes * scenario.episode_length
            print(f"{name:<8} {algo:<9} {result.episodes:>8} {seconds:>8.1f}"
                  f" {result.episodes / seconds:>10.1f} {steps / seconds:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
