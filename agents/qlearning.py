"""What every recurrent Q-learner here shares: masked action selection, the TD target, the GRU
over whole episodes.

DIAL(-SAU), QMIX and IQL all pick actions the same way (greedy over the legal
actions, ε-random among the legal ones while exploring, as pymarl's
`EpsilonGreedyActionSelector`) and bootstrap the same way (double Q: the online
network picks the next legal action, the target network values it; episodes end at
the time limit, so the last step bootstraps from nothing). One place, so a masked
action can never be chosen nor bootstrapped by one learner and not by another.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn


def greedy_actions(q: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Highest legal Q per agent: masked actions get −∞, so they are never chosen."""
    return q.masked_fill(~masks, -torch.inf).argmax(dim=-1)


def epsilon_greedy(
    q: torch.Tensor, legal: NDArray[np.bool_], epsilon: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """ε-greedy behaviour (B, A): with probability ε a uniformly random *legal* action."""
    greedy = greedy_actions(q, torch.as_tensor(legal, device=q.device)).cpu().numpy()
    greedy = greedy.astype(np.int64)
    random_actions = np.where(legal, rng.random(legal.shape), -1.0).argmax(axis=-1)
    explore = rng.random(greedy.shape) < epsilon
    return np.where(explore, random_actions, greedy)


def chosen_q(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q of the actions taken: q (B, T, A, n), actions (B, T, A) -> (B, T, A)."""
    return q.gather(3, actions.unsqueeze(3)).squeeze(3)


def q_of_actions(features: torch.Tensor, head: nn.Linear, actions: torch.Tensor) -> torch.Tensor:
    """`chosen_q(head(features), actions)` without the head's other outputs: (...) Q-values.

    Only the taken actions' rows of the head's weight are used, so the backward pass
    does not run through all `max_actions` outputs (the loss reads one per agent and step).
    """
    return (features * head.weight[actions]).sum(dim=-1) + head.bias[actions]


def double_q_next_values(
    online_next_q: torch.Tensor, target_next_q: torch.Tensor, next_masks: torch.Tensor
) -> torch.Tensor:
    """Target-network value (B, T, A) of the online network's best legal next action."""
    best_next = greedy_actions(online_next_q.detach(), next_masks)
    return target_next_q.gather(3, best_next.unsqueeze(3)).squeeze(3)


def td_target(rewards: torch.Tensor, next_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """r + γ·V(next), with no bootstrap after the last step (the time limit).

    rewards (B, T) already scaled; next_values (B, T) or (B, T, A).
    """
    steps = rewards.shape[1]
    not_last = torch.ones(steps, dtype=next_values.dtype)
    not_last[-1] = 0.0
    shape = (1, steps) + (1,) * (next_values.dim() - 2)
    reward = rewards.reshape(*rewards.shape, *(1,) * (next_values.dim() - 2))
    return reward + gamma * not_last.reshape(shape) * next_values


def gru_sequence(cell: nn.GRUCell, inputs: torch.Tensor) -> torch.Tensor:
    """A `GRUCell` run over a whole sequence (T, N, in) from a zero state: (T, N, hidden).

    torch's `nn.GRU` with the cell's own parameters (no copy: gradients reach the cell),
    one call instead of T.
    """
    gru = _sequence_gru(cell.input_size, cell.hidden_size)
    weights = {"weight_ih_l0": cell.weight_ih, "weight_hh_l0": cell.weight_hh,
               "bias_ih_l0": cell.bias_ih, "bias_hh_l0": cell.bias_hh}
    hidden0 = inputs.new_zeros(1, inputs.shape[1], cell.hidden_size)
    with warnings.catch_warnings():
        # cuDNN would like the weights in one flat buffer; the cell's are separate tensors.
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single")
        output, _ = torch.func.functional_call(gru, weights, (inputs, hidden0))
    return output


_SEQUENCE_GRUS: dict[tuple[int, int], nn.GRU] = {}


def _sequence_gru(input_size: int, hidden_size: int) -> nn.GRU:
    """A parameter-less shell of `nn.GRU` for `functional_call`, one per shape."""
    key = (input_size, hidden_size)
    if key not in _SEQUENCE_GRUS:
        _SEQUENCE_GRUS[key] = nn.GRU(input_size, hidden_size).requires_grad_(False)
    return _SEQUENCE_GRUS[key]



# Above this share of entries that differ from the base, a dense product is as fast.
SPARSE_DENSITY_LIMIT = 0.05
# Below this many entries (one step of a few envs, as when acting) the dense product is one
# call where the sparse form is a dozen: dense is faster.
SPARSE_MIN_ENTRIES = 1 << 18


@dataclass(frozen=True)
class SparseRows:
    """A (..., D) matrix as a base row plus the few entries where each row differs from it.

    What `sparse_linear` multiplies. Observations are bits and few are set (3–5 of
    342–988 per agent and step on small and large): no base, only 1s. Global states
    are wide one-hots that change little from the first step (large: 5,011 entries):
    their first row is the base, and a row's changes are +1s, −1s and a few other
    values (episode progress). Entries are listed row by row, each kind in row order.
    """

    shape: tuple[int, ...]
    base: torch.Tensor | None  # (D,), or None for a base of zeros
    ones: tuple[torch.Tensor, torch.Tensor]  # (rows, columns) where the row is base + 1
    minus_ones: tuple[torch.Tensor, torch.Tensor]  # where it is base − 1
    others: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (rows, columns, differences)

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1])

    @classmethod
    def of(cls, inputs: torch.Tensor, offset: bool = False) -> SparseRows | None:
        """The sparse form of `inputs`, or None when too many entries differ from the base.

        offset: use the first row as the base (else zeros).
        """
        flat = inputs.reshape(-1, inputs.shape[-1])
        base = flat[0].to(torch.float32) if offset and flat.shape[0] else None
        differs = flat != base.to(flat.dtype) if base is not None else flat
        rows, columns = differs.nonzero(as_tuple=True)
        if rows.numel() > SPARSE_DENSITY_LIMIT * flat.numel():
            return None
        values = flat[rows, columns]
        empty = rows[:0]
        if base is None and bool((values == 1).all()):  # bits: only 1s, the common case
            return cls(tuple(inputs.shape), None, (rows, columns), (empty, empty),
                       (empty, empty, empty.to(torch.float32)))
        difference = values.to(torch.float32)
        if base is not None:
            difference = difference - base[columns]
        one, minus_one = difference == 1, difference == -1
        other = ~(one | minus_one)
        return cls(tuple(inputs.shape), base, (rows[one], columns[one]),
                   (rows[minus_one], columns[minus_one]),
                   (rows[other], columns[other], difference[other]))


def sparse_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None, sparse: SparseRows | None = None
                  ) -> torch.Tensor:
    """`linear(inputs, weight, bias)`, reading only the weight's columns where rows differ
    from their base: inputs (..., D), weight (H, D) -> (..., H).

    Each row's product is the base's plus the sum of the columns where it holds base + 1
    (`embedding_bag`) minus those where it holds base − 1, plus the few other
    differences: forward and backward read those columns only, where a dense product
    reads every one. The same values as the dense product up to summation order.
    `sparse` is `SparseRows.of(inputs)` when the caller has it (the online and target
    networks replay the same batch); small inputs and those with too many differences
    go dense.

    keep (A, D), optional, with inputs (..., A, D) and no base: which columns each
    agent's rows use (the dense `linear(inputs * keep, weight)`).
    """
    if sparse is None and inputs.numel() >= SPARSE_MIN_ENTRIES:
        sparse = SparseRows.of(inputs)
    lead = inputs.shape[:-1]
    if sparse is None:
        dense = inputs.to(weight.dtype)
        if keep is not None:
            dense = dense * keep
        return nn.functional.linear(dense, weight, bias)
    columns_in, n_rows = inputs.shape[-1], sparse.n_rows
    table = weight.t().contiguous()  # (D, H): row c is column c of the weight, in one run
    out = weight.new_zeros(n_rows, weight.shape[0])

    def used(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        assert keep is not None
        return keep.reshape(-1)[(rows % keep.shape[0]) * columns_in + columns] != 0

    for sign, (rows, columns) in ((1.0, sparse.ones), (-1.0, sparse.minus_ones)):
        if keep is not None:
            kept = used(rows, columns)
            rows, columns = rows[kept], columns[kept]
        if not rows.numel():
            continue
        counts = torch.bincount(rows, minlength=n_rows)
        bags = nn.functional.embedding_bag(columns, table, torch.cumsum(counts, 0) - counts,
                                           mode="sum")
        out = out + bags if sign > 0 else out - bags
    rows, columns, difference = sparse.others
    if keep is not None:
        kept = used(rows, columns)
        rows, columns, difference = rows[kept], columns[kept], difference[kept]
    if rows.numel():
        out = out.index_add(0, rows, table[columns] * difference[:, None].to(weight.dtype))
    if sparse.base is not None:
        assert keep is None, "a per-agent keep mask needs a base of zeros"
        out = out + sparse.base.to(weight.dtype) @ table
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])
