"""The game model: the one definition of the game that the simulator and emulator share.

Host states, the red kill chain and its choice rule, green behaviour terms, the
observation encoding, the blue action catalogue with durations, message bits,
strategic action unmasking (SAU) and the reward. `SimRange` implements these
dynamics; the emulator measures them on real hosts. Everything is vectorised
over a leading batch axis B so one code path serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from functools import cached_property
from types import SimpleNamespace

import numpy as np
from numpy.typing import NDArray

from cyberdial.range.scenario import HOST_VALUES, Scenario


class Compromise(IntEnum):
    """Red's true foothold on a host."""

    CLEAN = 0
    USER = 1
    PRIVILEGED = 2


class Activity(IntEnum):
    """What a host sensor saw this step."""

    NONE = 0
    SCAN = 1
    EXPLOIT = 2


class Observed(IntEnum):
    """What blue knows of a host's compromise (revealed by Analyse)."""

    NONE = 0
    USER = 1
    PRIVILEGED = 2
    UNKNOWN = 3


# CybORG's BlueTable bits: activity none 00 / scan 10 / exploit 11;
# compromise none 00 / user 01 / privileged 11 / unknown 10.
ACTIVITY_BITS = np.array([[0, 0], [1, 0], [1, 1]], dtype=np.float32)
COMPROMISE_BITS = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float32)
HOST_BITS = 4
# A host's four bits by `activity * 4 + observed`: one lookup per host instead of two.
HOST_BITS_BY_CODE = np.concatenate(
    [np.repeat(ACTIVITY_BITS, len(COMPROMISE_BITS), axis=0),
     np.tile(COMPROMISE_BITS, (len(ACTIVITY_BITS), 1))], axis=1)
# The reward's terms, each a cost >= 0 per step; the reward is minus their sum.
REWARD_TERMS = ("privileged", "impact", "green", "restore", "comm", "actions")


class ActionKind(IntEnum):
    SLEEP = 0
    ANALYSE = 1
    REMOVE = 2
    RESTORE = 3
    BLOCK = 4
    UNBLOCK = 5
    DECOY = 6


HOST_ACTION_KINDS = (ActionKind.ANALYSE, ActionKind.REMOVE, ActionKind.RESTORE, ActionKind.DECOY)
SUBNET_ACTION_KINDS = (ActionKind.BLOCK, ActionKind.UNBLOCK)
_KIND_BY_NAME = {kind.name.lower(): kind for kind in ActionKind}


class RedActionKind(IntEnum):
    NONE = 0
    SWEEP = 1
    SCAN = 2
    EXPLOIT = 3
    ESCALATE = 4
    IMPACT = 5


def plain_values(kinds: type[IntEnum]) -> SimpleNamespace:
    """An IntEnum's members as plain ints (`plain_values(Activity).SCAN == 1`).

    For numpy expressions on the step's hot paths: numpy looks for array hooks on an
    operand's class, and on an enum class (Python 3.11) each failed lookup runs the
    class's Python `__getattr__`, so `array == Activity.SCAN` costs about 3 µs against
    0.5 µs for `array == 1`, and a batched step makes dozens of them.
    """
    return SimpleNamespace(**{member.name: int(member) for member in kinds})


COMPROMISE = plain_values(Compromise)
ACTIVITY = plain_values(Activity)
OBSERVED = plain_values(Observed)
ACTION = plain_values(ActionKind)
RED = plain_values(RedActionKind)


class AlertKind(StrEnum):
    """Typed alerts a real sensor raises; the first two feed the activity bits."""

    SCAN = "scan"
    EXPLOIT = "exploit"
    NEW_PROCESS = "new_process"
    FILE_CHANGE = "file_change"
    SERVICE_DOWN = "service_down"
    DECOY_TOUCHED = "decoy_touched"


# How each alert kind reads in the activity bits (the rest are evidence for Analyse).
ALERT_ACTIVITY: dict[AlertKind, Activity] = {
    AlertKind.SCAN: Activity.SCAN,
    AlertKind.EXPLOIT: Activity.EXPLOIT,
    AlertKind.DECOY_TOUCHED: Activity.EXPLOIT,
}

# The bline red's preference: a score per class, plus bonuses towards its targets.
RED_CLASS_SCORE = {
    RedActionKind.IMPACT: 6.0,
    RedActionKind.ESCALATE: 4.0,
    RedActionKind.EXPLOIT: 3.0,
    RedActionKind.SCAN: 2.0,
    RedActionKind.SWEEP: 1.0,
}
# The bonuses outweigh the class scores, so a bline red heads for its targets
# (sweep the next subnet on the path before scanning every host of this one).
RED_TARGET_HOST_BONUS = 10.0
RED_TARGET_SUBNET_BONUS = 6.0
RED_PATH_SUBNET_BONUS = 3.0
RED_NOISE = 0.5
# The order of red's candidate slots in `red_choose`: four per host, then one per subnet.
RED_SLOT_KINDS = np.array([RedActionKind.IMPACT, RedActionKind.ESCALATE, RedActionKind.EXPLOIT,
                           RedActionKind.SCAN, RedActionKind.SWEEP], dtype=np.int64)


@dataclass(frozen=True)
class BlueAction:
    kind: ActionKind
    host: str | None = None
    subnet: str | None = None

    @property
    def label(self) -> str:
        target = self.host or self.subnet
        return self.kind.name.lower() + (f" {target}" if target else "")


@dataclass(frozen=True)
class AgentLayout:
    """One blue agent's slice of the game: what it sees and what it can do."""

    name: str
    index: int
    hosts: tuple[int, ...]
    subnets: tuple[int, ...]
    actions: tuple[BlueAction, ...]
    n_peers: int
    message_bits: int

    @property
    def n_actions(self) -> int:
        return len(self.actions)

    @property
    def obs_size(self) -> int:
        return (
            HOST_BITS * len(self.hosts)
            + len(self.subnets)
            + self.n_peers * self.message_bits
            + self.n_actions
        )

    def obs_slices(self) -> dict[str, slice]:
        """Where each part of the observation vector lies."""
        h = HOST_BITS * len(self.hosts)
        s = h + len(self.subnets)
        m = s + self.n_peers * self.message_bits
        return {
            "hosts": slice(0, h),
            "blocked": slice(h, s),
            "messages": slice(s, m),
            "last_action": slice(m, m + self.n_actions),
        }


class GameModel:
    """The game derived from one scenario: layouts, tables and the vectorised rules."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        hosts = scenario.all_hosts
        self.n_hosts = len(hosts)
        self.n_subnets = len(scenario.subnets)
        self.message_bits = scenario.blue.message_bits
        self.agent_names = tuple(agent.name for agent in scenario.blue.agents)
        self.n_agents = len(self.agent_names)
        # (1, A): indexes a (B, A) array of slots per agent by broadcasting.
        self.agent_row = np.arange(self.n_agents)[None, :]

        self.host_subnet = np.array(
            [scenario.subnet_index[h.subnet] for h in hosts], dtype=np.int64
        )
        self.host_value = np.array(
            [scenario.reward.values.get(h.value, HOST_VALUES[h.value]) for h in hosts],
            dtype=np.float32,
        )
        self.host_mission = np.array([h.mission for h in hosts], dtype=bool)
        self.host_vulnerable = np.array([h.vulnerable for h in hosts], dtype=bool)
        self.host_user = np.array([h.user for h in hosts], dtype=bool)
        self.subnet_onehot = np.zeros((self.n_hosts, self.n_subnets), dtype=np.float32)
        self.subnet_onehot[np.arange(self.n_hosts), self.host_subnet] = 1.0
        self.flows = np.zeros((self.n_subnets, self.n_subnets), dtype=np.float32)
        for i, subnet in enumerate(scenario.subnets):
            for flow in subnet.flows:
                self.flows[i, scenario.subnet_index[flow]] = 1.0
        np.fill_diagonal(self.flows, 0.0)
        self.entry_host = scenario.host_index[scenario.red.entry]

        self.agents = tuple(self._layout(index) for index in range(self.n_agents))
        self.max_actions = max(agent.n_actions for agent in self.agents)
        self.max_obs = max(agent.obs_size for agent in self.agents)
        self._build_action_tables()
        self._build_gather_index()
        self._build_red_preferences()

    # ------------------------------------------------------------------ layouts

    def _layout(self, index: int) -> AgentLayout:
        scenario = self.scenario
        agent = scenario.blue.agents[index]
        subnet_ids = tuple(scenario.subnet_index[name] for name in agent.subnets)
        host_ids = tuple(h.index for h in scenario.all_hosts if h.subnet in agent.subnets)
        kinds = [_KIND_BY_NAME[name] for name in scenario.blue.actions]
        actions: list[BlueAction] = [BlueAction(ActionKind.SLEEP)]
        for host_id in host_ids:
            host = scenario.all_hosts[host_id]
            actions.extend(BlueAction(k, host=host.name) for k in HOST_ACTION_KINDS if k in kinds)
        for subnet_id in subnet_ids:
            name = scenario.subnets[subnet_id].name
            actions.extend(BlueAction(k, subnet=name) for k in SUBNET_ACTION_KINDS if k in kinds)
        return AgentLayout(
            name=agent.name,
            index=index,
            hosts=host_ids,
            subnets=subnet_ids,
            actions=tuple(actions),
            n_peers=self.n_agents - 1,
            message_bits=self.message_bits,
        )

    def _build_action_tables(self) -> None:
        shape = (self.n_agents, self.max_actions)
        durations = self.scenario.blue.durations
        self.action_kind = np.zeros(shape, dtype=np.int64)
        self.action_host = np.zeros(shape, dtype=np.int64)
        self.action_subnet = np.zeros(shape, dtype=np.int64)
        self.action_duration = np.ones(shape, dtype=np.int64)
        self.action_valid = np.zeros(shape, dtype=bool)
        for agent in self.agents:
            for slot, action in enumerate(agent.actions):
                self.action_kind[agent.index, slot] = action.kind
                self.action_valid[agent.index, slot] = True
                if action.host is not None:
                    self.action_host[agent.index, slot] = self.scenario.host_index[action.host]
                if action.subnet is not None:
                    self.action_subnet[agent.index, slot] = self.scenario.subnet_index[
                        action.subnet
                    ]
                self.action_duration[agent.index, slot] = getattr(
                    durations, action.kind.name.lower()
                )
        kind = self.action_kind
        self.slot_always = self.action_valid & np.isin(
            kind, [ActionKind.SLEEP, ActionKind.BLOCK, ActionKind.UNBLOCK]
        )
        self.slot_host_action = self.action_valid & np.isin(
            kind, [ActionKind.REMOVE, ActionKind.RESTORE, ActionKind.DECOY]
        )
        self.slot_analyse = self.action_valid & (kind == ActionKind.ANALYSE)

    def _build_gather_index(self) -> None:
        """Precompute one gather that builds every agent's observation from a flat vector.

        Flat per-env features: [host bits H*4 | blocked S | messages A*bits |
        last-action one-hots (sum of n_actions) | constant 0 for padding].
        """
        h4 = self.n_hosts * HOST_BITS
        messages_at = h4 + self.n_subnets
        last_at = messages_at + self.n_agents * self.message_bits
        self.last_action_offset = np.zeros(self.n_agents, dtype=np.int64)
        offset = last_at
        for agent in self.agents:
            self.last_action_offset[agent.index] = offset
            offset += agent.n_actions
        self.n_features = offset + 1
        zero = offset
        gather = np.full((self.n_agents, self.max_obs), zero, dtype=np.int64)
        for agent in self.agents:
            parts: list[int] = []
            for host in agent.hosts:
                parts.extend(range(host * HOST_BITS, host * HOST_BITS + HOST_BITS))
            parts.extend(h4 + s for s in agent.subnets)
            for peer in range(self.n_agents):
                if peer != agent.index:
                    base = messages_at + peer * self.message_bits
                    parts.extend(range(base, base + self.message_bits))
            base = int(self.last_action_offset[agent.index])
            parts.extend(range(base, base + agent.n_actions))
            gather[agent.index, : len(parts)] = parts
        self.gather_index = gather
        self.messages_at = messages_at

    def _build_red_preferences(self) -> None:
        scenario = self.scenario
        self.red_host_bonus = np.zeros(self.n_hosts, dtype=np.float32)
        self.red_subnet_bonus = np.zeros(self.n_subnets, dtype=np.float32)
        if scenario.red.strategy != "bline":
            return
        target_subnets = set()
        for name in scenario.red.targets:
            host = scenario.host(name)
            self.red_host_bonus[host.index] += RED_TARGET_HOST_BONUS
            target_subnets.add(scenario.subnet_index[host.subnet])
        for s in range(self.n_subnets):
            if s in target_subnets:
                self.red_subnet_bonus[s] = RED_TARGET_SUBNET_BONUS
            elif any(self.flows[s, t] for t in target_subnets):
                self.red_subnet_bonus[s] = RED_PATH_SUBNET_BONUS
        self.red_host_bonus += self.red_subnet_bonus[self.host_subnet]
        # Each class's score plus the bonus, per target: (4, H) for the host classes in
        # RED_SLOT_KINDS' order, (S,) for sweeps; `red_choose` adds the noise.
        self.red_host_scores = np.stack([RED_CLASS_SCORE[kind] + self.red_host_bonus
                                         for kind in RED_SLOT_KINDS[:4]])
        self.red_sweep_scores = RED_CLASS_SCORE[RED.SWEEP] + self.red_subnet_bonus

    # --------------------------------------------------------- observations

    def encode_observations(
        self,
        activity: NDArray[np.int8],
        observed: NDArray[np.int8],
        blocked: NDArray[np.bool_],
        messages: NDArray[np.uint8],
        last_action: NDArray[np.int64],
    ) -> NDArray[np.float32]:
        """Every agent's observation vector, shape (B, A, max_obs), zero-padded.

        activity, observed: (B, H); blocked: (B, S); messages: (B, A, bits) sent
        last step; last_action: (B, A) slot index of each agent's last action.
        """
        batch = activity.shape[0]
        features = np.zeros((batch, self.n_features), dtype=np.float32)
        h4 = self.n_hosts * HOST_BITS
        # `take` and a 2-D copy: an order of magnitude faster than fancy-indexed 3-D writes.
        code = activity.astype(np.intp) * len(COMPROMISE_BITS) + observed
        features[:, :h4] = HOST_BITS_BY_CODE.take(code, axis=0).reshape(batch, h4)
        features[:, h4 : h4 + self.n_subnets] = blocked
        features[:, self.messages_at : self.messages_at + self.n_agents * self.message_bits] = (
            messages.reshape(batch, -1)
        )
        features[np.arange(batch)[:, None], self.last_action_offset[None, :] + last_action] = 1.0
        return features[:, self.gather_index]

    def host_bits_of(self, observation: NDArray[np.float32], agent: int) -> NDArray[np.float32]:
        """The (n_hosts_of_agent, 4) host bits inside one agent's observation vector."""
        layout = self.agents[agent]
        return observation[..., : HOST_BITS * len(layout.hosts)].reshape(
            *observation.shape[:-1], len(layout.hosts), HOST_BITS
        )

    # ------------------------------------------------------------------- SAU

    def action_masks(
        self,
        activity: NDArray[np.int8],
        observed: NDArray[np.int8],
        messages: NDArray[np.uint8],
        busy: NDArray[np.bool_],
    ) -> NDArray[np.int8]:
        """Legal actions (B, A, max_actions) under strategic action unmasking.

        As the paper's code: Sleep and Block/Unblock always; a host action when the
        host's four bits show more than a bare scan; Analyse also when a peer sent
        a 1 last step (with `limit_analyse`, else always). An agent still busy with
        a multi-step action may only Sleep (continue).
        """
        blue = self.scenario.blue
        batch = activity.shape[0]
        if not blue.sau:
            mask = np.broadcast_to(self.action_valid, (batch, *self.action_valid.shape)).copy()
        else:
            # Bits with more than one set, or one set that is not the first activity bit:
            # anything except "none" and a bare scan (activity 10, compromise 00).
            shows = ~((observed == OBSERVED.NONE) & (activity <= ACTIVITY.SCAN))
            host_shows = shows[:, self.action_host]  # (B, A, max_actions)
            mask = self.slot_always | (self.slot_host_action & host_shows)
            if blue.limit_analyse:
                sent_any = messages.reshape(batch, self.n_agents, -1).max(axis=2) > 0
                peer_signal = (sent_any.sum(axis=1, keepdims=True) - sent_any) > 0  # (B, A)
                mask = mask | (self.slot_analyse & (host_shows | peer_signal[:, :, None]))
            else:
                mask = mask | self.slot_analyse
        if busy.any():
            mask[busy] = False
            mask[busy, 0] = True
        return mask.astype(np.int8)

    # ---------------------------------------------------------------- reward

    def action_costs(
        self,
        finished: NDArray[np.bool_],
        slots: NDArray[np.int64],
        compromise: NDArray[np.int8],
        observed: NDArray[np.int8],
        blocked: NDArray[np.bool_],
    ) -> NDArray[np.float32]:
        """Per-env cost (B,) of the blue actions that finish now and were wasted.

        finished, slots: (B, A) which agents' actions finish this step, and their
        slots; compromise, observed (B, H) and blocked (B, S) as they stand *before*
        the actions take effect. After the authors' CybORG (Analyse 1.5 unless it
        finds red not yet known, Remove 0.5 unless it removes red, Block 2 unless a
        peer's Analyse finds red privileged in the same step, Unblock 1 unless the
        subnet was blocked); the amounts are the scenario's `reward.actions`.
        """
        costs = self.scenario.reward.actions
        batch = finished.shape[0]
        total = np.zeros(batch, dtype=np.float32)
        if not (costs.analyse or costs.remove or costs.block or costs.unblock):
            return total
        agents = self.agent_row
        kind = np.where(finished, self.action_kind[agents, slots], ACTION.SLEEP)
        envs = np.arange(batch)[:, None]
        host = self.action_host[agents, slots]
        truth = compromise[envs, host]
        belief = observed[envs, host]
        analyse = kind == ACTION.ANALYSE
        finds_new = (truth > COMPROMISE.CLEAN) & (belief != truth)
        finds_privileged = analyse & (truth == COMPROMISE.PRIVILEGED)
        # A peer's Analyse that finds red privileged this step (not the agent's own).
        peer_finds = (finds_privileged.sum(axis=1, keepdims=True) - finds_privileged) > 0
        subnet_blocked = blocked[envs, self.action_subnet[agents, slots]]
        wasted = (
            costs.analyse * (analyse & ~finds_new)
            + costs.remove * ((kind == ACTION.REMOVE) & (truth != COMPROMISE.USER))
            + costs.block * ((kind == ACTION.BLOCK) & ~peer_finds)
            + costs.unblock * ((kind == ACTION.UNBLOCK) & ~subnet_blocked)
        )
        total += wasted.sum(axis=1).astype(np.float32)
        return total

    def reward_terms(
        self,
        compromise: NDArray[np.int8],
        impacted: NDArray[np.bool_],
        green_failures: NDArray[np.int64],
        restores: NDArray[np.int64],
        bits_sent: NDArray[np.int64],
        actions: NDArray[np.float32] | None = None,
    ) -> dict[str, NDArray[np.float32]]:
        """Per-env reward terms (each a cost >= 0) and their negated sum, `total`.

        `actions` is `action_costs(...)` of the step (0 when not given).
        """
        weights = self.scenario.reward
        privileged = (compromise == COMPROMISE.PRIVILEGED).astype(np.float32) @ self.host_value
        terms = {
            "privileged": privileged.astype(np.float32),
            "impact": (impacted.sum(axis=1) * weights.impact).astype(np.float32),
            "green": (green_failures * weights.green_failure).astype(np.float32),
            "restore": (restores * weights.restore).astype(np.float32),
            "comm": (bits_sent * self.scenario.blue.comm_cost).astype(np.float32),
            "actions": (np.zeros(compromise.shape[0], dtype=np.float32) if actions is None
                        else np.asarray(actions, dtype=np.float32)),
        }
        # The terms added in order, as a sum over a stack of them would (float32).
        total = terms["privileged"].copy()
        for name in ("impact", "green", "restore", "comm", "actions"):
            total += terms[name]
        terms["total"] = -total
        return terms

    # -------------------------------------------------------------- red rule

    def red_reach(
        self, compromise: NDArray[np.int8], blocked: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """(B, S): subnets red can send to, from its footholds, past blue's blocks."""
        footholds = ((compromise > 0).astype(np.float32) @ self.subnet_onehot) > 0
        onward = ((footholds.astype(np.float32) @ self.flows) > 0) & ~blocked
        return footholds | onward

    def red_choose(
        self,
        compromise: NDArray[np.int8],
        impacted: NDArray[np.bool_],
        discovered: NDArray[np.bool_],
        scanned: NDArray[np.bool_],
        swept: NDArray[np.bool_],
        blocked: NDArray[np.bool_],
        noise: NDArray[np.float32],
        reach: NDArray[np.bool_] | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Red's next kill-chain step per env: (kind, target host or subnet index).

        Highest score wins: impact > escalate > exploit > scan > sweep, with a bline
        red drawn towards its targets; `noise` (B, 4H + S) in [0, 1) breaks ties.
        """
        batch, n = compromise.shape[0], self.n_hosts
        if reach is None:
            reach = self.red_reach(compromise, blocked)
        host_reach = reach[:, self.host_subnet]
        clean = compromise == COMPROMISE.CLEAN
        # (B, 4, H): where each host-targeted class is possible, in RED_SLOT_KINDS' order.
        allowed = np.stack([
            (compromise == COMPROMISE.PRIVILEGED) & self.host_mission & ~impacted,
            compromise == COMPROMISE.USER,
            scanned & host_reach & clean & self.host_vulnerable,
            discovered & host_reach & ~scanned & clean,
        ], axis=1)
        part = self.red_host_scores + RED_NOISE * noise[:, : 4 * n].reshape(batch, 4, n)
        sweep_score = self.red_sweep_scores + RED_NOISE * noise[:, 4 * n :]
        scores = np.concatenate([np.where(allowed, part, -np.inf).reshape(batch, 4 * n),
                                 np.where(reach & ~swept, sweep_score, -np.inf)], axis=1)
        best = scores.argmax(axis=1)
        none = ~np.isfinite(scores[np.arange(batch), best])
        slot = best // n
        kinds = RED_SLOT_KINDS[np.minimum(slot, 4)]
        target = np.where(slot < 4, best % n, best - 4 * n)
        kinds[none] = RED.NONE
        target[none] = 0
        return kinds, target

    # -------------------------------------------------------------- layout

    @cached_property
    def state_size(self) -> int:
        # per host: compromise one-hot (3), impacted, decoy, down, activity (2), observed (2)
        return self.n_hosts * 10 + self.n_subnets + self.n_agents * self.message_bits + 1

    def layout_signature(self) -> dict[str, object]:
        """What a checkpoint must match to be used on this game."""
        return {
            "scenario": self.scenario.name,
            "scenario_hash": self.scenario.scenario_hash,
            "agents": [
                {
                    "name": agent.name,
                    "obs_size": agent.obs_size,
                    "actions": [action.label for action in agent.actions],
                }
                for agent in self.agents
            ],
            "message_bits": self.message_bits,
            "state_size": self.state_size,
        }
