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

import warnings

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
