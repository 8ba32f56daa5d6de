"""How long an emulated episode takes: real hosts, the bridge in lockstep, a policy playing.

For each scenario: the range comes up, a bridge (the emulator's referee, the
range's step clock) serves an `EmulatedRange` client, and a policy plays whole
episodes. Printed per scenario: the episode's wall time (its reset, then its steps),
the step time's p50/p95, and how many steps named a late or dead program. With
`--pace 0` (the default) steps go as fast as the hosts allow, as `cyberdial validate`
plays them; `--pace S` makes each step last at least S seconds, as a watched drill
(`--pace scenario`: the scenario's own step period).

Needs root. Usage: sudo .venv/bin/python bench/episode_speed.py [tiny small ...]
[--episodes N] [--pace 0|S|scenario] [--policy react|sleep|random|CHECKPOINT].
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import describe_machine

from cyberdial.agents.drill import stacked_observations
from cyberdial.bridge.lab import emulated_lab
from cyberdial.commands.drill import resolve_policy
from cyberdial.range.scenario import load_scenario


def bench(name: str, episodes: int, pace: str, policy_name: str) -> dict[str, float]:
    scenario = load_scenario(name)
    period = scenario.step_period if pace == "scenario" else float(pace)
    policy, _ = resolve_policy(policy_name, scenario, 0)
    started = time.monotonic()
    resets: list[float] = []
    plays: list[float] = []
    steps: list[float] = []
    late = dead = 0
    with emulated_lab(scenario, step_period_s=period) as lab:
        up_s = time.monotonic() - started
        env = lab.env
        m = env.model
        for episode in range(episodes):
            t0 = time.monotonic()
            observations, _ = env.reset(seed=episode)
            policy.reset(1)
            t1 = time.monotonic()
            while env.agents:
                chosen, bits = policy.act(*stacked_observations(m, observations))
                s0 = time.monotonic()
                observations, _, _, _, infos = env.step(
                    {a.name: int(chosen[0, a.index]) for a in m.agents},
                    {a.name: bits[0, a.index] for a in m.agents})
                steps.append(time.monotonic() - s0)
                info = infos[m.agent_names[0]]
                late += bool(info["late_peers"])
                dead += bool(info["dead_peers"])
            resets.append(t1 - t0)
            plays.append(time.monotonic() - t1)
    steps.sort()
    return {
        "hosts": len(scenario.all_hosts), "length": scenario.episode_length, "period": period,
        "up_s": up_s, "reset_s": statistics.mean(resets), "play_s": statistics.mean(plays),
        "play_max_s": max(plays), "episode_s": statistics.mean(r + p for r, p in
                                                               zip(resets, plays, strict=True)),
        "p50_ms": 1000 * steps[len(steps) // 2],
        "p95_ms": 1000 * steps[min(len(steps) - 1, int(0.95 * len(steps)))],
        "late": late, "dead": dead, "steps": len(steps),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=["tiny", "small"])
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--pace", default="0",
                        help="least seconds per step: 0 (as fast as the hosts allow),"
                        " a number, or 'scenario' (its step period)")
    parser.add_argument("--policy", default="react",
                        help="react, sleep, random or a checkpoint (default react)")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    print(f"policy {args.policy}, pace {args.pace}, {args.episodes} episodes per scenario")
    print(f"{'scenario':<10}{'hosts':>6}{'steps':>6}{'up s':>7}{'reset s':>8}{'steps s':>8}"
          f"{'(max s)':>8}{'episode s':>10}{'step p50 ms':>12}{'p95 ms':>8}{'late':>5}"
          f"{'dead':>5}")
    for name in args.scenarios:
        r = bench(name, args.episodes, args.pace, args.policy)
        print(f"{name:<10}{r['hosts']:>6.0f}{r['length']:>6.0f}{r['up_s']:>7.2f}"
              f"{r['reset_s']:>8.2f}{r['play_s']:>8.2f}{r['play_max_s']:>8.2f}"
              f"{r['episode_s']:>10.2f}{r['p50_ms']:>12.1f}{r['p95_ms']:>8.1f}"
              f"{r['late']:>5.0f}{r['dead']:>5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
