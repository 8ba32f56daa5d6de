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
from typing import NamedTuple

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


class FinishedActions(NamedTuple):
    """The blue actions that take effect in a step, each (B, A): their kind (SLEEP where
    none finishes), target host and subnet, and those targets' flat indexes into (B, H)
    and (B, S) arrays (`GameModel.finished_actions`)."""

    kind: NDArray[np.int64]
    host: NDArray[np.int64]
    subnet: NDArray[np.int64]
    host_cell: NDArray[np.int64]
    subnet_cell: NDArray[np.int64]


def strided_runs(dst: NDArray[np.int64], src: NDArray[np.int64]) -> list[tuple[slice, slice]]:
    """Split index pairs into runs that each copy as one slice assignment.

    `dst` ascending; a run is a stretch where `dst` steps by one constant and `src` by 1,
    so `out[..., d] = in_[..., s]` for each `(d, s)` does `out[..., dst] = in_[..., src]`
    in a few block copies instead of one gather of every element.
    """
    runs: list[tuple[slice, slice]] = []
    i, n = 0, len(dst)
    while i < n:
        step = int(dst[i + 1] - dst[i]) if i + 1 < n else 1
        j = i + 1
        while j < n and dst[j] - dst[j - 1] == step and src[j] - src[j - 1] == 1:
            j += 1
        if j == i + 1:
            step = 1
        runs.append((slice(int(dst[i]), int(dst[j - 1]) + 1, step),
                     slice(int(src[i]), int(src[j - 1]) + 1)))
        i = j
    return runs


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
        self._flows_bool = self.flows > 0
        self._row_starts_cache: dict[tuple[int, int], NDArray[np.intp]] = {}
        self.entry_host = scenario.host_index[scenario.red.entry]

        self.agents = tuple(self._layout(index) for index in range(self.n_agents))
        self.max_actions = max(agent.n_actions for agent in self.agents)
        self.max_obs = max(agent.obs_size for agent in self.agents)
        self._build_action_tables()
        self._build_gather_index()
        self._build_red_preferences()
        self._build_red_slots()

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
        # Slot s of agent a is column a * max_actions + s of these: one `take` finds the
        # kind, host and subnet of every agent's slot (`finished_actions`).
        self.slot_offset = np.arange(self.n_agents) * self.max_actions
        self.action_facts = np.stack([kind, self.action_host, self.action_subnet]).reshape(3, -1)
        costs = self.scenario.reward.actions
        self.waste_cost = np.zeros(len(ActionKind), dtype=np.float64)
        self.waste_cost[[ActionKind.ANALYSE, ActionKind.REMOVE, ActionKind.BLOCK,
                         ActionKind.UNBLOCK]] = (costs.analyse, costs.remove, costs.block,
                                                 costs.unblock)
        self.any_waste_cost = bool(self.waste_cost.any())
        # (A, A): agent j is agent a's peer when j != a.
        self.peers = ~np.eye(self.n_agents, dtype=bool)
        self._build_mask_plan()

    def _build_mask_plan(self) -> None:
        """`action_masks`' copy plan: each agent's host-action slots of one kind lie at a
        fixed stride (host-major layout), so a run of consecutive hosts is one strided slice.

        The mask starts from `mask_base` (Sleep and Block/Unblock, and Analyse where
        `limit_analyse` is off); each run `(agent, slots, hosts, analyse)` then copies the
        hosts' "shows" bits, or'ed with the agent's peer signal for a limited Analyse.
        """
        limit = self.scenario.blue.limit_analyse
        base = self.slot_always | (self.slot_analyse if not limit else False)
        self.mask_base = base.astype(np.int8)
        self.mask_plan: list[tuple[int, slice, slice, bool]] = []
        for agent in range(self.n_agents):
            for kind in HOST_ACTION_KINDS:
                if kind == ActionKind.ANALYSE and not limit:
                    continue
                slots = np.flatnonzero(self.action_valid[agent] & (self.action_kind[agent] == kind))
                hosts = self.action_host[agent, slots]
                for dst, src in strided_runs(slots, hosts):
                    self.mask_plan.append((agent, dst, src, kind == ActionKind.ANALYSE))
        # (A * bits, A): bit k of agent j's message counts for agent a when j != a.
        self.peer_bits = np.repeat(self.peers, self.message_bits, axis=0)

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
        # The gather as block copies (an agent's hosts, subnets and peers' messages are
        # runs of consecutive features): a few slice copies per agent cost a fraction of
        # gathering every element, most on a large scenario. Each run reads the host bits
        # (source 0) or the blocked and message bits after them (source 1, from h4 on), so
        # neither is copied into one vector first. The last-action one-hot is set in the
        # observations directly, at `last_action_at` + slot of the flat (A, max_obs).
        self.gather_plan: list[tuple[int, slice, slice, int]] = []
        for agent in self.agents:
            size = agent.obs_size - agent.n_actions
            index = gather[agent.index, :size]
            hosts = index < h4
            for source, part in ((0, hosts), (1, ~hosts)):
                at = np.flatnonzero(part)
                for dst, src in strided_runs(at, index[at] - source * h4):
                    self.gather_plan.append((agent.index, dst, src, source))
        self.last_action_at = np.array(
            [agent.index * self.max_obs + agent.obs_slices()["last_action"].start
             for agent in self.agents], dtype=np.int64)

    def _build_red_preferences(self) -> None:
        scenario = self.scenario
        self.red_host_bonus = np.zeros(self.n_hosts, dtype=np.float32)
        self.red_subnet_bonus = np.zeros(self.n_subnets, dtype=np.float32)
        if scenario.red.strategy == "bline":  # a meandering red gets the class scores alone
            self._add_red_target_bonuses()
        # Each class's score plus the bonus, per target: (4, H) for the host classes in
        # RED_SLOT_KINDS' order, (S,) for sweeps; `red_choose` adds the noise.
        self.red_host_scores = np.stack([RED_CLASS_SCORE[kind] + self.red_host_bonus
                                         for kind in RED_SLOT_KINDS[:4]])
        self.red_sweep_scores = RED_CLASS_SCORE[RED.SWEEP] + self.red_subnet_bonus
        # The same scores as one row over red's slots (`red_pick`).
        self.red_slot_scores = np.concatenate([self.red_host_scores.ravel(),
                                               self.red_sweep_scores])
        # `red_pick` zeroes the slots red cannot take, so a possible one must score above 0.
        assert (self.red_slot_scores > 0).all()

    def _add_red_target_bonuses(self) -> None:
        """A bline red's bonuses towards its targets' hosts and subnets and the path there."""
        scenario = self.scenario
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

    def _build_red_slots(self) -> None:
        """Red's candidate slots as `red_allowed` lays them out: first "none", then four per
        host in RED_SLOT_KINDS' order, then one sweep per subnet; each slot's kind and target."""
        n, s = self.n_hosts, self.n_subnets
        self.red_slot_kind = np.concatenate([[RED.NONE], np.repeat(RED_SLOT_KINDS[:4], n),
                                             np.full(s, RED.SWEEP)]).astype(np.int64)
        self.red_slot_target = np.concatenate([[0], np.tile(np.arange(n), 4),
                                               np.arange(s)]).astype(np.int64)
        # The columns of each class in RED_SLOT_KINDS' order.
        self.red_class_columns = (*(slice(1 + i * n, 1 + (i + 1) * n) for i in range(4)),
                                  slice(1 + 4 * n, 1 + 4 * n + s))
        # (S, H): the hosts of each subnet, as a sweep discovers them.
        self.subnet_hosts = self.subnet_onehot.T > 0

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
        # `take` and a 2-D copy: an order of magnitude faster than fancy-indexed 3-D writes.
        # The code (at most 2 * 4 + 3) keeps activity's int8: `take` reads any integer index.
        code = activity * len(COMPROMISE_BITS)
        code += observed
        host_bits = HOST_BITS_BY_CODE.take(code, axis=0).reshape(batch, -1)
        rest = np.concatenate([blocked, messages.reshape(batch, -1)], axis=1, dtype=np.float32)
        sources = (host_bits, rest)
        # The features' gather (`gather_index`) as the plan's block copies (padding stays
        # zero), with the last-action one-hots put in place.
        observations = np.zeros((batch, self.n_agents, self.max_obs), dtype=np.float32)
        for agent, dst, src, source in self.gather_plan:
            observations[:, agent, dst] = sources[source][:, src]
        np.put(observations, self.row_starts(batch, self.n_agents * self.max_obs)
               + self.last_action_at + last_action, 1.0)
        return observations

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
        mask = np.empty((batch, self.n_agents, self.max_actions), dtype=np.int8)
        if not blue.sau:
            mask[:] = self.action_valid
        else:
            mask[:] = self.mask_base
            # Bits with more than one set, or one set that is not the first activity bit:
            # anything except "none" and a bare scan (activity 10, compromise 00).
            shows = observed != OBSERVED.NONE
            shows |= activity > ACTIVITY.SCAN
            if blue.limit_analyse:
                # A boolean matmul is an any-of-ands: did any peer send a 1 (B, A)?
                peer_signal = (messages.reshape(batch, -1) > 0) @ self.peer_bits
            for agent, slots, hosts, analyse in self.mask_plan:
                if analyse:
                    np.logical_or(shows[:, hosts], peer_signal[:, agent, None],
                                  out=mask[:, agent, slots])
                else:
                    mask[:, agent, slots] = shows[:, hosts]
        if busy.any():
            mask[busy] = 0
            mask[busy, 0] = 1
        return mask

    # ---------------------------------------------------------------- reward

    def row_starts(self, batch: int, width: int) -> NDArray[np.intp]:
        """(batch, 1): where each row of a (batch, width) array starts in its flat index,
        kept per shape (read-only) for the step's `take`/`put` by flat index."""
        key = (batch, width)
        starts = self._row_starts_cache.get(key)
        if starts is None:
            starts = np.arange(batch, dtype=np.intp)[:, None] * width
            starts.flags.writeable = False
            self._row_starts_cache[key] = starts
        return starts

    def finished_actions(
        self, finished: NDArray[np.bool_], slots: NDArray[np.int64]
    ) -> FinishedActions:
        """What each agent's slot (B, A) does, for the actions that take effect now."""
        batch = slots.shape[0]
        kind, host, subnet = self.action_facts.take(self.slot_offset + slots, axis=1)
        return FinishedActions(
            kind=np.where(finished, kind, ACTION.SLEEP),
            host=host,
            subnet=subnet,
            host_cell=self.row_starts(batch, self.n_hosts) + host,
            subnet_cell=self.row_starts(batch, self.n_subnets) + subnet,
        )

    def action_costs(
        self,
        finished: NDArray[np.bool_],
        slots: NDArray[np.int64],
        compromise: NDArray[np.int8],
        observed: NDArray[np.int8],
        blocked: NDArray[np.bool_],
        actions: FinishedActions | None = None,
    ) -> NDArray[np.float32]:
        """Per-env cost (B,) of the blue actions that finish now and were wasted.

        finished, slots: (B, A) which agents' actions finish this step, and their
        slots; compromise, observed (B, H) and blocked (B, S) as they stand *before*
        the actions take effect. After the authors' CybORG (Analyse 1.5 unless it
        finds red not yet known, Remove 0.5 unless it removes red, Block 2 unless a
        peer's Analyse finds red privileged in the same step, Unblock 1 unless the
        subnet was blocked); the amounts are the scenario's `reward.actions`.
        `actions` is `finished_actions(finished, slots)` where the caller has it already.
        """
        if not self.any_waste_cost:
            return np.zeros(finished.shape[0], dtype=np.float32)
        if actions is None:
            actions = self.finished_actions(finished, slots)
        kind = actions.kind
        truth = compromise.take(actions.host_cell)
        belief = observed.take(actions.host_cell)
        finds_new = (truth > COMPROMISE.CLEAN) & (belief != truth)
        finds_privileged = (kind == ACTION.ANALYSE) & (truth == COMPROMISE.PRIVILEGED)
        # A peer's Analyse that finds red privileged this step (not the agent's own): a
        # boolean matmul is an any-of-ands.
        peer_finds = finds_privileged @ self.peers
        subnet_blocked = blocked.take(actions.subnet_cell)
        # Whether each action did what waives its cost, by kind (in ActionKind's order; the
        # kinds without a cost count as useful).
        useful: NDArray[np.bool_] = np.choose(kind, [True, finds_new, truth == COMPROMISE.USER,
                                                     True, peer_finds, subnet_blocked, True])
        wasted = np.where(useful, 0.0, self.waste_cost.take(kind))
        return wasted.sum(axis=1).astype(np.float32)

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
            "privileged": privileged,
            "impact": (impacted.sum(axis=1) * weights.impact).astype(np.float32),
            "green": (green_failures * weights.green_failure).astype(np.float32),
            "restore": (restores * weights.restore).astype(np.float32),
            "comm": (bits_sent * self.scenario.blue.comm_cost).astype(np.float32),
            "actions": (np.zeros(compromise.shape[0], dtype=np.float32) if actions is None
                        else np.asarray(actions, dtype=np.float32)),
        }
        # The terms added in order, as a sum over a stack of them would (float32).
        total = terms["privileged"] + terms["impact"]
        for name in ("green", "restore", "comm", "actions"):
            total += terms[name]
        terms["total"] = -total
        return terms

    # -------------------------------------------------------------- red rule

    def red_reach(
        self, compromise: NDArray[np.int8], blocked: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """(B, S): subnets red can send to, from its footholds, past blue's blocks."""
        # Sums of compromise levels (0, 1, 2) per subnet: above 0 where red holds a host.
        footholds = (compromise.astype(np.float32) @ self.subnet_onehot) > 0
        # A boolean matmul is an any-of-ands (a flow from some foothold); a bool > blocked is
        # "and not blocked".
        onward = (footholds @ self._flows_bool) > blocked
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
        `red_pick` of `red_allowed`: the simulator calls the two apart to find what is
        allowed for all its envs and pick for the idle ones.
        """
        if reach is None:
            reach = self.red_reach(compromise, blocked)
        return self.red_pick(self.red_allowed(compromise, impacted, discovered, scanned, swept,
                                              reach), noise)

    def red_allowed(
        self,
        compromise: NDArray[np.int8],
        impacted: NDArray[np.bool_],
        discovered: NDArray[np.bool_],
        scanned: NDArray[np.bool_],
        swept: NDArray[np.bool_],
        reach: NDArray[np.bool_],
    ) -> NDArray[np.bool_]:
        """(B, 1 + 4H + S): which of red's slots (`red_slot_kind`) it can take now.

        Slot 0 ("none") never; then per host: impact (privileged on a mission host not yet
        impacted), escalate (a user foothold), exploit (scanned, reachable, clean and
        vulnerable), scan (discovered, reachable, clean, not yet scanned); then a sweep
        per reachable subnet not yet swept. Each class is written straight into its columns.
        """
        batch, n = compromise.shape[0], self.n_hosts
        allowed = np.zeros((batch, 1 + 4 * n + self.n_subnets), dtype=bool)
        impact, escalate, exploit, scan, sweep = (allowed[:, c] for c in self.red_class_columns)
        # For bools, a > b is "a and not b".
        np.equal(compromise, COMPROMISE.PRIVILEGED, out=impact)
        impact &= self.host_mission > impacted
        np.equal(compromise, COMPROMISE.USER, out=escalate)
        reachable_clean = reach.take(self.host_subnet, axis=1)
        reachable_clean &= compromise == COMPROMISE.CLEAN
        np.logical_and(scanned, self.host_vulnerable, out=exploit)
        exploit &= reachable_clean
        np.greater(discovered, scanned, out=scan)
        scan &= reachable_clean
        np.greater(reach, swept, out=sweep)
        return allowed

    def red_pick(
        self, allowed: NDArray[np.bool_], noise: NDArray[np.float32]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The best of the `allowed` slots (B, 1 + 4H + S) by score plus `noise` (B, 4H + S):
        (kind, target) per env, (NONE, 0) where red has nothing to do.

        The same float32 sums as a -inf mask would give, but the slots red cannot take are
        zeroed instead: every score is above 0, so the first maximum is the same slot, and
        a row with none allowed peaks at slot 0, "none".
        """
        scores = np.zeros(allowed.shape, dtype=np.float32)
        np.multiply(noise, RED_NOISE, out=scores[:, 1:])
        scores[:, 1:] += self.red_slot_scores
        scores *= allowed
        best = scores.argmax(axis=1)
        return self.red_slot_kind.take(best), self.red_slot_target.take(best)

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
