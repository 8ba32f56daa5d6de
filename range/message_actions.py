"""Messages in the action, for any PettingZoo `ParallelEnv` consumer (RLlib, CleanRL, ...).

Both ranges take message bits beside the actions, `step(actions, messages=...)`, as
CybORG 4 does; a library that only calls `step(actions)` sends none, so its agents can
never learn to talk. `MessageActions` wraps a range (the simulator's `SimRange` or the
emulated range's env client) so that each agent's action carries its message bits:

- `action="multidiscrete"` (default): `MultiDiscrete([n_actions, 2, ..., 2])`, the action
  first, then one 0/1 per message bit;
- `action="dict"`: `Dict({"action": Discrete(n_actions), "message": MultiBinary(bits)})`.

The bits an agent sends reach its peers in their next observation's message slice (the
range puts them there) and cost `comm_cost` each in the team reward, exactly as for
DIAL-SAU. What the observation looks like is for the consumer to choose:

- `observation="dict"` (default): `{"observation", "action_mask"}` as the range gives
  them, the mask in the form gymnasium's `action_space(agent).sample(mask=...)` takes
  for the wrapped action (MultiDiscrete: a tuple, the range's mask then one all-ones
  pair per bit; Dict: `{"action": mask, "message": 2s}`, 2 meaning either bit), which
  is what `pettingzoo.test.parallel_api_test` and PettingZoo's examples do with it;
- `observation="rllib-masking"`: `{"observations": Box, "action_mask": Box}`, the keys
  RLlib's `ActionMaskingTorchRLModule` reads, the mask float32 and as long as a
  MultiDiscrete action's logits (`n_actions` + 2 per message bit, the message entries
  always 1), so the module can mask the action and leave the bits free;
- `observation="flat"`: one float32 Box, the observation followed by the action mask, for
  consumers that take a plain vector (RLlib's default PPO refuses a Dict observation).
  Nothing is masked then; an illegal action is a safe no-op in the range.

docs/scale.md shows RLlib's PPO trained through it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from numpy.typing import NDArray
from pettingzoo import ParallelEnv

ACTION_FORMATS = ("multidiscrete", "dict")
OBSERVATION_FORMATS = ("dict", "rllib-masking", "flat")


class MessageActions(ParallelEnv):
    """A cyberdial range whose agents send their message bits as part of their action.

    `env` is a `ParallelEnv` whose `step` takes `messages=` (`SimRange`, `EmulatedRange`)
    and whose observations are `{"observation", "action_mask"}`; `message_bits` is the
    range's message width (`env.model.message_bits` when not given).
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "cyberdial_message_actions_v0",
                                          "is_parallelizable": True}

    def __init__(self, env: Any, action: str = "multidiscrete", observation: str = "dict",
                 message_bits: int | None = None) -> None:
        if action not in ACTION_FORMATS:
            raise ValueError(f"action must be one of {', '.join(ACTION_FORMATS)}, not {action!r}")
        if observation not in OBSERVATION_FORMATS:
            raise ValueError(f"observation must be one of {', '.join(OBSERVATION_FORMATS)},"
                             f" not {observation!r}")
        if observation == "rllib-masking" and action != "multidiscrete":
            raise ValueError("observation='rllib-masking' masks a MultiDiscrete action's"
                             " logits: use action='multidiscrete'")
        self.env = env
        self.action_format = action
        self.observation_format = observation
        self.message_bits = int(env.model.message_bits if message_bits is None
                                else message_bits)
        self.possible_agents = list(env.possible_agents)
        self.render_mode = getattr(env, "render_mode", None)
        self._n_actions: dict[str, int] = {}
        self._observation_spaces: dict[str, gymnasium.spaces.Space[Any]] = {}
        self._action_spaces: dict[str, gymnasium.spaces.Space[Any]] = {}
        for agent in self.possible_agents:
            inner = env.observation_space(agent)
            n_actions = int(env.action_space(agent).n)
            self._n_actions[agent] = n_actions
            self._action_spaces[agent] = self._action_space(n_actions)
            self._observation_spaces[agent] = self._observation_space(inner, n_actions)

    # ------------------------------------------------------------------ spaces

    def _action_space(self, n_actions: int) -> gymnasium.spaces.Space[Any]:
        if self.action_format == "dict":
            return gymnasium.spaces.Dict({
                "action": gymnasium.spaces.Discrete(n_actions),
                "message": gymnasium.spaces.MultiBinary(self.message_bits)})
        return gymnasium.spaces.MultiDiscrete([n_actions] + [2] * self.message_bits)

    def _observation_space(self, inner: gymnasium.spaces.Dict,
                           n_actions: int) -> gymnasium.spaces.Space[Any]:
        observation = inner["observation"]
        if self.observation_format == "dict":
            return gymnasium.spaces.Dict({"observation": observation,
                                          "action_mask": self._mask_space(n_actions)})
        if self.observation_format == "rllib-masking":
            return gymnasium.spaces.Dict({
                "observations": observation,
                "action_mask": gymnasium.spaces.Box(
                    0.0, 1.0, (n_actions + 2 * self.message_bits,), np.float32)})
        size = int(np.prod(observation.shape or (0,))) + n_actions
        return gymnasium.spaces.Box(0.0, 1.0, (size,), np.float32)

    def _mask_space(self, n_actions: int) -> gymnasium.spaces.Space[Any]:
        """The mask as gymnasium's `action_space.sample(mask=...)` takes it."""
        action = gymnasium.spaces.Box(0, 1, (n_actions,), np.int8)
        if self.action_format == "dict":
            return gymnasium.spaces.Dict({  # MultiBinary's mask: 2 = either bit
                "action": action,
                "message": gymnasium.spaces.Box(0, 2, (self.message_bits,), np.int8)})
        bit = gymnasium.spaces.Box(0, 1, (2,), np.int8)
        return gymnasium.spaces.Tuple([action] + [bit] * self.message_bits)

    def observation_space(self, agent: str) -> gymnasium.spaces.Space[Any]:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Space[Any]:
        return self._action_spaces[agent]

    @property
    def agents(self) -> list[str]:
        return list(self.env.agents)

    # ------------------------------------------------------------------ the game

    def _observation(self, agent: str, inner: dict[str, NDArray[Any]]) -> Any:
        if self.observation_format == "dict":
            mask: Any
            if self.action_format == "dict":
                mask = {"action": inner["action_mask"],
                        "message": np.full(self.message_bits, 2, dtype=np.int8)}
            else:
                mask = (inner["action_mask"],
                        *(np.ones(2, dtype=np.int8) for _ in range(self.message_bits)))
            return {"observation": inner["observation"], "action_mask": mask}
        mask = inner["action_mask"].astype(np.float32)
        if self.observation_format == "rllib-masking":
            free = np.ones(2 * self.message_bits, dtype=np.float32)
            return {"observations": inner["observation"],
                    "action_mask": np.concatenate([mask, free])}
        return np.concatenate([inner["observation"], mask]).astype(np.float32)

    def _observations(self, inner: dict[str, Any]) -> dict[str, Any]:
        return {agent: self._observation(agent, obs) for agent, obs in inner.items()}

    def split(self, agent: str, action: Any) -> tuple[int, NDArray[np.uint8]]:
        """One agent's wrapped action -> (the range's action, its message bits)."""
        if self.action_format == "dict":
            chosen = int(action["action"])
            bits = np.asarray(action["message"], dtype=np.int64).reshape(-1)
        else:
            flat = np.asarray(action, dtype=np.int64).reshape(-1)
            chosen, bits = int(flat[0]), flat[1:]
        if bits.shape != (self.message_bits,) or not np.isin(bits, (0, 1)).all():
            raise ValueError(f"{agent}: expected {self.message_bits} message bits of 0 or 1,"
                             f" got {bits.tolist()}")
        return chosen, bits.astype(np.uint8)

    def reset(self, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        observations, infos = self.env.reset(seed=seed, options=options)
        return self._observations(observations), infos

    def step(self, actions: dict[str, Any]) -> tuple[
            dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        chosen: dict[str, int] = {}
        messages: dict[str, NDArray[np.uint8]] = {}
        for agent, action in actions.items():
            chosen[agent], messages[agent] = self.split(agent, action)
        observations, rewards, terminations, truncations, infos = self.env.step(
            chosen, messages=messages)
        return self._observations(observations), rewards, terminations, truncations, infos

    def state(self) -> NDArray[np.float32]:
        return np.asarray(self.env.state())

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
