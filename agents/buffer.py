"""The episode buffer every learner samples from: whole episodes, stored as NumPy arrays.

An episode of T steps keeps T + 1 observations, masks, global states and DRU noise
draws (the last for bootstrapping) and T actions, executed message bits and team
rewards. Observations are bits, kept as uint8; so are the global states but for
their progress column, which follows from the step (`range.blue.global_state_bits`),
and only for learners that read them. A sampled `EpisodeBatch` is float32 tensors
for the learner, with the sparse forms its networks' first layers read
(`SparseRows`), made once per batch for the online and the target network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from cyberdial.agents.qlearning import SparseRows
from cyberdial.range.blue import state_progress
from cyberdial.range.model import GameModel


@dataclass
class EpisodeBatch:
    """Whole episodes as tensors; T steps, so observations and masks have T + 1 entries."""

    observations: torch.Tensor  # (B, T+1, A, max_obs) float32
    masks: torch.Tensor  # (B, T+1, A, max_actions) bool
    actions: torch.Tensor  # (B, T, A) int64
    messages: torch.Tensor  # (B, T, A, bits) float32, the executed bits
    rewards: torch.Tensor  # (B, T) float32, the team reward
    states: torch.Tensor  # (B, T+1, state_size) float32, for centralised critics/mixers
    noise: torch.Tensor  # (B, T+1, A, bits) float32, the DRU noise that acted (0 if none)
    # The sparse forms, made on first use (`observation_rows`, `state_rows`).
    _sparse: dict[str, SparseRows | None] = field(default_factory=dict, repr=False,
                                                  compare=False)

    def observation_rows(self) -> SparseRows | None:
        """The observations' 1s (`SparseRows.of`), made once for every network that reads them."""
        if "observations" not in self._sparse:
            self._sparse["observations"] = SparseRows.of(self.observations)
        return self._sparse["observations"]

    def state_rows(self) -> SparseRows | None:
        """The global states as the first state plus their changes, made once."""
        if "states" not in self._sparse:
            self._sparse["states"] = SparseRows.of(self.states, offset=True)
        return self._sparse["states"]

    @property
    def size(self) -> int:
        return int(self.actions.shape[0])

    @property
    def steps(self) -> int:
        return int(self.actions.shape[1])


EPISODE_FIELDS = ("observations", "masks", "actions", "messages", "rewards", "state_bits",
                  "noise")


class EpisodeBuffer:
    """A ring of whole episodes in NumPy arrays (observations and states as uint8 bits).

    `with_states=False` (learners without a centralised critic or mixer) keeps no
    global states: `collect_episodes` gives none and batches carry zeros.
    """

    def __init__(self, model: GameModel, capacity: int, with_states: bool = True) -> None:
        t, a = model.scenario.episode_length, model.n_agents
        self.capacity, self.with_states, self.state_size = capacity, with_states, model.state_size
        self.observations = np.zeros((capacity, t + 1, a, model.max_obs), dtype=np.uint8)
        self.masks = np.zeros((capacity, t + 1, a, model.max_actions), dtype=bool)
        self.actions = np.zeros((capacity, t, a), dtype=np.int64)
        self.messages = np.zeros((capacity, t, a, model.message_bits), dtype=np.uint8)
        self.rewards = np.zeros((capacity, t), dtype=np.float32)
        self.state_bits = np.zeros(
            (capacity, t + 1, model.state_size - 1 if with_states else 0), dtype=np.uint8)
        self.progress = state_progress(model, np.arange(t + 1))  # (T+1,) the states' last column
        self.noise = np.zeros((capacity, t + 1, a, model.message_bits), dtype=np.float32)
        self.next = 0
        self.filled = 0

    def add(self, episodes: dict[str, NDArray[Any]]) -> None:
        n = len(episodes["actions"])
        index = (self.next + np.arange(n)) % self.capacity
        for name in EPISODE_FIELDS:
            getattr(self, name)[index] = episodes[name]
        self.next = int((self.next + n) % self.capacity)
        self.filled = min(self.filled + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> EpisodeBatch:
        """`n` whole episodes drawn without replacement (all of them if fewer), on `device`."""
        if n >= self.filled:
            index = np.arange(self.filled)
        else:
            index = rng.choice(self.filled, size=n, replace=False)

        def tensor(array: NDArray[Any], dtype: Any = None) -> torch.Tensor:
            values = torch.from_numpy(array if dtype is None else array.astype(dtype))
            return values.to(device, non_blocking=True)

        bits = tensor(self.observations[index])
        batch = EpisodeBatch(
            observations=bits.to(torch.float32),
            masks=tensor(self.masks[index]),
            actions=tensor(self.actions[index]),
            messages=tensor(self.messages[index], np.float32),
            rewards=tensor(self.rewards[index]),
            states=self._states(index, device),
            noise=tensor(self.noise[index]),
        )
        # Found in the uint8 bits: half the bytes of the float copy to scan.
        batch._sparse["observations"] = SparseRows.of(bits)
        return batch

    def _states(self, index: NDArray[np.int64], device: torch.device | str) -> torch.Tensor:
        """The float32 global states (n, T+1, state_size) of episodes `index`: bits and progress."""
        shape = (len(index), len(self.progress), self.state_size)
        if not self.with_states:
            return torch.zeros(shape, device=device)
        states = np.empty(shape, dtype=np.float32)
        states[..., :-1] = self.state_bits[index]
        states[..., -1] = self.progress
        return torch.from_numpy(states).to(device, non_blocking=True)


def _pack(array: NDArray[Any]) -> dict[str, Any]:
    """An array in fewer bytes, exactly: bits packed 8 to a byte, floats that are mostly
    0/1 (global states) as packed bits plus their other columns."""
    if array.dtype == np.bool_ or (array.dtype == np.uint8 and array.max(initial=0) <= 1):
        return {"bits": np.packbits(array.reshape(-1)), "shape": array.shape,
                "dtype": array.dtype.str}
    if array.dtype == np.float32 and array.ndim >= 2 and array.size:
        rows = array.reshape(-1, array.shape[-1])
        binary = ((rows == 0) | (rows == 1)).all(axis=0)
        if binary.any():
            return {"bits": np.packbits(rows[:, binary].astype(bool).reshape(-1)),
                    "binary_columns": binary, "others": rows[:, ~binary].copy(),
                    "shape": array.shape, "dtype": array.dtype.str}
    return {"raw": array.copy()}


def _unpack(packed: dict[str, Any]) -> NDArray[Any]:
    if "raw" in packed:
        return np.asarray(packed["raw"])
    shape, dtype = tuple(packed["shape"]), np.dtype(packed["dtype"])
    if "binary_columns" not in packed:
        count = int(np.prod(shape))
        return np.unpackbits(packed["bits"], count=count).astype(dtype).reshape(shape)
    binary = packed["binary_columns"]
    rows = np.zeros((int(np.prod(shape[:-1])), shape[-1]), dtype=dtype)
    rows[:, binary] = np.unpackbits(
        packed["bits"], count=rows.shape[0] * int(binary.sum())).reshape(rows.shape[0], -1)
    rows[:, ~binary] = packed["others"]
    return rows.reshape(shape)


def buffer_snapshot(buffer: EpisodeBuffer) -> dict[str, Any]:
    """The buffer's stored episodes and ring position, packed (`restore_buffer` inverts it).

    For resuming a run: QMIX's buffer on large is 0.74 GB as it lies in memory, about
    95 MB packed (its observations, masks and states are bits).
    """
    filled = buffer.filled
    return {"next": buffer.next, "filled": filled, "capacity": buffer.capacity,
            "fields": {name: _pack(getattr(buffer, name)[:filled]) for name in EPISODE_FIELDS}}


def restore_buffer(buffer: EpisodeBuffer, snapshot: dict[str, Any]) -> None:
    """Put a `buffer_snapshot` back into a buffer of the same model and capacity."""
    if snapshot["capacity"] != buffer.capacity:
        raise ValueError(f"the snapshot holds a buffer of {snapshot['capacity']} episodes,"
                         f" this one holds {buffer.capacity}")
    filled = int(snapshot["filled"])
    fields = dict(snapshot["fields"])
    if "states" in fields:  # written before the states were kept as bits: drop progress
        fields["state_bits"] = {"raw": _unpack(fields.pop("states"))[..., :-1].astype(np.uint8)}
    for name in EPISODE_FIELDS:
        values = _unpack(fields[name])
        if name == "state_bits" and not buffer.with_states:
            values = values[..., :0]
        getattr(buffer, name)[:filled] = values
    buffer.next, buffer.filled = int(snapshot["next"]), filled
