"""The first layers' sparse product (`sparse_linear`) against the dense one it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cyberdial.agents.buffer import EpisodeBuffer
from cyberdial.agents.qlearning import SPARSE_MIN_ENTRIES, SparseRows, sparse_linear
from cyberdial.agents.training import collect_episodes, config_for, make_learner
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimBatch


def _gradients(output: torch.Tensor, grad: torch.Tensor, *tensors: torch.Tensor
               ) -> list[torch.Tensor]:
    return list(torch.autograd.grad(output, tensors, grad))


def _bits(generator: torch.Generator, shape: tuple[int, ...], rate: float) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) < rate).to(torch.float32)


def test_bits_give_the_dense_product_and_its_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = _bits(generator, (40, 7, 3, 300), 0.01)  # (B, T, A, D)
    inputs[0, 0, 0] = 0.0  # an all-zero row: an empty bag
    weight = torch.randn(16, 300, generator=generator, requires_grad=True)
    bias = torch.randn(16, generator=generator, requires_grad=True)
    sparse = SparseRows.of(inputs)
    assert sparse is not None and sparse.base is None
    assert not sparse.minus_ones[0].numel() and not sparse.others[0].numel()

    fast = sparse_linear(inputs, weight, bias, sparse=sparse)
    dense = nn.functional.linear(inputs, weight, bias)
    assert fast.shape == dense.shape == (40, 7, 3, 16)
    assert torch.allclose(fast, dense, atol=1e-5)
    grad = torch.randn(dense.shape, generator=generator)
    for got, want in zip(_gradients(fast, grad, weight, bias),
                         _gradients(dense, grad, weight, bias), strict=True):
        assert torch.allclose(got, want, atol=1e-4)


def test_a_keep_mask_drops_each_agents_columns() -> None:
    generator = torch.Generator().manual_seed(1)
    inputs = _bits(generator, (200, 3, 300), 0.02)
    keep = torch.ones(3, 300)
    keep[0, :100] = 0.0
    keep[2, 250:] = 0.0
    weight = torch.randn(8, 300, generator=generator, requires_grad=True)
    fast = sparse_linear(inputs, weight, keep=keep, sparse=SparseRows.of(inputs))
    dense = nn.functional.linear(inputs * keep, weight)
    assert torch.allclose(fast, dense, atol=1e-5)
    grad = torch.randn(dense.shape, generator=generator)
    assert torch.allclose(*_gradients(fast, grad, weight), *_gradients(dense, grad, weight),
                          atol=1e-4)


def test_states_as_their_first_row_plus_changes() -> None:
    """One-hots that start set (+1s and −1s from the base) and a progress column."""
    generator = torch.Generator().manual_seed(2)
    rows, hosts = 300, 200
    compromise = torch.zeros(rows, hosts, dtype=torch.long)
    compromise[torch.rand(rows, hosts, generator=generator) < 0.01] = 1
    one_hot = nn.functional.one_hot(compromise, 3).reshape(rows, -1).to(torch.float32)
    progress = torch.linspace(0.0, 1.0, rows)[:, None]
    states = torch.cat([one_hot, progress], dim=1)
    weight = torch.randn(12, states.shape[1], generator=generator, requires_grad=True)
    bias = torch.randn(12, generator=generator, requires_grad=True)

    sparse = SparseRows.of(states, offset=True)
    assert sparse is not None and sparse.base is not None
    assert sparse.ones[0].numel() and sparse.minus_ones[0].numel() and sparse.others[0].numel()
    fast = sparse_linear(states, weight, bias, sparse=sparse)
    dense = nn.functional.linear(states, weight, bias)
    assert torch.allclose(fast, dense, atol=1e-4)
    grad = torch.randn(dense.shape, generator=generator)
    for got, want in zip(_gradients(fast, grad, weight, bias),
                         _gradients(dense, grad, weight, bias), strict=True):
        assert torch.allclose(got, want, atol=1e-3)
    # Without the base nearly every row holds a third of its entries set: not sparse.
    assert SparseRows.of(states) is None


def test_dense_inputs_and_small_ones_take_the_dense_product() -> None:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 64, generator=generator)
    busy = _bits(generator, (SPARSE_MIN_ENTRIES // 64 + 1, 64), 0.5)
    assert SparseRows.of(busy) is None
    assert torch.allclose(sparse_linear(busy, weight), busy @ weight.t(), atol=1e-5)
    small = _bits(generator, (8, 64), 0.02)
    assert torch.allclose(sparse_linear(small, weight), small @ weight.t(), atol=1e-6)


@pytest.mark.parametrize("algo", ["dial-sau", "qmix"])
def test_a_sampled_batch_carries_its_observations_sparse_form(algo: str) -> None:
    """The buffer finds the 1s in the stored bits; they are the float observations' 1s."""
    model = GameModel(load_scenario("small"))
    config = config_for(algo, scenario="small", episodes=4, envs=4, batch_episodes=4,
                        buffer_episodes=8)
    learner = make_learner(model, config)
    sim = SimBatch(model, n_envs=4, seed=5)
    buffer = EpisodeBuffer(model, 8, with_states=learner.uses_state)
    buffer.add(collect_episodes(sim, learner, 1.0, seed=5))
    batch = buffer.sample(4, learner.rng)
    rows = batch.observation_rows()
    fresh = SparseRows.of(batch.observations)
    assert rows is not None and fresh is not None
    assert torch.equal(rows.ones[0], fresh.ones[0]) and torch.equal(rows.ones[1], fresh.ones[1])
    assert batch.observation_rows() is rows  # made once
    states = batch.state_rows()
    assert states is not None and batch.state_rows() is states
    weight = torch.randn(6, model.state_size)
    assert torch.allclose(sparse_linear(batch.states, weight, sparse=states),
                          batch.states @ weight.t(), atol=1e-4)
