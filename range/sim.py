"""The simulated range: the game model's dynamics in NumPy, fast enough to train on.

`SimBatch` steps N independent copies of one scenario together (arrays shaped
(B, hosts)); `SimRange` is the PettingZoo `ParallelEnv` over one copy. Both are
deterministic for a given seed. The emulator measures the same game on real hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
from numpy.typing import NDArray
from pettingzoo import ParallelEnv

from cyberdial.range.blue import (
    advance_timers,
    global_state,
    global_state_bits,
    learn_alerts,
    learn_analysed,
    learn_blocked,
    learn_restored,
)
from cyberdial.range.model import (
    ACTION,
    ACTIVITY,
    COMPROMISE,
    RED,
    ActionKind,
    GameModel,
    RedActionKind,
)
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.truth import Measurement, RedMove


@dataclass
class BatchStep:
    """What one step of a `SimBatch` gives back (all arrays lead with the batch axis)."""

    observations: NDArray[np.float32]  # (B, A, max_obs)
    masks: NDArray[np.int8]  # (B, A, max_actions)
    rewards: NDArray[np.float32]  # (B,)
    terms: dict[str, NDArray[np.float32]]  # reward terms, each (B,)
    bits_sent: NDArray[np.int64]  # (B,)
    green_failures: NDArray[np.int64]  # (B,)
    executed: NDArray[np.int64]  # (B, A) the action each agent is carrying out
    done: bool


class SimBatch:
    """N copies of the game stepped together; every rule comes from `GameModel`."""

    def __init__(self, scenario: Scenario | GameModel, n_envs: int = 1, seed: int | None = None):
        self.model = scenario if isinstance(scenario, GameModel) else GameModel(scenario)
        self.scenario = self.model.scenario
        self.n_envs = n_envs
        self._seed = self.scenario.seed if seed is None else seed
        self.rng = np.random.default_rng(self._seed)
        m = self.model
        self._agent_grid = np.broadcast_to(np.arange(m.n_agents), (n_envs, m.n_agents))
        self._env_grid = np.broadcast_to(np.arange(n_envs)[:, None], (n_envs, m.n_agents))
        self._users = np.flatnonzero(m.host_user)
        self._servers = np.array(
            [self.scenario.host_index[name] for name in self.scenario.green.servers], dtype=np.int64
        )
        order = np.argsort(m.host_subnet, kind="stable")
        counts = np.bincount(m.host_subnet, minlength=m.n_subnets)
        self._hosts_by_subnet = order
        self._subnet_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._subnet_count = counts
        # Per user host: its subnet and where that subnet's hosts lie in `_hosts_by_subnet`
        # (green's false-positive sweeps pick a neighbour there).
        user_subnet = m.host_subnet[self._users]
        self._user_subnet_start = self._subnet_start[user_subnet]
        self._user_subnet_count = counts[user_subnet]
        # Green's outcome by (env, server, user's subnet), read at one flat index per
        # (env, user): the env's row, then the drawn server's block, then the user's subnet.
        self._server_subnet = m.host_subnet[self._servers]
        self._other_subnet = self._server_subnet[:, None] != np.arange(m.n_subnets)
        self._green_cell = (np.arange(n_envs)[:, None] * len(self._servers) * m.n_subnets
                            + user_subnet[None, :])
        # Each (env, agent) slot row's flat index into the (B, A, max_actions) mask.
        self._mask_rows = m.row_starts(n_envs, m.n_agents * m.max_actions) + m.slot_offset
        self._host_rows = m.row_starts(n_envs, m.n_hosts)[:, 0]
        # Which column of reach (extended by an always-true one, S) tells whether red's move
        # reaches its target, by (kind, target): a sweep's subnet, a scan's or an exploit's
        # host's subnet; the rest act on red's own footholds.
        width = max(m.n_hosts, m.n_subnets)
        column = np.full((len(RedActionKind), width), m.n_subnets, dtype=np.int64)
        column[RED.SWEEP] = np.minimum(np.arange(width), m.n_subnets - 1)
        host_subnet = m.host_subnet[np.minimum(np.arange(width), m.n_hosts - 1)]
        column[RED.SCAN] = column[RED.EXPLOIT] = host_subnet
        self._red_reach_column = column
        self._always = np.ones((n_envs, 1), dtype=bool)
        self._envs = np.arange(n_envs)
        self._red_durations = np.array(
            [
                1,
                *(
                    getattr(self.scenario.red.durations, k)
                    for k in ("sweep", "scan", "exploit", "escalate", "impact")
                ),
            ],
            dtype=np.int64,
        )
        self.reset()

    # ---------------------------------------------------------------- reset

    def reset(self, seed: int | None = None) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        m, b = self.model, self.n_envs
        h, s, a = m.n_hosts, m.n_subnets, m.n_agents
        self.t = 0
        self.compromise = np.zeros((b, h), dtype=np.int8)
        self.impacted = np.zeros((b, h), dtype=bool)
        self.decoy = np.zeros((b, h), dtype=bool)
        self.down = np.zeros((b, h), dtype=np.int64)
        self.activity = np.zeros((b, h), dtype=np.int8)
        self.observed = np.zeros((b, h), dtype=np.int8)
        self.blocked = np.zeros((b, s), dtype=bool)
        self.discovered = np.zeros((b, h), dtype=bool)
        self.scanned = np.zeros((b, h), dtype=bool)
        self.swept = np.zeros((b, s), dtype=bool)
        self.red_kind = np.zeros(b, dtype=np.int64)
        self.red_target = np.zeros(b, dtype=np.int64)
        self.red_timer = np.zeros(b, dtype=np.int64)
        # What red completed this step and whether it reached its target (recordings).
        self.red_done_kind = np.zeros(b, dtype=np.int64)
        self.red_done_target = np.zeros(b, dtype=np.int64)
        self.red_done_reached = np.zeros(b, dtype=bool)
        self.red_wait = np.full(b, self.scenario.red.start_delay, dtype=np.int64)
        if self.scenario.red.start_jitter:
            # Drawn only when asked for, so scenarios without jitter keep their seeds' episodes.
            self.red_wait += self.rng.integers(0, self.scenario.red.start_jitter + 1, b)
        self.blue_pending = np.zeros((b, a), dtype=np.int64)
        self.blue_timer = np.zeros((b, a), dtype=np.int64)
        self.messages = np.zeros((b, a, m.message_bits), dtype=np.uint8)
        self.last_action = np.zeros((b, a), dtype=np.int64)
        self.green_failures = np.zeros(b, dtype=np.int64)  # in the last step
        self.mask = m.action_masks(self.activity, self.observed, self.messages, self.blue_timer > 0)
        return self._observe(), self.mask

    def _observe(self) -> NDArray[np.float32]:
        return self.model.encode_observations(
            self.activity, self.observed, self.blocked, self.messages, self.last_action
        )

    # ----------------------------------------------------------------- step

    def step(
        self, actions: NDArray[np.int64], messages: NDArray[np.uint8] | None = None
    ) -> BatchStep:
        """Advance every copy one step. An illegal or out-of-range action is Sleep."""
        m, b = self.model, self.n_envs
        actions = np.asarray(actions, dtype=np.int64).reshape(b, m.n_agents)
        if messages is None:
            messages = np.zeros((b, m.n_agents, m.message_bits), dtype=np.uint8)
        messages = (np.asarray(messages).reshape(b, m.n_agents, m.message_bits) > 0).astype(
            np.uint8
        )

        in_range = (actions >= 0) & (actions < m.max_actions)
        clipped = np.where(in_range, actions, 0)
        # An out-of-range action is clipped to Sleep (0), which stays 0 either way.
        legal = self.mask.take(self._mask_rows + clipped) > 0
        chosen = np.where(legal, clipped, 0)

        restores, action_costs = self._blue_step(chosen)
        self.activity[:] = ACTIVITY.NONE
        self._red_step()
        failures = self.green_failures = self._green_step()
        # An exploit seen on a host whose state blue believes clean makes it "unknown".
        learn_alerts(self.activity, self.observed)
        np.maximum(self.down - 1, 0, out=self.down)

        self.messages = messages
        bits_sent = messages.reshape(b, -1).sum(axis=1, dtype=np.int64)
        terms = m.reward_terms(self.compromise, self.impacted, failures, restores, bits_sent,
                               action_costs)
        self.t += 1
        observations = self._observe()
        self.mask = m.action_masks(self.activity, self.observed, self.messages, self.blue_timer > 0)
        return BatchStep(
            observations=observations,
            masks=self.mask,
            rewards=terms["total"],
            terms=terms,
            bits_sent=bits_sent,
            green_failures=failures,
            executed=self.last_action.copy(),
            done=self.t >= self.scenario.episode_length,
        )

    def _blue_step(
        self, chosen: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        m = self.model
        self.blue_pending, self.blue_timer, finished = advance_timers(
            m, chosen, self.blue_pending, self.blue_timer
        )
        self.last_action = self.blue_pending.copy()
        done = m.finished_actions(finished, self.blue_pending)
        kind, host, subnet = done.kind, done.host, done.subnet
        envs = self._env_grid
        action_costs = m.action_costs(finished, self.blue_pending, self.compromise, self.observed,
                                      self.blocked, done)
        # How many of each kind take effect: only those present cost their selections.
        present = np.bincount(kind.ravel(), minlength=len(ActionKind)).tolist()

        if present[ACTION.ANALYSE]:
            sel = kind == ACTION.ANALYSE
            e, h = envs[sel], host[sel]
            learn_analysed(self.observed, e, h, self.compromise[e, h])
        if present[ACTION.REMOVE]:
            sel = kind == ACTION.REMOVE
            e, h = envs[sel], host[sel]
            user = self.compromise[e, h] == COMPROMISE.USER
            self.compromise[e[user], h[user]] = COMPROMISE.CLEAN
        if present[ACTION.RESTORE]:
            sel = kind == ACTION.RESTORE
            e, h = envs[sel], host[sel]
            self.compromise[e, h] = COMPROMISE.CLEAN
            self.impacted[e, h] = False
            self.decoy[e, h] = False
            learn_restored(self.observed, e, h)
            self.down[e, h] = self.scenario.blue.restore_downtime
            restores = sel.sum(axis=1, dtype=np.int64)
        else:
            restores = np.zeros(self.n_envs, dtype=np.int64)
        for action_kind, value in ((ACTION.BLOCK, True), (ACTION.UNBLOCK, False)):
            if present[action_kind]:
                sel = kind == action_kind
                learn_blocked(self.blocked, envs[sel], subnet[sel], value)
        if present[ACTION.DECOY]:
            sel = kind == ACTION.DECOY
            self.decoy[envs[sel], host[sel]] = True
        return restores, action_costs

    def _red_step(self) -> None:
        m, b, red = self.model, self.n_envs, self.scenario.red
        has_foothold = self.compromise.any(axis=1)
        free = self.red_timer == 0
        # For bools, a > b is "a and not b".
        waiting = free > has_foothold
        # Once red has landed, seldom does any env wait to (re)enter: skip the entry then.
        if waiting.any():
            enter = waiting & (self.red_wait <= 0)
            self.compromise[enter, m.entry_host] = COMPROMISE.USER
            self.red_wait[enter] = red.reentry_delay
            self.red_wait[waiting > enter] -= 1
            has_foothold |= enter
        idle = free & has_foothold  # red holds a host now
        # Where red can reach: read by its choice and by what completes (neither changes
        # compromise or blocks in between), found once.
        reach = m.red_reach(self.compromise, self.blocked) if idle.any() else None
        if reach is not None:
            index = np.flatnonzero(idle)
            noise = self.rng.random((len(index), 4 * m.n_hosts + m.n_subnets), dtype=np.float32)
            # `red_choose` for the idle envs: what each env may do is found for all of them
            # (cheaper than gathering six state arrays), then only the idle rows are kept.
            allowed = m.red_allowed(self.compromise, self.impacted, self.discovered,
                                    self.scanned, self.swept, reach)
            kinds, targets = m.red_pick(allowed if len(index) == b else allowed[index], noise)
            self.red_kind[index] = kinds
            self.red_target[index] = targets
            self.red_timer[index] = self._red_durations[kinds]
        np.maximum(self.red_timer - 1, 0, out=self.red_timer)
        complete = (self.red_timer == 0) & (self.red_kind != RED.NONE)
        self.red_done_kind[:] = RED.NONE
        if not complete.any():
            return
        if reach is None:
            reach = m.red_reach(self.compromise, self.blocked)
        kind, target = self.red_kind, self.red_target
        reached = np.concatenate([reach, self._always], axis=1)[
            self._envs, self._red_reach_column[kind, target]]
        np.copyto(self.red_done_kind, kind, where=complete)
        np.copyto(self.red_done_target, target, where=complete)
        self.red_done_reached[:] = reached
        # The kind of each env's move that completes and reaches its target, else NONE.
        acts = np.where(complete & reached, kind, RED.NONE)
        present = np.bincount(acts, minlength=len(RedActionKind)).tolist()
        cells = self._host_rows + target  # flat (B, H) index of each env's target host
        sensors = self.scenario.sensors

        if present[RED.SWEEP]:
            e = np.flatnonzero(acts == RED.SWEEP)
            in_subnet = m.subnet_hosts[target[e]]
            self.discovered[e] |= in_subnet
            self.swept[e, target[e]] = True
            seen = in_subnet & (self.rng.random(in_subnet.shape) < sensors.sweep_detect)
            self.activity[e] = np.maximum(self.activity[e], np.where(seen, ACTIVITY.SCAN, 0))
        if present[RED.SCAN]:
            c = cells[acts == RED.SCAN]
            np.put(self.scanned, c, True)
            seen = self.rng.random(len(c)) < sensors.scan_detect
            level = np.where(self.decoy.take(c), ACTIVITY.EXPLOIT,
                             np.where(seen, ACTIVITY.SCAN, 0))
            np.put(self.activity, c, np.maximum(self.activity.take(c), level))
        if present[RED.EXPLOIT]:
            c = cells[acts == RED.EXPLOIT]
            clean = self.compromise.take(c) == COMPROMISE.CLEAN
            trapped = self.decoy.take(c)
            success = clean & ~trapped & (self.rng.random(len(c)) < red.exploit_success)
            np.put(self.compromise, c[success], COMPROMISE.USER)
            seen = trapped | (self.rng.random(len(c)) < sensors.exploit_detect)
            np.put(self.activity, c[seen], ACTIVITY.EXPLOIT)
        if present[RED.ESCALATE]:
            c = cells[acts == RED.ESCALATE]
            ok = (self.compromise.take(c) == COMPROMISE.USER) & (
                self.rng.random(len(c)) < red.escalate_success
            )
            np.put(self.compromise, c[ok], COMPROMISE.PRIVILEGED)
        if present[RED.IMPACT]:
            sel = acts == RED.IMPACT
            c = cells[sel]
            ok = (self.compromise.take(c) == COMPROMISE.PRIVILEGED) & m.host_mission[target[sel]]
            np.put(self.impacted, c[ok], True)
        self.red_kind[complete] = RED.NONE

    def _green_step(self) -> NDArray[np.int64]:
        m, b, green = self.model, self.n_envs, self.scenario.green
        users = self._users
        if len(users) == 0:
            return np.zeros(b, dtype=np.int64)
        shape = (b, len(users))
        works = self.rng.random(shape) < green.work_rate
        down = self.down > 0  # still down from a restore
        user_down = down[:, users]
        # Where users work on servers: the server each drew, and where its outcome and its
        # cut-off lie in the (B, servers, S) tables below.
        draw: NDArray[np.int64] | None = None
        cell: NDArray[np.int64] | None = None
        cut: NDArray[np.bool_] | None = None
        if len(self._servers):
            draw = self.rng.integers(0, len(self._servers), shape)
            # Per (env, server, user's subnet): the server down or impacted, or its subnet
            # blocked to users of other subnets; each user's outcome is one flat read.
            servers = self._servers
            cut = self.blocked[:, self._server_subnet][:, :, None] & self._other_subnet
            broken = down[:, servers] | self.impacted[:, servers]
            cell = draw * m.n_subnets
            cell += self._green_cell
            fails = user_down | (broken[:, :, None] | cut).take(cell)
        else:
            # Without servers a user works on its own host.
            fails = user_down | self.impacted[:, users]
        failures = (works & fails).sum(axis=1, dtype=np.int64)

        # False positives: admins' sweeps look like scans on a neighbour; mistyped
        # logins look like exploits on the server they meant to use.
        # (`flatnonzero` and `divmod`: 2-D `nonzero` costs several times as much.)
        if green.fp_scan > 0:
            e, u = np.divmod(np.flatnonzero(self.rng.random(shape) < green.fp_scan), shape[1])
            if len(e):
                pick = (self.rng.random(len(e)) * self._user_subnet_count[u]).astype(np.int64)
                victim = self._hosts_by_subnet[self._user_subnet_start[u] + pick]
                self.activity[e, victim] = np.maximum(self.activity[e, victim], ACTIVITY.SCAN)
        if green.fp_exploit > 0:
            e, u = np.divmod(np.flatnonzero(self.rng.random(shape) < green.fp_exploit), shape[1])
            if len(e):
                if draw is None or cell is None or cut is None:
                    server = users[u]
                else:
                    # Not where the server's subnet is cut off from the user's.
                    keep = ~cut.take(cell[e, u])
                    e, server = e[keep], self._servers[draw[e, u][keep]]
                self.activity[e, server] = ACTIVITY.EXPLOIT
        return failures

    # ---------------------------------------------------------------- views

    def state(self) -> NDArray[np.float32]:
        """Global state for centralised training (B, state_size); never shown to agents."""
        return global_state(
            self.model, self.t, self.compromise, self.impacted, self.decoy, self.down > 0,
            self.activity, self.observed, self.blocked, self.messages,
        )

    def state_bits(self) -> NDArray[np.uint8]:
        """`state()` without its progress column, as uint8 bits (`global_state_bits`)."""
        return global_state_bits(
            self.compromise, self.impacted, self.decoy, self.down > 0, self.activity,
            self.observed, self.blocked, self.messages,
        )

    def measurement(self, env: int = 0) -> Measurement:
        """The true state of one copy, as the ranges' referees report theirs: what recordings
        and the simulated host side read (never shown to agents)."""
        return Measurement(
            self.compromise[env].copy(), self.impacted[env].copy(), self.decoy[env].copy(),
            self.down[env] > 0, self.blocked[env].copy(),
            green_failures=int(self.green_failures[env]), red_moves=self.red_moves(env))

    def red_moves(self, env: int = 0) -> tuple[RedMove, ...]:
        """What red completed this step against what it reached (none, or one move)."""
        kind = RedActionKind(int(self.red_done_kind[env]))
        if kind == RedActionKind.NONE or not self.red_done_reached[env]:
            return ()
        target = int(self.red_done_target[env])
        name = (
            self.scenario.subnets[target].name
            if kind == RedActionKind.SWEEP
            else self.scenario.all_hosts[target].name
        )
        return (RedMove(kind, name),)


# ------------------------------------------------------------------- PettingZoo


def agent_spaces(
    model: GameModel,
) -> tuple[dict[str, gymnasium.spaces.Dict], dict[str, gymnasium.spaces.Discrete]]:
    """Every agent's observation and action space: the one definition both ranges use, so a
    policy cannot tell the simulator from the emulated range by its spaces."""
    observation_spaces = {
        layout.name: gymnasium.spaces.Dict(
            {
                "observation": gymnasium.spaces.Box(0.0, 1.0, (layout.obs_size,), np.float32),
                "action_mask": gymnasium.spaces.Box(0, 1, (layout.n_actions,), np.int8),
            }
        )
        for layout in model.agents
    }
    # Annotated: gymnasium 1.2 (which Ray pins) types Discrete's generic less precisely.
    action_spaces: dict[str, gymnasium.spaces.Discrete] = {
        layout.name: gymnasium.spaces.Discrete(layout.n_actions) for layout in model.agents
    }
    return observation_spaces, action_spaces


class SimRange(ParallelEnv):
    """PettingZoo ParallelEnv over one simulated copy of a scenario.

    Observations are `{"observation": float32 vector, "action_mask": int8 vector}`;
    `step(actions, messages=None)` takes each agent's message bits beside its action
    (as CybORG 4 does); a missing message is silence.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "name": "cyberdial_sim_v0",
        "render_modes": ["ansi", "human"],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        scenario: Scenario | str | Path,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.scenario = scenario
        self.render_mode = render_mode
        self.batch = SimBatch(scenario, n_envs=1, seed=seed)
        self.model = self.batch.model
        self.possible_agents = list(self.model.agent_names)
        self.agents: list[str] = []
        self._observation_spaces, self._action_spaces = agent_spaces(self.model)
        self._last: BatchStep | None = None
        self._seeded = False

    def observation_space(self, agent: str) -> gymnasium.spaces.Dict:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return self._action_spaces[agent]

    def _agent_observations(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8]
    ) -> dict[str, dict[str, NDArray[Any]]]:
        return {
            layout.name: {
                "observation": observations[0, layout.index, : layout.obs_size].copy(),
                "action_mask": masks[0, layout.index, : layout.n_actions].copy(),
            }
            for layout in self.model.agents
        }

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if seed is None and not self._seeded:
            seed = self.batch._seed
        self._seeded = True
        observations, masks = self.batch.reset(seed)
        self.agents = list(self.possible_agents)
        self._last = None
        return self._agent_observations(observations, masks), {a: {} for a in self.agents}

    def step(
        self, actions: dict[str, int], messages: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        m = self.model
        action_array = np.zeros((1, m.n_agents), dtype=np.int64)
        message_array = np.zeros((1, m.n_agents, m.message_bits), dtype=np.uint8)
        for layout in m.agents:
            if layout.name in actions:
                action_array[0, layout.index] = int(actions[layout.name])
            if messages and layout.name in messages:
                message_array[0, layout.index] = np.asarray(messages[layout.name]).reshape(-1)[
                    : m.message_bits
                ]
        result = self.batch.step(action_array, message_array)
        self._last = result
        reward = float(result.rewards[0])
        terms = {k: float(v[0]) for k, v in result.terms.items()}
        observations = self._agent_observations(result.observations, result.masks)
        agents = list(self.agents)
        rewards = {a: reward for a in agents}
        terminations = {a: False for a in agents}
        truncations = {a: result.done for a in agents}
        infos = {
            layout.name: {
                "reward_terms": terms,
                "bits_sent": int(result.bits_sent[0]),
                "busy": bool(self.batch.blue_timer[0, layout.index] > 0),
                "executed": m.agents[layout.index]
                .actions[int(result.executed[0, layout.index])]
                .label,
            }
            for layout in m.agents
            if layout.name in agents
        }
        if result.done:
            self.agents = []
        if self.render_mode == "human":
            print(self.render())
        return observations, rewards, terminations, truncations, infos

    def state(self) -> NDArray[np.float32]:
        return self.batch.state()[0]

    def render(self) -> str | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; pass render_mode='ansi'")
            return None
        return render_text(self.batch, self._last)

    def close(self) -> None:
        pass


_COMPROMISE_GLYPH = {0: ".", 1: "u", 2: "P"}
_ACTIVITY_GLYPH = {0: " ", 1: "s", 2: "e"}


def render_text(batch: SimBatch, last: BatchStep | None, env: int = 0) -> str:
    """A readable frame: per subnet each host's state, then each agent's action."""
    scenario, m = batch.scenario, batch.model
    lines = [
        f"step {batch.t}/{scenario.episode_length}   legend: . clean  u user  P privileged"
        "  X impacted  (s scan, e exploit seen)"
    ]
    for i, subnet in enumerate(scenario.subnets):
        cells = []
        for host in scenario.hosts_in(subnet.name):
            glyph = (
                "X"
                if batch.impacted[env, host.index]
                else _COMPROMISE_GLYPH[int(batch.compromise[env, host.index])]
            )
            cells.append(
                f"{host.name}:{glyph}{_ACTIVITY_GLYPH[int(batch.activity[env, host.index])]}"
            )
        state = " [BLOCKED]" if batch.blocked[env, i] else ""
        shown = cells if len(cells) <= 12 else [*cells[:12], f"... +{len(cells) - 12} more"]
        lines.append(f"  {subnet.name}{state}: " + " ".join(shown))
    if last is not None:
        for layout in m.agents:
            action = layout.actions[int(last.executed[env, layout.index])].label
            bits = "".join(str(int(x)) for x in batch.messages[env, layout.index])
            lines.append(f"  {layout.name}: {action:<24} msg {bits or '-'}")
        lines.append(f"  reward {float(last.rewards[env]):+.2f}")
    return "\n".join(lines)
