"""QMIX and IQL: recurrent Q-learning blue agents without learned messages.

The yardsticks DIAL-SAU is compared with (Rashid et al. 2018; pymarl/epymarl's
reference settings). Reads top to bottom: the DRQN agent network shared by all
blue agents, QMIX's monotonic hypernetwork mixer over the simulator's global
`state()`, the greedy `DrqnPolicy` that drives a range, and the learners the
shared training loop (`agents/training.py`) calls: `QmixLearner` mixes the
agents' chosen Q-values into one Q_tot and learns it from the team reward;
`IqlLearner` is the same network with no mixer (every agent learns the team
reward on its own Q, the TD errors summed).

Neither sends messages: every bit is 0, so a peer's message never unmasks
Analyse under strategic action unmasking. They see the same observations and
the same action masks as DIAL-SAU, and play in the same batched simulator.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from cyberdial.agents.buffer import EpisodeBatch
from cyberdial.agents.qlearning import (
    SPARSE_MIN_ENTRIES,
    SparseRows,
    epsilon_greedy,
    greedy_actions,
    gru_sequence,
    q_of_actions,
    sparse_linear,
    td_target,
)
from cyberdial.agents.training import Learner, TrainConfig
from cyberdial.range.model import GameModel

logger = logging.getLogger(__name__)

# pymarl's qmix.yaml: mixing_embed_dim 32, hypernet_layers 2, hypernet_embed 64.
MIXING_EMBED = 32
HYPERNET_EMBED = 64
# pymarl's RMSprop: alpha 0.99, eps 1e-5 (no momentum).
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-5


# ------------------------------------------------------------------ the agents


class DrqnNetwork(nn.Module):
    """pymarl's RNN agent: Linear -> ReLU -> GRU cell -> Linear, shared by every agent.

    Input per agent: its observation (zero-padded to `max_obs`; it already holds the
    agent's last action one-hot and the peers' message bits, which are 0 here) and a
    one-hot agent index, so shared weights can still act differently per agent.
    Output: Q-values over `max_actions` slots; padding slots are always masked.
    """

    agent_ids: torch.Tensor

    def __init__(self, model: GameModel, hidden: int = 64) -> None:
        super().__init__()
        self.n_agents, self.hidden_size = model.n_agents, hidden
        self.register_buffer("agent_ids", torch.eye(model.n_agents))
        self.fc1 = nn.Linear(model.max_obs + model.n_agents, hidden)
        self.rnn = nn.GRUCell(hidden, hidden)
        self.fc2 = nn.Linear(hidden, model.max_actions)

    def initial_hidden(self, batch: int) -> torch.Tensor:
        return self.agent_ids.new_zeros(batch, self.n_agents, self.hidden_size)

    def embed(self, observations: torch.Tensor,
              sparse: SparseRows | None = None) -> torch.Tensor:
        """ReLU(fc1([observation, one-hot agent index])): (..., A, max_obs) -> (..., A, H).

        The one-hot's product with fc1 is the weight's column for the agent, so it is
        added instead of concatenated: no copy of the observations. The observations'
        product reads only their 1s (`sparse_linear`; `sparse` when the caller has it).
        """
        observation_columns = self.fc1.weight[:, : -self.n_agents]
        agent_columns = self.fc1.weight[:, -self.n_agents:].t()  # (A, H)
        return torch.relu(sparse_linear(observations, observation_columns, self.fc1.bias,
                                        sparse=sparse) + agent_columns)

    def forward(
        self, observations: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for all agents: (Q (B, A, max_actions), hidden (B, A, H))."""
        batch = observations.shape[0]
        x = self.embed(observations)
        hidden = self.rnn(
            x.reshape(batch * self.n_agents, -1), hidden.reshape(batch * self.n_agents, -1)
        ).reshape(batch, self.n_agents, -1)
        return self.fc2(hidden), hidden

    def sequence(self, observations: torch.Tensor) -> torch.Tensor:
        """Q-values over whole episodes, (B, T, A, obs) -> (B, T, A, max_actions).

        The same arithmetic as `forward` step by step from a zero state, but the layers
        before and after the GRU see every step at once and the GRU runs the sequence in
        one call: nothing here depends on the previous step's output.
        """
        return self.fc2(self.hidden_sequence(observations))

    def hidden_sequence(self, observations: torch.Tensor,
                        sparse: SparseRows | None = None) -> torch.Tensor:
        """GRU states over whole episodes, (B, T, A, obs) -> (B, T, A, H): `sequence`
        before its last layer."""
        batch, steps = observations.shape[:2]
        x = self.embed(observations, sparse).permute(1, 0, 2, 3).reshape(
            steps, batch * self.n_agents, -1)
        hidden = gru_sequence(self.rnn, x).reshape(steps, batch, self.n_agents, -1)
        return hidden.permute(1, 0, 2, 3)


# ------------------------------------------------------------------ the mixer


class QMixer(nn.Module):
    """Q_tot(s, Q_1..Q_A): a one-hidden-layer network whose weights come from the state.

    Hypernetworks map the global state to the mixing weights; their absolute value
    keeps every weight non-negative, so ∂Q_tot/∂Q_a ≥ 0 (monotonic): each agent's
    greedy action is then also the team's. ELU hidden, state-dependent bias V(s).
    """

    def __init__(self, n_agents: int, state_size: int, embed: int = MIXING_EMBED,
                 hypernet_embed: int = HYPERNET_EMBED) -> None:
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.hyper_w1 = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(),
            nn.Linear(hypernet_embed, embed * n_agents),
        )
        self.hyper_w_final = nn.Sequential(
            nn.Linear(state_size, hypernet_embed), nn.ReLU(), nn.Linear(hypernet_embed, embed)
        )
        self.hyper_b1 = nn.Linear(state_size, embed)
        self.value = nn.Sequential(nn.Linear(state_size, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, agent_qs: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Mix (..., A) chosen Q-values with (..., state_size) states into (...) Q_tot."""
        return self.mix(agent_qs, self.read_states(states))

    def mix_steps(self, agent_qs: torch.Tensor, batch: EpisodeBatch,
                  next_steps: bool) -> torch.Tensor:
        """`forward` over a batch's steps: agent_qs (B, T, A) with the states of steps
        0..T-1, or of steps 1..T with `next_steps`, -> (B, T) Q_tot.

        The states are read through their sparse form (`EpisodeBatch.state_rows`), made
        once for the online and the target mixer, over all T + 1 steps.
        """
        read = self.read_states(batch.states, batch.state_rows())
        return self.mix(agent_qs, read[:, 1:] if next_steps else read[:, :-1])

    def read_states(self, states: torch.Tensor,
                    sparse: SparseRows | None = None) -> torch.Tensor:
        """The four layers that read the state, as one product: (..., state_size) ->
        (..., width), as `mix` takes them.

        The state is wide (large: 5,011) and changes little from its first step, so the
        product reads only the entries that differ from it (`sparse_linear`).
        """
        first = self._state_layers()
        weight = torch.cat([layer.weight for layer in first])
        bias = torch.cat([layer.bias for layer in first])
        if sparse is None and states.numel() >= SPARSE_MIN_ENTRIES:
            sparse = SparseRows.of(states, offset=True)
        return sparse_linear(states, weight, bias, sparse=sparse)

    def mix(self, agent_qs: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """Q_tot (...) from (..., A) chosen Q-values and the states as `read_states` read them."""
        lead = agent_qs.shape[:-1]
        qs = agent_qs.reshape(-1, 1, self.n_agents)
        hyper_w1, hyper_w_final, b1, value = read.reshape(-1, read.shape[-1]).split(
            [layer.out_features for layer in self._state_layers()], dim=1)
        w1 = self.hyper_w1[2](torch.relu(hyper_w1)).abs().view(-1, self.n_agents, self.embed)
        hidden = nn.functional.elu(torch.bmm(qs, w1) + b1.view(-1, 1, self.embed))
        w_final = self.hyper_w_final[2](torch.relu(hyper_w_final)).abs().view(-1, self.embed, 1)
        v = self.value[2](torch.relu(value)).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).reshape(lead)

    def _state_layers(self) -> list[nn.Linear]:
        return [cast(nn.Linear, self.hyper_w1[0]), cast(nn.Linear, self.hyper_w_final[0]),
                self.hyper_b1, cast(nn.Linear, self.value[0])]


# ------------------------------------------------------------------ execution


class DrqnPolicy:
    """The trained agents, greedy, as a `BatchPolicy`: (observations, masks) in, no messages out.

    Keeps each env's GRU state between calls within an episode; `reset(n_envs)` clears it.
    """

    def __init__(self, network: DrqnNetwork, message_bits: int) -> None:
        self.network = network
        self.message_bits = message_bits
        self.hidden = network.initial_hidden(1)

    def reset(self, n_envs: int) -> None:
        self.hidden = self.network.initial_hidden(n_envs)

    @torch.no_grad()
    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        device = self.network.agent_ids.device
        obs = torch.as_tensor(observations, dtype=torch.float32, device=device)
        if self.hidden.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        q, self.hidden = self.network(obs, self.hidden)
        actions = greedy_actions(q, torch.as_tensor(masks, device=device) > 0)
        actions = actions.cpu().numpy().astype(np.int64)
        silence = np.zeros((*actions.shape, self.message_bits), dtype=np.uint8)
        return actions, silence


# ------------------------------------------------------------------ learning


class DrqnLearner(Learner):
    """Double-Q recurrent Q-learning over whole episodes; QMIX or IQL by `use_mixer`."""

    use_mixer: ClassVar[bool] = True

    def __init__(self, model: GameModel, config: TrainConfig) -> None:
        super().__init__(model, config)
        self.network = DrqnNetwork(model, config.hidden).to(self.device)
        self.mixer = (QMixer(model.n_agents, model.state_size).to(self.device)
                      if self.use_mixer else None)
        self.target = copy.deepcopy(self.network).requires_grad_(False)
        self.target_mixer = (
            copy.deepcopy(self.mixer).requires_grad_(False) if self.mixer is not None else None
        )
        self.trainable = list(self.network.parameters())
        if self.mixer is not None:
            self.trainable += list(self.mixer.parameters())
        self.optimiser = torch.optim.RMSprop(
            self.trainable, lr=config.lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS
        )
        self.rng = np.random.default_rng(config.seed)
        self.reset(1)

    # --------------------------------------------------------- behaviour

    def reset(self, n_envs: int) -> None:
        self.hidden = self.network.initial_hidden(n_envs)

    @torch.inference_mode()
    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8], epsilon: float
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        q, self.hidden = self.network(
            torch.as_tensor(observations, dtype=torch.float32, device=self.device), self.hidden)
        actions = epsilon_greedy(q, masks > 0, epsilon, self.rng)
        silence = np.zeros((*actions.shape, self.model.message_bits), dtype=np.uint8)
        return actions, silence

    # --------------------------------------------------------- learning

    @staticmethod
    def unroll(network: DrqnNetwork, observations: torch.Tensor) -> torch.Tensor:
        """Q-values over whole episodes (B, T+1, A, max_actions), the GRU carried along."""
        return network.sequence(observations)

    def td_errors(self, batch: EpisodeBatch) -> torch.Tensor:
        """Double-Q TD errors: (B, T) of Q_tot with the mixer, (B, T, A) without."""
        config = self.config
        # The same arithmetic as `unroll`'s Q-values, but the gradient flows through the
        # taken actions' Q only: the full head is evaluated without one, for the online
        # network's choice of next action (double Q), and the target's only at that choice.
        hidden = self.network.hidden_sequence(batch.observations, batch.observation_rows())
        with torch.no_grad():
            next_q = self.network.fc2(hidden[:, 1:])
            best_next = greedy_actions(next_q, batch.masks[:, 1:])
            target_hidden = self.target.hidden_sequence(batch.observations,
                                                        batch.observation_rows())[:, 1:]
            next_value = q_of_actions(target_hidden, self.target.fc2, best_next)
        q_taken = q_of_actions(hidden[:, :-1], self.network.fc2, batch.actions)  # (B, T, A)
        reward = batch.rewards * config.reward_scale  # (B, T)
        if self.mixer is not None and self.target_mixer is not None:
            q_tot = self.mixer.mix_steps(q_taken, batch, next_steps=False)
            with torch.no_grad():
                next_tot = self.target_mixer.mix_steps(next_value, batch, next_steps=True)
            return q_tot - td_target(reward, next_tot, config.gamma)
        return q_taken - td_target(reward, next_value, config.gamma)

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        td_error = self.td_errors(batch)
        loss = td_error.pow(2).mean()
        self.optimiser.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimiser.step()
        return {
            "losses/td_loss": float(loss.detach()),
            "losses/grad_norm": float(grad_norm),
        }

    def update_target(self) -> None:
        self.target.load_state_dict(self.network.state_dict())
        if self.mixer is not None and self.target_mixer is not None:
            self.target_mixer.load_state_dict(self.mixer.state_dict())

    # --------------------------------------------------------- policy and state

    def greedy_policy(self) -> DrqnPolicy:
        return DrqnPolicy(self.network, self.model.message_bits)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "network": self.network.state_dict(),
            "target": self.target.state_dict(),
            "optimiser": self.optimiser.state_dict(),
        }
        if self.mixer is not None and self.target_mixer is not None:
            state["mixer"] = self.mixer.state_dict()
            state["target_mixer"] = self.target_mixer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.target.load_state_dict(state.get("target", state["network"]))
        if self.mixer is not None and self.target_mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
            self.target_mixer.load_state_dict(state.get("target_mixer", state["mixer"]))
        if "optimiser" in state:
            self.optimiser.load_state_dict(state["optimiser"])


class QmixLearner(DrqnLearner):
    """QMIX: the agents' chosen Q-values mixed monotonically by a state-conditioned mixer."""

    use_mixer = True
    uses_state = True


class IqlLearner(DrqnLearner):
    """IQL: independent DRQN agents (shared weights), each learning the team reward."""

    use_mixer = False
