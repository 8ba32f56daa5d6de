"""Drills: a policy's agents (and optionally a person) defend a range, every step recorded.

`run_drill` drives any `DrillRange` (the simulator here; the emulated range via
the bridge) with a `BatchPolicy`, writes each step to a `Recorder`, feeds a live
view, and can seat a person in one agent's place (`HumanSeat`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np
from numpy.typing import NDArray

from cyberdial.agents.baselines import BatchPolicy
from cyberdial.agents.recording import (
    AlertRecord,
    CommandRecord,
    EpisodeEnd,
    GroundTruth,
    RecordSink,
    StepRecord,
    bits_text,
)
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import ActionKind, Activity, GameModel
from cyberdial.range.sim import SimBatch

if TYPE_CHECKING:
    from cyberdial.range.emulation.capture import CaptureLimits

logger = logging.getLogger(__name__)

PCAP_DIR = "pcap"


@dataclass
class DrillStep:
    """What a range reports after one step, in recording terms."""

    observations: NDArray[np.float32]  # (1, A, max_obs)
    masks: NDArray[np.int8]  # (1, A, max_actions)
    reward: float
    terms: dict[str, float]
    alerts: list[AlertRecord]
    commands: list[CommandRecord]
    ground_truth: GroundTruth
    executed: list[int]  # per agent: the action slot actually carried out
    done: bool
    infos: dict[str, Any] = field(default_factory=dict)


class DrillRange(Protocol):
    model: GameModel
    kind: str  # "sim" or "emulated"

    def reset(self, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int8]]: ...

    def step(self, actions: NDArray[np.int64], messages: NDArray[np.uint8]) -> DrillStep: ...


class SimDrillRange:
    """The simulator as a drill range; its alerts are what its sensor model saw."""

    kind = "sim"

    def __init__(self, model: GameModel) -> None:
        self.model = model
        self.batch = SimBatch(model, n_envs=1)

    def reset(self, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        return self.batch.reset(seed)

    def step(self, actions: NDArray[np.int64], messages: NDArray[np.uint8]) -> DrillStep:
        result = self.batch.step(actions, messages)
        hosts = self.model.scenario.all_hosts
        activity = self.batch.activity[0]
        alerts = [
            AlertRecord(
                host=hosts[h].name,
                kind=Activity(int(activity[h])).name.lower(),
                evidence="simulated sensor",
            )
            for h in np.flatnonzero(activity)
        ]
        return DrillStep(
            observations=result.observations,
            masks=result.masks,
            reward=float(result.rewards[0]),
            terms={k: float(v[0]) for k, v in result.terms.items() if k != "total"},
            alerts=alerts,
            commands=[],
            ground_truth=GroundTruth.of(self.model.scenario, self.batch.measurement(0)),
            executed=[int(x) for x in result.executed[0]],
            done=result.done,
        )


def stacked_observations(
    model: GameModel, observations: dict[str, Any]
) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """A ParallelEnv's per-agent observations as one env's (1, A, max_obs) observations and
    (1, A, max_actions) masks, zero-padded, as a `BatchPolicy` takes them; an agent that
    is absent (the episode over) stays zero."""
    obs = np.zeros((1, model.n_agents, model.max_obs), dtype=np.float32)
    masks = np.zeros((1, model.n_agents, model.max_actions), dtype=np.int8)
    for layout in model.agents:
        seen = observations.get(layout.name)
        if seen is not None:
            obs[0, layout.index, : layout.obs_size] = seen["observation"]
            masks[0, layout.index, : layout.n_actions] = seen["action_mask"]
    return obs, masks


class EmulatedDrillRange:
    """The emulated range as a drill range: real hosts, the bridge, an `EmulatedRange` client.

    A context manager that brings the range up and always tears it down. The agents
    talk to the bridge like any remote client; the recording's alerts, command
    results and ground truth come from the bridge's host side (`StepLog`), never
    from what the agents are shown.
    """

    kind = "emulated"
    LOG_WAIT_S = 10.0

    def __init__(
        self, model: GameModel, workdir: Path, pcap_limits: CaptureLimits | None = None,
        step_period_s: float | None = None, run_id: str | None = None,
    ) -> None:
        self.model = model
        self.workdir = workdir
        # The least a step lasts (the bridge's pace): None for the scenario's step period,
        # a drill people watch; 0 steps as fast as the hosts allow (validation).
        self.step_period_s = step_period_s
        # With limits, every subnet bridge is captured to <workdir>/pcap/ (see capture.py).
        self.pcap_limits = pcap_limits
        self._logs: queue.Queue[Any] = queue.Queue()
        self._stack = contextlib.ExitStack()
        # "" until the range is up, unless the caller named the run (`validate --ranges`).
        self._wanted_run_id = run_id
        self.run_id = ""

    def __enter__(self) -> EmulatedDrillRange:
        # Imported here: the emulator needs root and Mininet; sim drills need neither.
        from cyberdial.bridge.lab import emulated_lab

        try:
            capture_dir = self.workdir / PCAP_DIR if self.pcap_limits is not None else None
            lab = self._stack.enter_context(emulated_lab(
                self.model.scenario, self.workdir, step_period_s=self.step_period_s,
                step_log=self._logs.put, capture_dir=capture_dir,
                capture_limits=self.pcap_limits, run_id=self._wanted_run_id))
            self.run_id = lab.run_id
            self.env = lab.env
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _arrays(self, observations: dict[str, Any]) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        return stacked_observations(self.model, observations)

    def reset(self, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
        while not self._logs.empty():
            self._logs.get_nowait()
        observations, _ = self.env.reset(seed=seed)
        return self._arrays(observations)

    def step(self, actions: NDArray[np.int64], messages: NDArray[np.uint8]) -> DrillStep:
        m = self.model
        observations, rewards, _, truncations, infos = self.env.step(
            {layout.name: int(actions[0, layout.index]) for layout in m.agents},
            {layout.name: messages[0, layout.index] for layout in m.agents},
        )
        log = self._logs.get(timeout=self.LOG_WAIT_S)
        obs, masks = self._arrays(observations)
        executed = []
        for layout in m.agents:
            label = infos.get(layout.name, {}).get("executed", "sleep")
            labels = [action.label for action in layout.actions]
            executed.append(labels.index(label) if label in labels else 0)
        first = m.agent_names[0]
        return DrillStep(
            observations=obs,
            masks=masks,
            reward=float(rewards.get(first, log.terms.get("total", 0.0))),
            terms={k: v for k, v in log.terms.items() if k != "total"},
            alerts=[
                AlertRecord(host=a.host, kind=str(a.kind), evidence=a.evidence, at=a.observed_at)
                for a in log.alerts
            ],
            commands=[
                CommandRecord(agent=agent, action=action.label, ok=result.ok,
                              detail=result.detail, compromise=result.compromise)
                for agent, action, result in log.commands
            ],
            ground_truth=GroundTruth.of(m.scenario, log.measurement),
            executed=executed,
            done=bool(truncations.get(first, True)),
            infos={
                "dead_peers": list(infos.get(first, {}).get("dead_peers", ())),
                "failed_commands": [
                    f for info in infos.values() for f in info.get("failed_commands", ())
                ],
                "run_id": self.run_id,
            },
        )


class HumanSeat:
    """A person plays one blue agent: shown its observation and legal actions each step.

    They type an action number (or its label) before the step deadline; nothing
    typed in time, or anything not legal, is Sleep.
    """

    def __init__(
        self, model: GameModel, agent: str, deadline_s: float, stdin: TextIO, stdout: TextIO
    ) -> None:
        if agent not in model.agent_names:
            raise CyberdialError(
                f"--human {agent}: no such agent; choose one of {', '.join(model.agent_names)}"
            )
        self.model = model
        self.layout = model.agents[model.agent_names.index(agent)]
        self.deadline_s = deadline_s
        self.stdin = stdin
        self.stdout = stdout
        self.episode, self.step = 0, 0

    def at(self, episode: int, step: int) -> None:
        """The drill tells the seat which step it is choosing for."""
        self.episode, self.step = episode, step

    def observation_lines(self, observation: NDArray[np.float32]) -> list[str]:
        """What the seated agent sees, one line per host with news, subnet or peer message."""
        layout, scenario = self.layout, self.model.scenario
        bits = self.model.host_bits_of(observation[: layout.obs_size], layout.index)
        activity = {(0, 0): "", (1, 0): "scan", (1, 1): "EXPLOIT"}
        compromise = {(0, 0): "", (0, 1): "user", (1, 1): "PRIVILEGED", (1, 0): "unknown"}
        lines = []
        for i, host in enumerate(layout.hosts):
            a = activity.get((int(bits[i, 0]), int(bits[i, 1])), "?")
            c = compromise.get((int(bits[i, 2]), int(bits[i, 3])), "?")
            if a or c:
                lines.append(f"{scenario.all_hosts[host].name}: {a or '-'} / {c or '-'}")
        if not lines:
            lines.append("no activity on your hosts")
        slices = layout.obs_slices()
        blocked = observation[slices["blocked"]]
        for j, subnet in enumerate(layout.subnets):
            if blocked[j] > 0.5:
                lines.append(f"subnet {scenario.subnets[subnet].name} is BLOCKED")
        peers = [name for name in self.model.agent_names if name != layout.name]
        messages = observation[slices["messages"]].reshape(len(peers), -1) if peers else []
        for name, bits_of_peer in zip(peers, messages, strict=False):
            lines.append(f"message from {name}: {bits_text(bits_of_peer)}")
        return lines

    def legal_actions(self, mask: NDArray[np.int8]) -> list[tuple[int, str]]:
        """(slot, label) of every action the mask allows now."""
        legal = np.flatnonzero(mask[: self.layout.n_actions])
        return [(int(i), self.layout.actions[i].label) for i in legal]

    def summary(self, observation: NDArray[np.float32], mask: NDArray[np.int8]) -> str:
        lines = [f"== you are {self.layout.name} =="]
        lines += [f"  {line}" for line in self.observation_lines(observation)]
        lines.append(
            "  legal actions: "
            + ", ".join(f"[{i}] {label}" for i, label in self.legal_actions(mask))
        )
        lines.append(f"  choose within {self.deadline_s:g} s (Enter alone or no answer = sleep): ")
        return "\n".join(lines)

    def choose(self, observation: NDArray[np.float32], mask: NDArray[np.int8]) -> int:
        self.stdout.write(self.summary(observation, mask))
        self.stdout.flush()
        end = time.monotonic() + self.deadline_s
        text = ""
        while time.monotonic() < end:
            ready, _, _ = select.select([self.stdin], [], [], max(0.0, end - time.monotonic()))
            if ready:
                text = self.stdin.readline().strip()
                break
        labels = {action.label: i for i, action in enumerate(self.layout.actions)}
        choice = int(text) if text.isdigit() else labels.get(text, int(ActionKind.SLEEP))
        if not (0 <= choice < self.layout.n_actions) or not mask[choice]:
            if text:
                self.stdout.write(f"  '{text}' is not a legal action: sleeping\n")
            choice = int(ActionKind.SLEEP)
        return choice


def run_drill(
    drill_range: DrillRange,
    policy: BatchPolicy,
    episodes: int,
    seed: int,
    recorder: RecordSink,
    on_step: Callable[[StepRecord], None] | None = None,
    human: HumanSeat | None = None,
    pace_s: float = 0.0,
    first_episode: int = 0,
) -> list[EpisodeEnd]:
    """Play `episodes` episodes, recording every step; returns the episodes' ends.

    Episode e (from `first_episode` on) is played with seed `seed + e`, so a share of
    a run's episodes played elsewhere (`validate --ranges N`) is the same episodes.

    On an exception or Ctrl-C the current episode is closed as interrupted
    before the error goes on, so the recording stays readable.
    """
    model = drill_range.model
    ends: list[EpisodeEnd] = []
    for episode in range(first_episode, first_episode + episodes):
        observations, masks = drill_range.reset(seed + episode)
        policy.reset(1)
        total, bits, t = 0.0, 0, 0
        done = False
        try:
            while not done:
                # The step's window opens now, with the last observation in hand: the
                # bridge counts what happens from here to the step's end into this step.
                began = time.time()
                started = time.monotonic()
                actions, messages = policy.act(observations, masks)
                if human is not None:
                    a = human.layout.index
                    human.at(episode, t)
                    actions[0, a] = human.choose(observations[0, a], masks[0, a])
                    messages[0, a] = 0
                result = drill_range.step(actions, messages)
                record = StepRecord(
                    episode=episode,
                    step=t,
                    wall_time=time.time(),
                    alerts=result.alerts,
                    observations={
                        layout.name: bits_text(observations[0, layout.index, : layout.obs_size])
                        for layout in model.agents
                    },
                    masks={
                        layout.name: bits_text(masks[0, layout.index, : layout.n_actions])
                        for layout in model.agents
                    },
                    actions={
                        layout.name: layout.actions[result.executed[layout.index]].label
                        for layout in model.agents
                    },
                    action_index={
                        layout.name: int(result.executed[layout.index]) for layout in model.agents
                    },
                    messages={
                        layout.name: bits_text(messages[0, layout.index]) for layout in model.agents
                    },
                    commands=result.commands,
                    reward=result.reward,
                    reward_terms=result.terms,
                    ground_truth=result.ground_truth,
                    infos=result.infos,
                    started=began,
                )
                recorder.step(record)
                if on_step is not None:
                    on_step(record)
                total += result.reward
                bits += int(messages.sum())
                observations, masks, done = result.observations, result.masks, result.done
                t += 1
                if pace_s > 0:
                    time.sleep(max(0.0, pace_s - (time.monotonic() - started)))
        except BaseException:
            recorder.episode_end(
                EpisodeEnd(
                    episode=episode, steps=t, episode_return=total, bits_sent=bits, interrupted=True
                )
            )
            raise
        end = EpisodeEnd(episode=episode, steps=t, episode_return=total, bits_sent=bits)
        recorder.episode_end(end)
        ends.append(end)
        logger.info("episode %d: return %.2f, %d bits", episode, total, bits)
    return ends
