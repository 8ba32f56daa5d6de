"""The learners' fast paths compute what the step-by-step networks compute.

DIAL's unroll embeds every step's inputs at once and finishes the Q-values after the
loop; without messages, and in QMIX/IQL, the GRU runs whole sequences in one call.
Each must give the Q-values, messages and gradients the per-step `forward` gives,
which is what the policies execute. And `--device`: a clear error where the device
is missing, the CPU where `auto` finds no GPU.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from cyberdial.agents.buffer import EpisodeBatch, EpisodeBuffer
from cyberdial.agents.dial import DialLearner
from cyberdial.agents.memory import keep_freed_memory
from cyberdial.agents.qlearning import chosen_q, double_q_next_values, td_target
from cyberdial.agents.qmix import QMixer, QmixLearner
from cyberdial.agents.training import (
    ConfigError,
    Learner,
    collect_episodes,
    config_for,
    make_learner,
    prepare_scenario,
    resolve_device,
)
from cyberdial.cli import main
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimBatch

torch.set_num_threads(1)


def _learner_and_batch(algo: str, **settings: object) -> tuple[Learner, EpisodeBatch]:
    config = config_for(algo, scenario="small", tensorboard=False, **settings)
    torch.manual_seed(0)
    model = GameModel(prepare_scenario(config))
    learner = make_learner(model, config)
    buffer = EpisodeBuffer(model, 8, with_states=learner.uses_state)
    buffer.add(collect_episodes(SimBatch(model, n_envs=8, seed=5), learner, epsilon=0.5, seed=5))
    return learner, buffer.sample(8, np.random.default_rng(0))


def _dial_step_by_step(learner: DialLearner, batch: EpisodeBatch
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The replay as the network's per-step `forward` gives it (what execution runs)."""
    network = learner.network
    hidden = network.initial_hidden(batch.size)
    sent = torch.zeros(batch.size, network.n_agents, network.message_bits)
    qs, messages = [], []
    for t in range(batch.steps + 1):
        observations = batch.observations[:, t]
        q, logits, hidden = network(observations, network.incoming_from_messages(sent), hidden)
        sent = learner.soft_messages(network, logits, observations, batch.noise[:, t])
        qs.append(q)
        messages.append(sent)
    return torch.stack(qs, 1), torch.stack(messages, 1)


def _gradients(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, module.parameters(),
                                                                     strict=True)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("no_comm", [False, True], ids=["messages", "no-comm"])
def test_dial_unroll_equals_the_step_by_step_network(no_comm: bool) -> None:
    learner, batch = _learner_and_batch("dial-sau", no_comm=no_comm)
    assert isinstance(learner, DialLearner)
    if not no_comm:
        assert float(batch.messages.sum()) > 0, "no message was sent: the test shows nothing"
    fast = learner.unroll(learner.network, batch)
    q, messages = _dial_step_by_step(learner, batch)
    assert torch.allclose(fast.q, q, atol=1e-5)
    assert torch.allclose(fast.messages, messages, atol=1e-6)
    # The same gradients reach every parameter, the message path's included.
    fast_grads = _gradients(fast.q.pow(2).mean() + fast.messages.sum(), learner.network)
    slow_grads = _gradients(q.pow(2).mean() + messages.sum(), learner.network)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(fast_grad, slow_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(120)
def test_dial_replays_inputs_decoded_once_per_batch_and_gates_as_the_host_bits_say() -> None:
    """The target's unroll reuses the online one's decoded inputs for the same batch only,
    and the message gate (a product with the host bits) is "any host bit set"."""
    learner, batch = _learner_and_batch("dial-sau")
    assert isinstance(learner, DialLearner)
    network = learner.network
    reference = (batch.observations * network.host_bit).amax(dim=-1) > 0
    assert torch.equal(network.sees_activity(batch.observations), reference)
    assert bool(reference.any()) and not bool(reference.all())
    with torch.no_grad():
        for parameter in learner.target.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    learner.unroll(network, batch)
    reused = learner.unroll(learner.target, batch)
    learner._replayed = None
    fresh = learner.unroll(learner.target, batch)
    assert torch.equal(reused.q, fresh.q) and torch.equal(reused.messages, fresh.messages)
    other = EpisodeBatch(**{**vars(batch), "observations": batch.observations.flip(0),
                            "noise": batch.noise.flip(0)})
    learner.unroll(network, batch)
    then_other = learner.unroll(network, other)
    learner._replayed = None
    assert torch.equal(then_other.q, learner.unroll(network, other).q)


@pytest.mark.timeout(120)
def test_qmix_sequence_equals_the_step_by_step_network() -> None:
    learner, batch = _learner_and_batch("qmix")
    assert isinstance(learner, QmixLearner)
    network = learner.network
    fast = learner.unroll(network, batch.observations)
    hidden, qs = network.initial_hidden(batch.size), []
    for t in range(batch.observations.shape[1]):
        q, hidden = network(batch.observations[:, t], hidden)
        qs.append(q)
    slow = torch.stack(qs, 1)
    assert torch.allclose(fast, slow, atol=1e-5)
    for fast_grad, slow_grad in zip(_gradients(fast.pow(2).mean(), network),
                                    _gradients(slow.pow(2).mean(), network), strict=True):
        assert torch.allclose(fast_grad, slow_grad, rtol=1e-4, atol=1e-6)


def _mix_module_by_module(mixer: QMixer, agent_qs: torch.Tensor, states: torch.Tensor
                         ) -> torch.Tensor:
    """QMIX's mixer as pymarl writes it: each hypernetwork on its own, on copied states."""
    qs = agent_qs.reshape(-1, 1, mixer.n_agents)
    s = states.reshape(-1, states.shape[-1])
    w1 = mixer.hyper_w1(s).abs().view(-1, mixer.n_agents, mixer.embed)
    b1 = mixer.hyper_b1(s).view(-1, 1, mixer.embed)
    hidden = torch.nn.functional.elu(torch.bmm(qs, w1) + b1)
    w_final = mixer.hyper_w_final(s).abs().view(-1, mixer.embed, 1)
    v = mixer.value(s).view(-1, 1, 1)
    return (torch.bmm(hidden, w_final) + v).reshape(agent_qs.shape[:-1])


@pytest.mark.timeout(120)
def test_qmix_td_errors_equal_the_full_head_and_the_module_by_module_mixer() -> None:
    """`td_errors` reads only the taken actions' Q and runs the mixer's state layers as one
    product: the same TD errors and gradients as the whole head and pymarl's mixer."""
    learner, batch = _learner_and_batch("qmix")
    assert isinstance(learner, QmixLearner) and learner.mixer is not None
    assert learner.target_mixer is not None
    # A target that differs from the online networks, so a mix-up would show.
    with torch.no_grad():
        for parameter in [*learner.target.parameters(), *learner.target_mixer.parameters()]:
            parameter.add_(0.05 * torch.randn_like(parameter))
    fast = learner.td_errors(batch)
    q = learner.unroll(learner.network, batch.observations)
    with torch.no_grad():
        target_q = learner.unroll(learner.target, batch.observations)
        next_value = double_q_next_values(q[:, 1:], target_q[:, 1:], batch.masks[:, 1:])
        next_tot = _mix_module_by_module(learner.target_mixer, next_value, batch.states[:, 1:])
    q_tot = _mix_module_by_module(learner.mixer, chosen_q(q[:, :-1], batch.actions),
                                  batch.states[:, :-1])
    slow = q_tot - td_target(batch.rewards * learner.config.reward_scale, next_tot,
                             learner.config.gamma)
    assert torch.allclose(fast, slow, atol=1e-5)
    parameters = learner.trainable
    fast_grads = torch.autograd.grad(fast.pow(2).mean(), parameters)
    slow_grads = torch.autograd.grad(slow.pow(2).mean(), parameters)
    for fast_grad, slow_grad in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(fast_grad, slow_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.timeout(120)
def test_only_a_mixer_gets_the_global_state() -> None:
    _, dial_batch = _learner_and_batch("dial-sau")
    _, qmix_batch = _learner_and_batch("qmix")
    assert float(dial_batch.states.abs().sum()) == 0  # not asked of the simulator
    assert float(qmix_batch.states.abs().sum()) > 0


class _RecordingSim(SimBatch):
    """A simulator that also keeps the float global state each time the states are read."""

    seen: list[np.ndarray]

    def state_bits(self) -> np.ndarray:
        self.seen.append(self.state())
        return super().state_bits()


def test_the_buffer_gives_back_the_simulators_global_states_exactly() -> None:
    # Kept as bits and rebuilt with their progress column, the sampled states are the
    # simulator's `state()` to the last bit, step by step.
    model = GameModel(load_scenario("small"))
    learner = make_learner(model, config_for("qmix", scenario="small", seed=2))
    sim = _RecordingSim(model, n_envs=3, seed=2)
    sim.seen = []
    buffer = EpisodeBuffer(model, 3, with_states=learner.uses_state)
    buffer.add(collect_episodes(sim, learner, epsilon=1.0, seed=2))
    batch = buffer.sample(3, np.random.default_rng(0))
    expected = np.stack(sim.seen, axis=1)  # (B, T+1, state_size)
    assert batch.states.dtype == torch.float32
    assert np.array_equal(batch.states.numpy(), expected)
    assert expected[:, :, -1].max() == 1.0  # the progress column reached the episode's end


def test_device_auto_is_the_cpu_without_a_gpu_and_unknown_devices_are_refused() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:1", ""):
        with pytest.raises(ConfigError, match="--device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_refuses_a_missing_gpu_in_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "--scenario", "tiny", "--episodes", "16", "--device", "cuda",
                 "--runs-dir", str(runs)]) == 2
    policy = Path(__file__).resolve().parent.parent / "scenarios/policies/tiny_dial_sau.pt"
    assert main(["evaluate", str(policy), "--episodes", "2", "--device", "cuda"]) == 2
    results = tmp_path / "results"
    assert main(["compare", "--name", "gpu", "--results-dir", str(results), "--scenarios",
                 "tiny", "--algos", "dial-sau", "--seeds", "1", "--episodes", "16",
                 "--device", "cuda"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["error: --device cuda: torch sees no GPU here"
                      f" (torch {torch.__version__}); use --device cpu or auto"] * 3
    assert not runs.exists() and not results.exists()  # nothing half-built
    assert main(["compare", "--name", "gpu", "--results-dir", str(results), "--scenarios",
                 "tiny", "--algos", "dial-sau", "--seeds", "1", "--episodes", "16",
                 "--device", "gpu"]) == 2
    assert "--device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def test_an_update_sized_allocation_stays_in_the_heap_once_training_asked() -> None:
    """`keep_freed_memory` (called by `train`): glibc serves a block of an update's size
    from the heap, not from fresh mmapped pages that fault on first touch."""
    if not keep_freed_memory():
        pytest.skip("the C library has no mallopt (not glibc)")
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33: no mallinfo2 to read the heap with")
    libc.mallinfo2.restype = _Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    block = libc.malloc(24 << 20)  # above glibc's default threshold (128 KiB, or what it grew to)
    try:
        assert block
        assert libc.mallinfo2().hblks == before  # no new mmapped block
    finally:
        libc.free(block)
