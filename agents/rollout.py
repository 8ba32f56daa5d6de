"""Run whole episodes of a batched policy on the simulator and collect per-episode figures.

Shared by `cyberdial simulate`, evaluation of trained agents and `cyberdial compare`,
so every number in a report is measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from cyberdial.agents.baselines import BatchPolicy
from cyberdial.agents.messages import MessageStats
from cyberdial.range.model import REWARD_TERMS, Compromise, GameModel
from cyberdial.range.sim import SimBatch

TERM_NAMES = REWARD_TERMS


@dataclass
class EpisodeStats:
    """Per-episode figures, one entry per episode."""

    returns: list[float] = field(default_factory=list)
    bits_sent: list[int] = field(default_factory=list)
    green_failures: list[int] = field(default_factory=list)
    red_reached_target: list[bool] = field(default_factory=list)
    red_impacted: list[bool] = field(default_factory=list)
    privileged_hosts: list[int] = field(default_factory=list)
    terms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TERM_NAMES})
    steps: int = 0
    messages: MessageStats | None = None
    """what the messages carried (agents/messages.py), over every step played"""

    @property
    def episodes(self) -> int:
        return len(self.returns)

    def summary(self) -> dict[str, float]:
        def mean(values: list[float] | list[int] | list[bool]) -> float:
            return float(np.mean(values)) if values else float("nan")

        return {
            "episodes": float(self.episodes),
            "return_mean": mean(self.returns),
            "return_std": float(np.std(self.returns)) if self.returns else float("nan"),
            "bits_per_episode": mean(self.bits_sent),
            "green_failures": mean(self.green_failures),
            "red_reached_target": mean(self.red_reached_target),
            "red_impacted": mean(self.red_impacted),
            "privileged_hosts_at_end": mean(self.privileged_hosts),
            **{f"cost_{name}": mean(values) for name, values in self.terms.items()},
            **(self.messages.summary() if self.messages is not None else {}),
        }


def run_episodes(
    model: GameModel,
    policy: BatchPolicy,
    episodes: int,
    seed: int = 0,
    max_batch: int = 64,
    on_episodes_done: Callable[[int], None] | None = None,
) -> EpisodeStats:
    """Play `episodes` full episodes in batches of at most `max_batch` copies."""
    messages_carried = MessageStats(model.n_agents)
    stats = EpisodeStats(messages=messages_carried)
    targets = np.array([model.scenario.host_index[t] for t in model.scenario.red.targets])
    # (H, A): which agent defends each host, for "what the sender sees" and "red is there".
    own_hosts = np.zeros((model.n_hosts, model.n_agents), dtype=np.float32)
    for layout in model.agents:
        own_hosts[list(layout.hosts), layout.index] = 1.0
    probe = getattr(policy, "listener_changes", None)
    done_so_far = 0
    while done_so_far < episodes:
        n = min(max_batch, episodes - done_so_far)
        batch = SimBatch(model, n_envs=n, seed=seed + done_so_far)
        observations, masks = batch.reset()
        policy.reset(n)
        totals = np.zeros(n)
        bits = np.zeros(n, dtype=np.int64)
        failures = np.zeros(n, dtype=np.int64)
        term_sums = {name: np.zeros(n) for name in TERM_NAMES}
        reached = np.zeros(n, dtype=bool)
        impacted = np.zeros(n, dtype=bool)
        done = False
        while not done:
            if probe is not None:
                messages_carried.add_probe(probe(observations, masks))
            activity = ((batch.activity > 0).astype(np.float32) @ own_hosts) > 0
            flagged = ((batch.observed > 0).astype(np.float32) @ own_hosts) > 0
            red_there = ((batch.compromise > 0).astype(np.float32) @ own_hosts) > 0
            actions, messages = policy.act(observations, masks)
            messages_carried.add_step(np.asarray(messages), activity, red_there,
                                      remembered=flagged & ~activity)
            result = batch.step(actions, messages)
            observations, masks, done = result.observations, result.masks, result.done
            totals += result.rewards
            bits += result.bits_sent
            failures += result.green_failures
            for name in TERM_NAMES:
                term_sums[name] += result.terms[name]
            reached |= (batch.compromise[:, targets] == Compromise.PRIVILEGED).any(axis=1)
            impacted |= batch.impacted.any(axis=1)
            stats.steps += n
        stats.returns.extend(totals.tolist())
        stats.bits_sent.extend(bits.tolist())
        stats.green_failures.extend(failures.tolist())
        stats.red_reached_target.extend(reached.tolist())
        stats.red_impacted.extend(impacted.tolist())
        stats.privileged_hosts.extend(
            (batch.compromise == Compromise.PRIVILEGED).sum(axis=1).tolist()
        )
        for name in TERM_NAMES:
            stats.terms[name].extend(term_sums[name].tolist())
        done_so_far += n
        if on_episodes_done is not None:
            on_episodes_done(n)
    return stats


def mean_std(values: NDArray[np.float64] | list[float]) -> str:
    array = np.asarray(values, dtype=float)
    return f"{array.mean():.2f} ± {array.std():.2f}"
