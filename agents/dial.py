"""DIAL and DIAL-SAU: blue agents that learn to defend and to send one-bit messages.

Reads top to bottom: the discretise/regularise unit (DRU), the recurrent Q-network
shared by all blue agents, the greedy `DialPolicy` that drives a range, and the
`DialLearner` the training loop (`agents/training.py`) calls. After Foerster et
al. 2016 (DIAL) and Contractor, Li, Al Mallah 2025 (DIAL with strategic action
unmasking for cyber defence).

How messages travel. The range's observation already holds the peers' previous
bits (0/1, the *executed* messages). The network never reads them from that
slice; it takes the peers' messages as a separate input. In execution that input
*is* the observation's slice, so a policy needs only (observations, masks). In
centralised training the learner replays whole episodes and feeds the peers'
DRU outputs `sigmoid(m + N(0, σ))` instead, so every receiver's TD error
back-propagates through the message into its sender, across time steps. The
environment still receives executed bits (`m + noise > 0` while collecting,
`m > 0` in execution) for the communication cost and SAU's Analyse unmasking.

Three rules keep training and execution one game (after the authors' code):
- Gated senders (`gate_messages`, the authors' `game_comm_limited`): an agent's
  message is 0, with no gradient, unless its own observation shows something on
  one of its hosts. The gate reads the observation only, so it holds in execution.
  `gate_on_activity` (an ablation) opens it only on this step's activity, not on a
  compromise flag the observation still remembers.
- The noise that acted is the noise replayed: collection stores each step's DRU
  noise with the episode, and the learner's unroll uses it, so the replayed soft
  messages agree with the bits that chose the recorded actions, masks and rewards.
- No loss term for the cost of messages by default: the reward charges the bits
  sent (`comm_penalty` adds the differentiable expected cost back, as an option).

Credit assignment (`mixer`, off by default, an ablation beyond the paper): as the
authors', every agent learns the team reward on its own Q-values. With `mixer` on,
the agents' chosen Q-values are mixed by QMIX's monotonic, state-conditioned mixer
(agents/qmix.py) and the TD error is Q_tot's, still back-propagated through the
messages; acting stays per agent, so a trained policy runs a range unchanged.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from cyberdial.agents.buffer import EpisodeBatch
from cyberdial.agents.dial_unroll import MessagePath
from cyberdial.agents.qlearning import (
    SparseRows,
    epsilon_greedy,
    greedy_actions,
    gru_sequence,
    q_of_actions,
    sparse_linear,
    td_target,
)
from cyberdial.agents.qmix import QMixer
from cyberdial.agents.training import Learner, TrainConfig
from cyberdial.range.model import ACTIVITY_BITS, HOST_BITS, GameModel

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the DRU


def dru(logits: torch.Tensor, sigma: float, training: bool,
        generator: torch.Generator | None = None, noise: torch.Tensor | None = None
        ) -> torch.Tensor:
    """Discretise/regularise unit: a noisy sigmoid in training, a hard threshold in execution.

    The noise pushes the sender to saturate its logits, so the soft message it is
    trained with and the bit it sends in execution agree.
    """
    if not training:
        return (logits > 0).to(logits.dtype)
    if noise is None:
        noise = torch.randn(logits.shape, generator=generator, dtype=logits.dtype)
    return torch.sigmoid(logits + sigma * noise)


# ------------------------------------------------------------------ the network


class DialNetwork(nn.Module):
    """One recurrent Q-network shared by every blue agent (agent-index embedding).

    Per agent and step, embeddings of the observation (without its message and
    last-action slices), the peers' previous messages, the agent's own previous
    action and its index are summed, pass a GRU, and a head gives Q-values over
    the agent's actions (padded to `max_actions`) and one logit per message bit.
    Agents have different observation sizes and action counts; observations are
    zero-padded to `max_obs` and padding actions are always masked.
    """

    # Index tables built from the layouts (buffers: they move and save with the weights).
    keep: torch.Tensor
    incoming_at: torch.Tensor
    action_at: torch.Tensor
    action_valid: torch.Tensor
    peers: torch.Tensor
    host_bit: torch.Tensor
    heard_at: torch.Tensor

    def __init__(self, model: GameModel, hidden: int = 128,
                 gate_on_activity: bool = False) -> None:
        super().__init__()
        n_agents, bits = model.n_agents, model.message_bits
        self.n_agents, self.message_bits, self.hidden_size = n_agents, bits, hidden
        self.max_actions = model.max_actions
        self.n_incoming = (n_agents - 1) * bits

        keep = torch.ones(n_agents, model.max_obs)
        host_bit = torch.zeros(n_agents, model.max_obs)
        incoming_at = torch.zeros(n_agents, max(self.n_incoming, 1), dtype=torch.long)
        action_at = torch.zeros(n_agents, model.max_actions, dtype=torch.long)
        action_valid = torch.zeros(n_agents, model.max_actions, dtype=torch.bool)
        for layout in model.agents:
            slices = layout.obs_slices()
            host_bit[layout.index, slices["hosts"]] = 1.0
            if gate_on_activity:  # each host's bits: activity first, then compromise
                at = torch.arange(slices["hosts"].start, slices["hosts"].stop)
                compromise = (at - slices["hosts"].start) % HOST_BITS >= ACTIVITY_BITS.shape[1]
                host_bit[layout.index, at[compromise]] = 0.0
            keep[layout.index, slices["messages"]] = 0.0
            keep[layout.index, slices["last_action"]] = 0.0
            if self.n_incoming:
                incoming_at[layout.index] = torch.arange(
                    slices["messages"].start, slices["messages"].stop
                )
            start = slices["last_action"].start
            action_at[layout.index, : layout.n_actions] = torch.arange(
                start, start + layout.n_actions
            )
            action_valid[layout.index, : layout.n_actions] = True
        # peers[a] lists the other agents in index order: the order of the observation's
        # message slice, so training and execution feed the same layout.
        peers = torch.tensor(
            [[p for p in range(n_agents) if p != a] for a in range(n_agents)], dtype=torch.long
        ).reshape(n_agents, n_agents - 1)
        self.register_buffer("keep", keep)
        self.register_buffer("incoming_at", incoming_at)
        self.register_buffer("action_at", action_at)
        self.register_buffer("action_valid", action_valid)
        self.register_buffer("peers", peers)
        self.register_buffer("host_bit", host_bit)
        # heard_at[sender·bits + k, receiver]: the column of the message embedding that
        # reads bit k of that sender, or n_incoming (a zero column) for the receiver itself.
        heard_at = torch.full((n_agents * bits, n_agents), self.n_incoming, dtype=torch.long)
        for receiver in range(n_agents):
            for slot, sender in enumerate(peers[receiver].tolist()):
                for k in range(bits):
                    heard_at[sender * bits + k, receiver] = slot * bits + k
        self.register_buffer("heard_at", heard_at, persistent=False)  # derived, not saved

        self.observation_embedding = nn.Linear(model.max_obs, hidden)
        self.message_embedding = nn.Linear(self.n_incoming, hidden) if self.n_incoming else None
        self.action_embedding = nn.Embedding(model.max_actions, hidden)
        self.agent_embedding = nn.Embedding(n_agents, hidden)
        self.rnn = nn.GRUCell(hidden, hidden)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, model.max_actions + bits)
        )

    def initial_hidden(self, batch: int) -> torch.Tensor:
        return self.keep.new_zeros(batch, self.n_agents, self.hidden_size)

    def incoming_from_observations(self, observations: torch.Tensor) -> torch.Tensor:
        """Peers' executed bits as the range delivers them: (B, A, (A-1)·bits)."""
        batch = observations.shape[0]
        if not self.n_incoming:
            return observations.new_zeros(batch, self.n_agents, 0)
        index = self.incoming_at.expand(batch, -1, -1)
        return observations.gather(2, index)

    def incoming_from_messages(self, messages: torch.Tensor) -> torch.Tensor:
        """Peers' messages (soft or hard) from everyone's (B, A, bits): (B, A, (A-1)·bits)."""
        batch = messages.shape[0]
        return messages[:, self.peers].reshape(batch, self.n_agents, self.n_incoming)

    def sees_activity(self, observations: torch.Tensor) -> torch.Tensor:
        """(B, A) whether any of an agent's own host bits is set: the message gate.

        As the authors' `get_comm_limited`: any 1 among the hosts' 4 bits (activity or
        compromise, "unknown" included); the blocked, message and last-action slices
        do not count. With `gate_on_activity` (an ablation) only the activity bits count.
        """
        # Observations are bits, so "any host bit set" is "their masked sum is positive"
        # (exact: a count). Multiply and sum: 4-7x faster than one product per agent
        # with its host-bit indicator (bmm with one column) on acting and replay batches.
        return (observations * self.host_bit).sum(dim=-1) > 0

    def previous_actions(self, observations: torch.Tensor) -> torch.Tensor:
        """Each agent's last action slot, decoded from its observation's one-hot: (B, A)."""
        index = self.action_at.expand(observations.shape[0], -1, -1)
        one_hot = observations.gather(2, index) * self.action_valid
        return one_hot.argmax(dim=2)

    def embed_inputs(self, observations: torch.Tensor,
                     previous_actions: torch.Tensor | None = None,
                     sparse: SparseRows | None = None) -> torch.Tensor:
        """The inputs that do not depend on messages, embedded: (..., A, max_obs) -> (..., A, H).

        Observation (without its message and last-action slices), own previous action
        (`previous_actions`, (..., A), decoded here if not given) and agent index.
        Leading dimensions are free, so the learner embeds whole episodes in one pass
        and only the messages are fed step by step. The observation's product reads
        only its 1s (`sparse_linear`; `sparse` is `SparseRows.of(observations)` when
        the caller has it).
        """
        lead = observations.shape[:-2]
        flat = observations.reshape(-1, self.n_agents, observations.shape[-1])
        if previous_actions is None:
            previous_actions = self.previous_actions(flat)
        # The message and last-action slices are dropped by `keep`, per agent.
        observed = sparse_linear(flat, self.observation_embedding.weight, keep=self.keep,
                                 sparse=sparse)
        embedded = (
            observed + self.observation_embedding.bias
            + self.action_embedding(previous_actions.reshape(-1, self.n_agents))
            + self.agent_embedding.weight
        )
        return embedded.reshape(*lead, self.n_agents, self.hidden_size)

    def recur(self, embedded: torch.Tensor, incoming: torch.Tensor,
              hidden: torch.Tensor) -> torch.Tensor:
        """One GRU step for all agents from embedded inputs and the peers' messages: (B, A, H)."""
        batch = embedded.shape[0]
        x = embedded
        if self.message_embedding is not None:
            x = x + self.message_embedding(incoming)
        x = torch.relu(x)
        return self.rnn(
            x.reshape(batch * self.n_agents, -1), hidden.reshape(batch * self.n_agents, -1)
        ).reshape(batch, self.n_agents, -1)

    def heard(self) -> torch.Tensor | None:
        """The message embedding's weight laid out per sender and receiver, (A·bits, A·H).

        `sent.reshape(B, A·bits) @ heard()` is every receiver's `message_embedding`
        product with its peers' messages (bias left out) in one product, without
        gathering each receiver's incoming messages first. None without messages.
        """
        if self.message_embedding is None:
            return None
        weight = self.message_embedding.weight  # (H, n_incoming)
        padded = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], dim=1)
        return padded.t()[self.heard_at].reshape(self.heard_at.shape[0], -1)

    def recur_silent(self, embedded: torch.Tensor) -> torch.Tensor:
        """GRU states over whole episodes when no peer ever speaks: (B, T, A, H).

        With every incoming message 0 the GRU's inputs do not depend on its outputs,
        so the sequence goes through torch's GRU in one call (the same weights and
        arithmetic as `recur` step by step, without a Python loop).
        """
        batch, steps = embedded.shape[:2]
        x = embedded
        if self.message_embedding is not None:
            x = x + self.message_embedding.bias
        x = torch.relu(x).permute(1, 0, 2, 3).reshape(steps, batch * self.n_agents, -1)
        return gru_sequence(self.rnn, x).reshape(steps, batch, self.n_agents, -1).permute(
            1, 0, 2, 3)

    def outputs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values (..., A, max_actions) and message logits (..., A, bits) from GRU states."""
        out = self.head(hidden)
        return out[..., : self.max_actions], out[..., self.max_actions :]

    def message_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Message logits (..., A, bits) and the head's hidden layer, to finish Q later.

        The head's last layer is split by rows: the learner needs the logits step by
        step (they feed the peers), the Q-values only once the episode is unrolled.
        """
        first, last = self._head_layers()
        features = torch.relu(first(hidden))
        logits = nn.functional.linear(features, last.weight[self.max_actions:],
                                      last.bias[self.max_actions:])
        return logits, features

    def q_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Q-values (..., A, max_actions) from the head's hidden layer (`message_logits`)."""
        last = self._head_layers()[1]
        return nn.functional.linear(features, last.weight[: self.max_actions],
                                    last.bias[: self.max_actions])

    def _head_layers(self) -> tuple[nn.Linear, nn.Linear]:
        return cast(nn.Linear, self.head[0]), cast(nn.Linear, self.head[2])

    def forward(
        self, observations: torch.Tensor, incoming: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step for all agents: (Q (B, A, max_actions), message logits (B, A, bits), hidden)."""
        hidden = self.recur(self.embed_inputs(observations), incoming, hidden)
        q, logits = self.outputs(hidden)
        return q, logits, hidden


# ------------------------------------------------------------------ execution


class DialPolicy:
    """The trained agents, greedy, as a `BatchPolicy`: works from (observations, masks) alone.

    Keeps each env's GRU state between calls within an episode; `reset(n_envs)`
    clears it. Incoming messages are read from the observation (what the range,
    simulated or emulated, delivered), and the bits sent are `logit > 0`, gated as
    in training (`gate`: 0 unless the sender's own hosts show something).
    """

    def __init__(self, network: DialNetwork, comm: bool, gate: bool = False,
                 analyse_slots: NDArray[np.bool_] | None = None) -> None:
        self.network = network
        self.comm = comm
        self.gate = gate
        # (A, max_actions) Analyse slots: a peer's 1 may unmask them (for `listener_changes`).
        self.device = network.keep.device
        self.analyse_slots = (
            torch.zeros(network.n_agents, network.max_actions, dtype=torch.bool)
            if analyse_slots is None else torch.as_tensor(analyse_slots)).to(self.device)
        self.hidden = network.initial_hidden(1)

    def reset(self, n_envs: int) -> None:
        self.hidden = self.network.initial_hidden(n_envs)

    def _incoming(self, obs: torch.Tensor) -> torch.Tensor:
        incoming = self.network.incoming_from_observations(obs)
        return incoming if self.comm else torch.zeros_like(incoming)

    @torch.no_grad()
    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        if self.hidden.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        q, logits, self.hidden = self.network(obs, self._incoming(obs), self.hidden)
        actions = greedy_actions(q, torch.as_tensor(masks, device=self.device) > 0)
        bits = dru(logits, 0.0, training=False) if self.comm else torch.zeros_like(logits)
        if self.gate:
            bits = bits * self.network.sees_activity(obs)[..., None]
        return (actions.cpu().numpy().astype(np.int64),
                bits.cpu().numpy().astype(np.uint8))

    @torch.no_grad()
    def listener_changes(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> NDArray[np.bool_]:
        """(B, receiver, sender): would the receiver's greedy action change if the bit it
        hears from that sender were flipped? Call before `act` on the same step.

        Interventional, on the policy's own GRU state: only the incoming bit differs.
        Both sides choose among the same actions, the union of the legal actions with
        and without the bit (a 1 from a peer may unmask Analyse), so what is counted
        is what the network does with the bit, not SAU's unmasking. Width 1 per peer
        (the first bit of each peer's message).
        """
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        n, agents = obs.shape[0], self.network.n_agents
        changes = np.zeros((n, agents, agents), dtype=bool)
        if not self.comm or self.hidden.shape[0] != n:
            return changes
        legal = torch.as_tensor(masks, device=self.device) > 0
        busy = legal.sum(dim=2) <= 1  # a busy agent may only continue (Sleep)
        union = legal | (self.analyse_slots[None] & ~busy[..., None])
        incoming = self._incoming(obs)
        q, _, _ = self.network(obs, incoming, self.hidden)
        factual = greedy_actions(q, union)
        bits = self.network.message_bits
        peers = self.network.peers.tolist()
        # Agents are separate rows of the network, so one pass per sender flips its bit
        # for every receiver at once.
        for sender in range(agents):
            flipped = incoming.clone()
            receivers = [r for r in range(agents) if r != sender]
            for receiver in receivers:
                column = peers[receiver].index(sender) * bits
                flipped[:, receiver, column] = 1.0 - flipped[:, receiver, column]
            q_flip, _, _ = self.network(obs, flipped, self.hidden)
            other = greedy_actions(q_flip, union)
            changes[:, receivers, sender] = (other != factual)[:, receivers].cpu().numpy()
        return changes


# ------------------------------------------------------------------ learning


@dataclass
class Unroll:
    """A network replayed over whole episodes, with messages flowing inside the learner.

    The Q-values are kept as the head's hidden layer: the loss reads one Q per agent and
    step (`q_of`), so the backward pass need not run through every action's output.
    """

    network: DialNetwork
    features: torch.Tensor  # (B, T+1, A, H) the head's hidden layer
    logits: torch.Tensor  # (B, T+1, A, bits) message logits
    messages: torch.Tensor  # (B, T+1, A, bits) DRU outputs fed to the peers next step
    # Zeros added to the logits when asked for (`unroll(probe_logits=True)`): its gradient
    # is the logits' gradient, which the fused message path does not otherwise expose.
    logit_probe: torch.Tensor | None

    @property
    def q(self) -> torch.Tensor:
        """Every action's Q-value, (B, T+1, A, max_actions)."""
        return self.network.q_from_features(self.features)

    def q_of(self, actions: torch.Tensor, steps: slice) -> torch.Tensor:
        """Q of `actions` (B, T', A) at those steps: `chosen_q(q[:, steps], actions)`."""
        return q_of_actions(self.features[:, steps], self.network._head_layers()[1], actions)


@dataclass
class LossTerms:
    td_error: torch.Tensor  # (B, T, A) per agent, or (B, T) of Q_tot with the mixer
    comm_cost: torch.Tensor  # scalar, the differentiable expected cost of bits sent
    unroll: Unroll
    loss: torch.Tensor


class DialLearner(Learner):
    """Double-Q recurrent Q-learning with differentiable messages (DIAL), SAU from the masks."""

    uses_messages = True
    acting_noise: NDArray[np.float32] | None = None
    # The last batch replayed and its decoded inputs (`_replay_inputs`).
    _replayed: tuple[EpisodeBatch, torch.device, torch.Tensor, torch.Tensor | None] | None = None

    def __init__(self, model: GameModel, config: TrainConfig) -> None:
        super().__init__(model, config)
        self.comm = not config.no_comm and model.message_bits > 0 and model.n_agents > 1
        self.gate = config.gate_messages
        self.network = DialNetwork(model, config.hidden,
                                   gate_on_activity=config.gate_on_activity).to(self.device)
        self.target = copy.deepcopy(self.network)
        self.target.requires_grad_(False)
        # Optional credit assignment: QMIX's mixer over the chosen Q-values and the state.
        self.mixer = QMixer(model.n_agents, model.state_size).to(self.device) if config.mixer \
            else None
        self.target_mixer = (copy.deepcopy(self.mixer).requires_grad_(False)
                             if self.mixer is not None else None)
        self.uses_state = self.mixer is not None
        self.trainable = list(self.network.parameters())
        if self.mixer is not None:
            self.trainable += list(self.mixer.parameters())
        self.optimiser = torch.optim.RMSprop(
            self.trainable, lr=config.lr, momentum=config.momentum
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.reset(1)

    # --------------------------------------------------------- behaviour

    def reset(self, n_envs: int) -> None:
        self.hidden = self.network.initial_hidden(n_envs)
        self.sent = torch.zeros(n_envs, self.model.n_agents, self.model.message_bits,
                                device=self.device)
        self.acting_noise = None

    def soft_messages(self, network: DialNetwork, logits: torch.Tensor,
                      observations: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The DRU's training messages, 0 (no gradient) from a gated sender that sees nothing."""
        if not self.comm:
            return torch.zeros_like(logits)
        soft = dru(logits, self.config.dru_sigma, training=True, noise=noise)
        if self.gate:
            soft = soft * network.sees_activity(observations)[..., None]
        return soft

    @torch.inference_mode()
    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8], epsilon: float
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        # Receivers hear the peers' noisy DRU outputs, as they will in the learner's replay.
        incoming = self.network.incoming_from_messages(self.sent)
        q, logits, self.hidden = self.network(obs, incoming, self.hidden)
        # Drawn on the CPU whatever the device, so a seed gives the same noise everywhere.
        noise = torch.randn(logits.shape, generator=self.generator, dtype=logits.dtype)
        self.acting_noise = noise.numpy()
        self.sent = self.soft_messages(self.network, logits, obs, noise.to(self.device))
        actions = epsilon_greedy(q, masks > 0, epsilon, self.rng)
        # The bits the range gets are the soft messages' (same noise): 1 iff m + σ·ε > 0.
        bits = (self.sent > 0.5).cpu().numpy().astype(np.uint8)
        return actions, bits

    # --------------------------------------------------------- learning

    def unroll(self, network: DialNetwork, batch: EpisodeBatch,
               probe_logits: bool = False) -> Unroll:
        """Replay whole episodes with the noise that acted; messages reach peers next step.

        What does not depend on messages (input embeddings, the gates, the noise) is
        computed for every step at once; only the messages' path is stepped, and the
        Q-values are finished over the whole episode after the loop. Without messages
        the GRU runs the sequence in one call. `probe_logits`: the unroll's
        `logit_probe` is a zero tensor added to the logits, so its gradient is theirs.
        """
        n, steps = batch.size, batch.steps
        previous_actions, gates = self._replay_inputs(network, batch)
        embedded = network.embed_inputs(batch.observations, previous_actions,
                                        batch.observation_rows())  # (B, T+1, A, H)
        if not self.comm:
            hidden_all = network.recur_silent(embedded)
            logits, features = network.message_logits(hidden_all)
            probe = torch.zeros_like(logits, requires_grad=True) if probe_logits else None
            if probe is not None:
                logits = logits + probe
            return Unroll(network, features, logits, torch.zeros_like(logits), probe)
        # The message path, stepped inside one autograd function with its backward
        # written out (agents/dial_unroll.py); time leads inside it.
        assert network.message_embedding is not None
        heard = network.heard()
        assert heard is not None
        inputs = (embedded + network.message_embedding.bias).transpose(0, 1).reshape(
            steps + 1, n, -1)
        noise = (self.config.dru_sigma * batch.noise).transpose(0, 1)
        step_gates = (gates[..., None].to(embedded.dtype).transpose(0, 1)
                      if gates is not None else None)
        first, last = network._head_layers()
        rnn = network.rnn
        actions = network.max_actions  # the head's rows after the Q-values are the messages'
        probe = (embedded.new_zeros(n, steps + 1, self.model.n_agents,
                                    self.model.message_bits, requires_grad=True)
                 if probe_logits else None)
        features, logits, messages = MessagePath.apply(
            inputs, noise, step_gates, heard, rnn.weight_ih, rnn.weight_hh, rnn.bias_ih,
            rnn.bias_hh, first.weight, first.bias, last.weight[actions:],
            last.bias[actions:],
            probe.transpose(0, 1) if probe is not None else None, torch.is_grad_enabled())
        return Unroll(network, features.transpose(0, 1), logits.transpose(0, 1),
                      messages.transpose(0, 1), probe)

    def _replay_inputs(self, network: DialNetwork, batch: EpisodeBatch
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Previous actions (B, T+1, A) and message gates (B, T+1, A) of a batch's steps.

        Read from the observations by index tables the online and target networks
        share, so the target's unroll of the same batch reuses the online one's.
        """
        cached = self._replayed
        if cached is not None and cached[0] is batch and cached[1] == network.keep.device:
            return cached[2], cached[3]
        with torch.no_grad():
            previous_actions = network.previous_actions(
                batch.observations.reshape(-1, *batch.observations.shape[2:])
            ).reshape(batch.observations.shape[:3])
            gates = (network.sees_activity(batch.observations) if self.comm and self.gate
                     else None)
        self._replayed = (batch, network.keep.device, previous_actions, gates)
        return previous_actions, gates

    def losses(self, batch: EpisodeBatch, probe_logits: bool = False) -> LossTerms:
        """Double-Q TD errors on the team reward, through the messages: per agent, or of
        Q_tot with the mixer. `probe_logits`: see `unroll`."""
        config = self.config
        online = self.unroll(self.network, batch, probe_logits)
        with torch.no_grad():
            # Same noise for the target network: its messages differ from the online
            # network's only by its (older) weights. Double Q: the online network's best
            # legal next action, valued by the target.
            target = self.unroll(self.target, batch)
            best_next = greedy_actions(
                self.network.q_from_features(online.features[:, 1:]), batch.masks[:, 1:])
            next_value = target.q_of(best_next, slice(1, None))
        taken = online.q_of(batch.actions, slice(None, -1))  # (B, T, A)
        if self.mixer is not None and self.target_mixer is not None:
            taken = self.mixer.mix_steps(taken, batch, next_steps=False)  # Q_tot (B, T)
            with torch.no_grad():
                next_value = self.target_mixer.mix_steps(next_value, batch, next_steps=True)
        target = td_target(batch.rewards * config.reward_scale, next_value, config.gamma)
        td_error = taken - target
        # Optional: the reward charges the executed bits, but that charge has no gradient;
        # the expected cost of the soft messages gives senders a reason to stay silent.
        comm_cost = (
            self.model.scenario.blue.comm_cost * config.reward_scale
            * online.messages[:, :-1].sum(dim=3).mean()
        )
        loss = td_error.pow(2).mean()
        if config.comm_penalty:
            loss = loss + config.comm_penalty * comm_cost
        return LossTerms(td_error=td_error, comm_cost=comm_cost, unroll=online, loss=loss)

    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        terms = self.losses(batch)
        self.optimiser.zero_grad()
        terms.loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimiser.step()
        messages = terms.unroll.messages.detach()
        logits = terms.unroll.logits.detach()
        saturated = ((messages - 0.5).abs() > 0.4).float().mean() if self.comm else messages.sum()
        return {
            "losses/td_loss": float(terms.td_error.detach().pow(2).mean()),
            "losses/q_values": float(terms.unroll.q_of(batch.actions, slice(None, -1))
                                     .detach().mean()),
            "losses/grad_norm": float(grad_norm),
            "losses/comm_cost": float(terms.comm_cost.detach()),
            "comm/message_mean": float(messages.mean()),
            "comm/logit_mean": float(logits.mean()),
            "comm/saturated_fraction": float(saturated),
        }

    def random_state(self) -> dict[str, Any]:
        return {**super().random_state(), "dru_noise": self.generator.get_state()}

    def set_random_state(self, state: dict[str, Any]) -> None:
        super().set_random_state(state)
        if "dru_noise" in state:
            self.generator.set_state(state["dru_noise"])

    def update_target(self) -> None:
        self.target.load_state_dict(self.network.state_dict())
        if self.mixer is not None and self.target_mixer is not None:
            self.target_mixer.load_state_dict(self.mixer.state_dict())

    # --------------------------------------------------------- policy and state

    def greedy_policy(self) -> DialPolicy:
        return DialPolicy(self.network, self.comm, gate=self.gate,
                          analyse_slots=self._listener_analyse_slots())

    def _listener_analyse_slots(self) -> NDArray[np.bool_]:
        blue = self.model.scenario.blue
        if blue.sau and blue.limit_analyse:
            return self.model.slot_analyse
        return np.zeros_like(self.model.slot_analyse)

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
        network = dict(state["network"])
        # Checkpoints from before the message gate lack its index table; it is derived
        # from the layout (checked against the checkpoint's), not learned.
        for name in ("host_bit",):
            network.setdefault(name, getattr(self.network, name))
        self.network.load_state_dict(network)
        target = dict(state.get("target", state["network"]))
        target.setdefault("host_bit", self.network.host_bit)
        self.target.load_state_dict(target)
        if self.mixer is not None and self.target_mixer is not None:
            self.mixer.load_state_dict(state["mixer"])
            self.target_mixer.load_state_dict(state.get("target_mixer", state["mixer"]))
        if "optimiser" in state:
            self.optimiser.load_state_dict(state["optimiser"])
