"""Training speed of DIAL-SAU on the CPU: episodes and environment steps per second.

Run: .venv/bin/python bench/train_speed.py [--episodes 1024] [--threads 2]
Times the whole loop (collecting episodes in the batched simulator with the
ε-greedy network, one gradient step per batch through whole-episode unrolls), on
small and large with the default settings. Figures, not a test.
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

from cyberdial.agents.training import TrainConfig, train
from cyberdial.range.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1024, help="training episodes per scenario")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--scenarios", nargs="+", default=["small", "large"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'scenario':<8} {'hosts':>5} {'agents':>6} {'episodes':>8} {'seconds':>8}"
          f" {'episodes/s':>10} {'env-steps/s':>12}")
    for name in args.scenarios:
        scenario = load_scenario(name)
        with tempfile.TemporaryDirectory() as runs:
            # Evaluation and checkpoints only at the very end, so the figure is the loop's.
            config = TrainConfig(algo="dial-sau", scenario=name, episodes=args.episodes,
                                 eval_every=10**9, eval_episodes=1, checkpoint_every=10**9,
                                 runs_dir=runs, tensorboard=False, threads=args.threads)
            start = time.perf_counter()
            result = train(config)
            seconds = time.perf_counter() - start
        steps = result.episodes * scenario.episode_length
        print(f"{name:<8} {len(scenario.all_hosts):>5} {len(scenario.blue.agents):>6}"
              f" {result.episodes:>8} {seconds:>8.1f} {result.episodes / seconds:>10.1f}"
              f" {steps / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
