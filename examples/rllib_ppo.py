"""RLlib's PPO trains blue agents that send messages, on cyberdial's simulator.

    python examples/rllib_ppo.py --scenario tiny --iterations 5

The range goes through `MessageActions` (each agent's action is `MultiDiscrete([n_actions,
2])`: its action and its message bit) and RLlib's `ParallelPettingZooEnv`. One PPO module
per blue agent (their spaces may differ), each RLlib's `ActionMaskingTorchRLModule`,
which reads the observation keys `observations` and `action_mask`: that is what
`observation="rllib-masking"` gives. With `--no-masking` the observation is one flat
vector (`observation="flat"`) and RLlib's default PPO module is used; nothing is masked
then, and an illegal action is a no-op in the range. Prints one JSON line per iteration:
the mean episode return (RLlib sums the team reward over the agents, so this is
n_agents × the team return) and the episodes and steps sampled so far.
See docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def make_env(scenario: str, masking: bool, seed: int | None = None) -> Any:
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    from cyberdial.range.message_actions import MessageActions
    from cyberdial.range.sim import SimRange

    observation = "rllib-masking" if masking else "flat"
    return ParallelPettingZooEnv(MessageActions(SimRange(scenario, seed=seed),
                                                observation=observation))


def build_config(scenario: str, masking: bool = True, seed: int = 0) -> Any:
    """The PPO config: one module per blue agent, a small batch (tiny episodes are 30 steps)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import (
        ActionMaskingTorchRLModule,
    )
    from ray.tune.registry import register_env

    from cyberdial.range.sim import SimRange

    register_env("cyberdial", lambda env_config: make_env(
        env_config["scenario"], env_config["masking"], env_config.get("seed")))
    agents = list(SimRange(scenario).possible_agents)
    module = RLModuleSpec(module_class=ActionMaskingTorchRLModule) if masking else RLModuleSpec()
    return (
        PPOConfig()
        .environment("cyberdial", env_config={"scenario": scenario, "masking": masking,
                                              "seed": seed})
        .multi_agent(policies=set(agents),
                     policy_mapping_fn=lambda agent_id, episode, **kwargs: agent_id)
        .rl_module(rl_module_spec=MultiRLModuleSpec(
            rl_module_specs={agent: module for agent in agents}))
        .env_runners(num_env_runners=0)  # sample in the driver: no extra processes
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=600, minibatch_size=120, num_epochs=2,
                  lr=3e-4)
        .debugging(seed=seed)
    )


def main(argv: list[str] | None = None) -> int:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="tiny")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-masking", action="store_true",
                        help="flat observation, RLlib's default PPO module, no action mask")
    args = parser.parse_args(argv)
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        algo = build_config(args.scenario, not args.no_masking, args.seed).build_algo()
        for iteration in range(1, args.iterations + 1):
            result = algo.train()
            runners = result["env_runners"]
            print(json.dumps({"iteration": iteration,
                              "episode_return_mean": runners["episode_return_mean"],
                              "episodes": runners.get("num_episodes_lifetime"),
                              "env_steps": runners.get("num_env_steps_sampled_lifetime")}),
                  flush=True)
        algo.stop()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
