"""Environment steps per second of the simulated range: single env and batched.

Run: .venv/bin/python bench/sim_speed.py [--seconds 3] [--batch 64]
Single: SimRange's PettingZoo API with random legal actions chosen from the masks.
Batched: SimBatch stepping N copies at once, as the trainers do. Figures, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine

from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimBatch, SimRange


def single_env_rate(name: str, seconds: float) -> float:
    env = SimRange(load_scenario(name))
    rng = np.random.default_rng(0)
    observations, _ = env.reset(seed=0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = {}
        for agent, obs in observations.items():
            legal = np.flatnonzero(obs["action_mask"])
            actions[agent] = int(legal[rng.integers(len(legal))])
        observations, _, _, truncations, _ = env.step(actions)
        steps += 1
        if any(truncations.values()):
            observations, _ = env.reset()
    return steps / (time.perf_counter() - start)


def batched_rate(name: str, copies: int, seconds: float) -> float:
    batch = SimBatch(load_scenario(name), n_envs=copies, seed=0)
    rng = np.random.default_rng(0)
    _, masks = batch.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = np.where(masks > 0, rng.random(masks.shape), -1.0).argmax(axis=2)
        result = batch.step(actions)
        masks = result.masks
        steps += copies
        if result.done:
            _, masks = batch.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--batch", type=int, default=64, help="copies in the batched run")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(
        f"{'scenario':<8} {'hosts':>5} {'single env-steps/s':>19} "
        f"{f'batched x{args.batch} env-steps/s':>26}"
    )
    for name in ("tiny", "small", "large"):
        hosts = len(load_scenario(name).all_hosts)
        single = single_env_rate(name, args.seconds)
        batched = batched_rate(name, args.batch, args.seconds)
        print(f"{name:<8} {hosts:>5} {single:>19,.0f} {batched:>26,.0f}")


if __name__ == "__main__":
    main()
