"""Hand-written blue policies: sleep-only, random-legal and a rule-based "react to alerts".

All policies read only what an agent is shown (observation vector and action
mask), batched as (B, A, ...), so they run unchanged on the simulated and the
emulated range. They are the yardsticks a learner must beat.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cyberdial.range.model import ActionKind, GameModel


class BatchPolicy(Protocol):
    """Chooses every agent's action and message bits for a batch of envs."""

    def reset(self, n_envs: int) -> None: ...

    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]: ...


class SleepPolicy:
    def __init__(self, model: GameModel) -> None:
        self.model = model

    def reset(self, n_envs: int) -> None:
        pass

    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        batch = observations.shape[0]
        return (
            np.zeros((batch, self.model.n_agents), dtype=np.int64),
            np.zeros((batch, self.model.n_agents, self.model.message_bits), dtype=np.uint8),
        )


class RandomPolicy:
    """Uniform over legal actions; sends each bit with probability `send_rate`."""

    def __init__(self, model: GameModel, seed: int = 0, send_rate: float = 0.0) -> None:
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.send_rate = send_rate

    def reset(self, n_envs: int) -> None:
        pass

    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        scores = np.where(masks > 0, self.rng.random(masks.shape), -1.0)
        actions = scores.argmax(axis=2).astype(np.int64)
        shape = (*actions.shape, self.model.message_bits)
        messages = (self.rng.random(shape) < self.send_rate).astype(np.uint8)
        return actions, messages


class ReactPolicy:
    """Rule-based blue: restore what is privileged, remove what is user, analyse what is odd.

    Priority per defended host, from the observation bits: privileged -> Restore;
    user -> Remove (then Analyse to confirm); unknown (an exploit was seen) ->
    Analyse. It sends a 1 when it sees an exploit, so a peer may Analyse.
    """

    def __init__(self, model: GameModel) -> None:
        self.model = model
        self.slot: list[dict[ActionKind, NDArray[np.int64]]] = []
        for layout in model.agents:
            table: dict[ActionKind, NDArray[np.int64]] = {}
            host_names = [model.scenario.all_hosts[h].name for h in layout.hosts]
            for kind in (ActionKind.ANALYSE, ActionKind.REMOVE, ActionKind.RESTORE):
                slots = np.full(len(host_names), -1, dtype=np.int64)
                for index, action in enumerate(layout.actions):
                    if action.kind == kind and action.host in host_names:
                        slots[host_names.index(action.host)] = index
                table[kind] = slots
            self.slot.append(table)

    def reset(self, n_envs: int) -> None:
        pass

    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        m = self.model
        batch = observations.shape[0]
        actions = np.zeros((batch, m.n_agents), dtype=np.int64)
        messages = np.zeros((batch, m.n_agents, m.message_bits), dtype=np.uint8)
        rows = np.arange(batch)
        for layout in m.agents:
            a = layout.index
            obs = observations[:, a, : layout.obs_size]
            bits = m.host_bits_of(obs, a)  # (B, n_hosts, 4)
            exploit = (bits[..., 0] > 0) & (bits[..., 1] > 0)
            privileged = (bits[..., 2] > 0) & (bits[..., 3] > 0)
            user = (bits[..., 2] == 0) & (bits[..., 3] > 0)
            unknown = (bits[..., 2] > 0) & (bits[..., 3] == 0)
            last = obs[:, layout.obs_slices()["last_action"]].argmax(axis=1)
            table = self.slot[a]
            just_removed = table[ActionKind.REMOVE][None, :] == last[:, None]
            candidates = [
                (privileged, table[ActionKind.RESTORE], 4.0),
                (user & just_removed, table[ActionKind.ANALYSE], 3.5),
                (user & ~just_removed, table[ActionKind.REMOVE], 3.0),
                (unknown, table[ActionKind.ANALYSE], 2.0),
            ]
            best_score = np.zeros(batch)
            best_slot = np.zeros(batch, dtype=np.int64)
            for condition, slots, score in candidates:
                if (slots < 0).all():
                    continue
                legal = condition & (slots >= 0)[None, :]
                legal &= masks[:, a][:, np.maximum(slots, 0)] > 0
                # Prefer hosts where an exploit is seen right now.
                host_score = np.where(legal, score + 0.5 * exploit, 0.0)
                host = host_score.argmax(axis=1)
                value = host_score[rows, host]
                better = value > best_score
                best_score = np.where(better, value, best_score)
                best_slot = np.where(better, slots[host], best_slot)
            actions[:, a] = best_slot
            if m.message_bits:
                messages[:, a, 0] = exploit.any(axis=1)
        return actions, messages


BASELINES = {"sleep": SleepPolicy, "random": RandomPolicy, "react": ReactPolicy}


class SilencedPolicy:
    """Another policy with its messages silenced (`cyberdial evaluate --silent`).

    The same policy's actions, but every bit it would send is 0: no peer hears one, no
    peer's Analyse is unmasked by one, none is paid for. Scored against the policy as
    it speaks, on the same episodes, the difference is what its messages are worth to
    the team at execution, through both what receivers do with a bit and the actions
    a 1 unmasks (the listener effect counts only the first).
    """

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy

    def reset(self, n_envs: int) -> None:
        self.policy.reset(n_envs)

    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        actions, bits = self.policy.act(observations, masks)
        return actions, np.zeros_like(bits)


def make_baseline(name: str, model: GameModel, seed: int = 0) -> BatchPolicy:
    if name == "random":
        return RandomPolicy(model, seed=seed)
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: choose from {', '.join(BASELINES)}")
    return BASELINES[name](model)
