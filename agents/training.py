"""The one training loop for every learning blue, read top to bottom as CleanRL's files.

1. The registry (`ALGORITHMS`): algorithm name -> learner class, SAU switch and the
   algorithm's reference settings.
2. `TrainConfig`: every setting of a run, each a `cyberdial train` option
   (agents/options.py turns the fields into options).
3. `Learner`: what an algorithm gives the loop (agents/dial.py, agents/qmix.py).
4. The loop, `train()`: play batches of whole episodes in the batched simulator with
   the ε-greedy behaviour policy, store them in the `EpisodeBuffer`
   (agents/buffer.py), hand sampled batches to the learner, copy the target network,
   evaluate greedily now and then, log to TensorBoard, write checkpoints.
"""

from __future__ import annotations

import csv
import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from cyberdial.agents.baselines import BatchPolicy
from cyberdial.agents.buffer import (
    EpisodeBatch,
    EpisodeBuffer,
    buffer_snapshot,
    restore_buffer,
)
from cyberdial.agents.memory import keep_freed_memory
from cyberdial.agents.rollout import EpisodeStats, run_episodes
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario, scenario_from_dict
from cyberdial.range.sim import SimBatch

logger = logging.getLogger(__name__)

# What the messages carried at each greedy evaluation (agents/messages.py).
COMM_FIGURES = ("mi_activity", "mi_red", "mi_red_given_activity", "listener_effect")
# Evaluation episodes use seeds far from the training ones, so a greedy score is
# never measured on the very episodes the learner just trained on.
EVAL_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class AlgorithmSpec:
    """How an algorithm name maps to code and to the scenario's SAU switch."""

    learner: str
    """`module:Class` of the learner, imported on first use (no import cycles)."""
    sau: bool | None
    """force strategic action unmasking on or off; None keeps the scenario's setting"""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """the algorithm's reference settings: `TrainConfig` fields it changes unless given"""


# pymarl/epymarl's QMIX and IQL settings (RNN hidden 64, 32 episodes per batch, target
# network every 200 episodes). Their buffer holds 5000 episodes; here 1000, because
# large's global state alone would take 6 GB per run at 5000.
PYMARL_DEFAULTS: Mapping[str, Any] = {
    "hidden": 64,
    "batch_episodes": 32,
    "buffer_episodes": 1000,
    "target_update_every": 200,
    "target_update_unit": "episodes",
}

ALGORITHMS: dict[str, AlgorithmSpec] = {
    "dial": AlgorithmSpec("cyberdial.agents.dial:DialLearner", sau=False),
    "dial-sau": AlgorithmSpec("cyberdial.agents.dial:DialLearner", sau=True),
    # No learned messages; the scenario's masks (SAU) as DIAL-SAU sees them.
    "qmix": AlgorithmSpec("cyberdial.agents.qmix:QmixLearner", sau=None,
                          defaults=PYMARL_DEFAULTS),
    "iql": AlgorithmSpec("cyberdial.agents.qmix:IqlLearner", sau=None,
                         defaults=PYMARL_DEFAULTS),
}


TARGET_UPDATE_UNITS = ("updates", "episodes")


@dataclass
class TrainConfig:
    """Settings of one training run; every field is a `cyberdial train` option."""

    algo: str = "dial-sau"
    """learning algorithm: dial (DIAL, every action legal), dial-sau (DIAL with
    strategic action unmasking), qmix (DRQN agents and a monotonic mixer, no messages)
    or iql (independent DRQN agents, no messages)"""
    scenario: str = "small"
    """scenario file, or a shipped name (tiny, small, large, xlarge, signal)"""
    seed: int = 0
    """seed of the networks, the exploration and the simulator"""
    episodes: int = 20_000
    """training episodes in all"""
    envs: int = 16
    """episodes played side by side per iteration (copies in the batched simulator)"""
    batch_episodes: int = 16
    """episodes per gradient step, sampled from the episode buffer"""
    buffer_episodes: int = 16
    """episode buffer capacity; equal to batch_episodes means learning from the
    latest episodes only, as DIAL does"""
    updates_per_iteration: int = 1
    """gradient steps after each iteration's episodes"""
    gamma: float = 0.85
    """discount factor (the paper's DIAL setting)"""
    lr: float = 5e-4
    """RMSprop learning rate"""
    momentum: float = 0.05
    """RMSprop momentum (the paper's DIAL setting)"""
    grad_clip: float = 10.0
    """clip the gradient's global norm to this"""
    hidden: int = 128
    """GRU hidden size"""
    target_update_every: int = 100
    """copy the online network into the double-Q target network every this many
    --target-update-unit (DIAL's references count learning steps)"""
    target_update_unit: str = "updates"
    """what --target-update-every counts: updates (gradient steps) or episodes (pymarl)"""
    epsilon_start: float = 1.0
    """ε of ε-greedy exploration at the start"""
    epsilon_end: float = 0.05
    """ε after annealing"""
    epsilon_anneal_fraction: float = 0.5
    """fraction of the training episodes over which ε falls linearly"""
    dru_sigma: float = 2.0
    """standard deviation of the DRU's noise on message logits during training"""
    comm_penalty: float = 0.0
    """weight of a differentiable communication cost (comm_cost × expected bits
    sent) in the loss; 0 (the authors' choice) leaves the cost only in the reward"""
    gate_messages: bool = True
    """a sender's message is 0 (with no gradient) unless its own hosts show something
    in its observation, as the authors' game_comm_limited (DIAL only)"""
    gate_on_activity: bool = False
    """ablation of the gate: it opens only on activity (a scan or exploit) in this step's
    observation, not on a compromise flag the observation still remembers (DIAL only)"""
    reward_scale: float = 0.1
    """rewards are multiplied by this inside the learner (keeps Q-values near 1);
    logged returns are unscaled"""
    no_comm: bool = False
    """ablation: messages forced to 0 (no learned communication)"""
    no_sau: bool = False
    """ablation: switch strategic action unmasking off (every action legal)"""
    mixer: bool = False
    """DIAL only: learn the team reward through QMIX's monotonic mixer over the agents'
    chosen Q-values and the global state (centralised training); each agent still acts
    on its own Q-values and messages, so execution is unchanged"""
    message_bits: int | None = None
    """message width in bits per agent and step (default: the scenario's)"""
    eval_every: int = 1_000
    """greedy evaluation every this many training episodes"""
    eval_episodes: int = 100
    """episodes per greedy evaluation"""
    checkpoint_every: int = 5_000
    """write the checkpoint every this many training episodes (and at the end)"""
    resume_every: int = 0
    """write resume.pt (the whole training state, episode buffer included) every this many
    training episodes, so that `--resume` can continue the run; 0: never"""
    resume: str | None = None
    """a run folder holding resume.pt: continue that run where its last snapshot left it,
    with the same settings, exactly as if it had not stopped"""
    runs_dir: str = "runs"
    """folder for runs/{scenario}__{algo}__{seed}__{time}"""
    run_name: str | None = None
    """name of the run folder (default: {scenario}__{algo}__{seed}__{time})"""
    threads: int = 1
    """torch CPU threads (one is fastest here: the per-step matrices are small, and extra
    threads spin when the cores are shared)"""
    tensorboard: bool = True
    """write TensorBoard scalars (charts/, losses/, comm/)"""
    device: str = "auto"
    """where the networks, sampled batches and unrolls live: cpu, cuda (cuda:N) or auto
    (a GPU when torch sees one); the simulator and the episode buffer stay on the CPU"""

    def validate(self) -> None:
        """Refuse settings that cannot work, with the reason (no asserts)."""
        if self.algo not in ALGORITHMS:
            raise ConfigError(f"unknown algo {self.algo!r}: choose from {', '.join(ALGORITHMS)}")
        positive = ("episodes", "envs", "batch_episodes", "buffer_episodes", "hidden",
                    "target_update_every", "eval_every", "eval_episodes", "checkpoint_every",
                    "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.resume_every < 0:
            raise ConfigError("--resume-every must be 0 (never) or more")
        if self.target_update_unit not in TARGET_UPDATE_UNITS:
            raise ConfigError(f"--target-update-unit must be one of"
                              f" {', '.join(TARGET_UPDATE_UNITS)}, not {self.target_update_unit!r}")
        if self.buffer_episodes < self.batch_episodes:
            raise ConfigError("--buffer-episodes must be at least --batch-episodes")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("--gamma must lie in [0, 1]")
        if self.message_bits is not None and not 0 <= self.message_bits <= 8:
            raise ConfigError("--message-bits must lie in 0..8")
        if self.gate_on_activity and not self.gate_messages:
            raise ConfigError("--gate-on-activity narrows the message gate: it needs"
                              " --gate-messages (drop --no-gate-messages)")
        if self.mixer and not ALGORITHMS[self.algo].learner.endswith(":DialLearner"):
            raise ConfigError(f"--mixer is for dial and dial-sau: {self.algo} "
                              + ("always mixes" if self.algo == "qmix" else "never mixes"
                                 " (qmix is iql with a mixer)"))
        resolve_device(self.device)

    @property
    def variant(self) -> str:
        """The algorithm's name with its ablations, as run folders and reports show it."""
        parts = [self.algo]
        if self.no_comm:
            parts.append("nocomm")
        if self.no_sau and ALGORITHMS[self.algo].sau is not False:
            parts.append("nosau")
        if not self.gate_messages and "dial" in self.algo and not self.no_comm:
            parts.append("nogate")
        if self.gate_on_activity and "dial" in self.algo and not self.no_comm:
            parts.append("actgate")
        if self.mixer:
            parts.append("mix")
        if self.message_bits is not None:
            parts.append(f"bits{self.message_bits}")
        return "-".join(parts)


class ConfigError(CyberdialError):
    """Training settings that cannot work together."""


DEVICES = ("auto", "cpu", "cuda")


def check_device_name(name: str) -> None:
    """Refuse a `--device` that is not auto, cpu, cuda or cuda:N (whatever this machine has)."""
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")


def resolve_device(name: str) -> torch.device:
    """`--device` as a torch device: auto is the first GPU when torch sees one, else the CPU."""
    check_device_name(name)
    kind, _, index = name.partition(":")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: torch sees no GPU here"
                              f" (torch {torch.__version__}); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)


def config_for(algo: str, **settings: Any) -> TrainConfig:
    """A config for `algo`: `TrainConfig`'s defaults, the algorithm's own over them, then
    `settings` over both."""
    spec = ALGORITHMS.get(algo)
    defaults = dict(spec.defaults) if spec is not None else {}
    return TrainConfig(algo=algo, **{**defaults, **settings})


# ------------------------------------------------------------------ scenario


def prepare_scenario(config: TrainConfig, scenario: Scenario | None = None) -> Scenario:
    """The scenario a run trains on: the file's, with the algorithm's and ablations' switches.

    Built through `scenario_from_dict` so the copy is validated and hashes afresh.
    """
    base = scenario if scenario is not None else load_scenario(config.scenario)
    blue: dict[str, Any] = {}
    sau = ALGORITHMS[config.algo].sau
    if config.no_sau:
        sau = False
    if sau is not None and sau != base.blue.sau:
        blue["sau"] = sau
    if config.message_bits is not None and config.message_bits != base.blue.message_bits:
        blue["message_bits"] = config.message_bits
    if not blue:
        return base
    data = base.model_dump(mode="json")
    data["blue"].update(blue)
    return scenario_from_dict(data)


# ------------------------------------------------------------------ learners


class Learner(ABC):
    """What an algorithm provides to the loop: behaviour, learning, a greedy policy, state."""

    uses_messages: ClassVar[bool] = False
    uses_state: bool = False
    """whether `update` reads the global `state()` (a mixer does); if not, the loop leaves
    the episodes' states at 0 instead of asking the simulator every step"""
    acting_noise: NDArray[np.float32] | None = None
    """the DRU noise (B, A, bits) the last `act` drew, or None: the loop stores it with
    the episode so that the replay feeds receivers the very messages that acted"""

    def __init__(self, model: GameModel, config: TrainConfig) -> None:
        self.model = model
        self.config = config
        self.device = resolve_device(config.device)

    @abstractmethod
    def reset(self, n_envs: int) -> None:
        """Start `n_envs` new behaviour episodes (clears recurrent state)."""

    @abstractmethod
    def act(
        self, observations: NDArray[np.float32], masks: NDArray[np.int8], epsilon: float
    ) -> tuple[NDArray[np.int64], NDArray[np.uint8]]:
        """ε-greedy behaviour: actions (B, A) and executed message bits (B, A, bits)."""

    @abstractmethod
    def update(self, batch: EpisodeBatch) -> dict[str, float]:
        """One gradient step on a batch of episodes; returns scalars for `losses/`."""

    @abstractmethod
    def update_target(self) -> None:
        """Copy the online network into the target network."""

    @abstractmethod
    def greedy_policy(self) -> BatchPolicy:
        """The trained agents as a `BatchPolicy`, acting from (observations, masks) alone."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def random_state(self) -> dict[str, Any]:
        """The learner's own random streams (ε-greedy draws, DRU noise), for resuming."""
        rng = getattr(self, "rng", None)
        return {"rng": rng.bit_generator.state} if isinstance(rng, np.random.Generator) else {}

    def set_random_state(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]  # type: ignore[attr-defined]


def learner_class(algo: str) -> type[Learner]:
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algo {algo!r}: choose from {', '.join(ALGORITHMS)}")
    module_name, class_name = ALGORITHMS[algo].learner.split(":")
    cls: type[Learner] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_learner(model: GameModel, config: TrainConfig) -> Learner:
    return learner_class(config.algo)(model, config)


# ------------------------------------------------------------------ the loop


@dataclass
class Progress:
    """What the loop reports after each iteration (the CLI draws it as a progress bar)."""

    episodes: int
    total: int
    episodes_per_second: float
    steps_per_second: float
    train_return: float
    bits_per_episode: float
    epsilon: float
    eval_return: float | None = None
    eval_bits: float | None = None


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    episodes: int
    seconds: float
    evaluations: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_evaluation(self) -> dict[str, float]:
        return self.evaluations[-1] if self.evaluations else {}


def epsilon_at(config: TrainConfig, episodes_done: int) -> float:
    span = max(1.0, config.epsilon_anneal_fraction * config.episodes)
    fraction = min(1.0, episodes_done / span)
    return config.epsilon_start + fraction * (config.epsilon_end - config.epsilon_start)


def collect_episodes(
    sim: SimBatch, learner: Learner, epsilon: float, seed: int
) -> dict[str, NDArray[Any]]:
    """Play one batch of whole episodes with the behaviour policy; arrays lead with (B, T)."""
    model = sim.model
    n, t_max = sim.n_envs, model.scenario.episode_length
    observations, masks = sim.reset(seed)
    learner.reset(n)
    episode: dict[str, NDArray[Any]] = {
        "observations": np.zeros((t_max + 1, n, model.n_agents, model.max_obs), dtype=np.uint8),
        "masks": np.zeros((t_max + 1, n, model.n_agents, model.max_actions), dtype=bool),
        "actions": np.zeros((t_max, n, model.n_agents), dtype=np.int64),
        "messages": np.zeros((t_max, n, model.n_agents, model.message_bits), dtype=np.uint8),
        "rewards": np.zeros((t_max, n), dtype=np.float32),
        # The global states as bits without their progress column (`EpisodeBuffer`),
        # only for learners that read them.
        "state_bits": np.zeros((t_max + 1, n, model.state_size - 1 if learner.uses_state else 0),
                               dtype=np.uint8),
        "noise": np.zeros((t_max + 1, n, model.n_agents, model.message_bits), dtype=np.float32),
        "bits_sent": np.zeros((t_max, n), dtype=np.int64),
    }
    for t in range(t_max):
        episode["observations"][t] = observations
        episode["masks"][t] = masks > 0
        if learner.uses_state:
            episode["state_bits"][t] = sim.state_bits()
        actions, messages = learner.act(observations, masks, epsilon)
        if learner.acting_noise is not None:
            episode["noise"][t] = learner.acting_noise
        result = sim.step(actions, messages)
        episode["actions"][t] = actions
        episode["messages"][t] = messages
        episode["rewards"][t] = result.rewards
        episode["bits_sent"][t] = result.bits_sent
        observations, masks = result.observations, result.masks
    episode["observations"][t_max] = observations
    episode["masks"][t_max] = masks > 0
    if learner.uses_state:
        episode["state_bits"][t_max] = sim.state_bits()
    # Batch-major, as the buffer stores episodes.
    return {name: np.swapaxes(value, 0, 1) for name, value in episode.items()}


def evaluate(model: GameModel, policy: BatchPolicy, episodes: int, seed: int) -> EpisodeStats:
    """Greedy episodes on seeds the training never used."""
    return run_episodes(model, policy, episodes, seed=seed + EVAL_SEED_OFFSET)


class RunLog:
    """A run's folder and what it writes as training goes: eval.csv and TensorBoard."""

    EVAL_COLUMNS = ("episodes", "seconds", "return_mean", "return_std", "bits_per_episode")

    def __init__(self, config: TrainConfig, scenario: Scenario,
                 evaluations: list[dict[str, float]] | None = None) -> None:
        """A new run folder, or with `config.resume` that run's folder, its eval.csv
        rewritten to the `evaluations` its snapshot holds (later rows were not kept)."""
        if config.resume:
            self.run_dir = Path(config.resume)
        else:
            name = config.run_name or (
                f"{scenario.name}__{config.variant}__{config.seed}__{int(time.time())}"
            )
            self.run_dir = Path(config.runs_dir) / name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.run_dir / "checkpoint.pt"
        self.resume_file = self.run_dir / RESUME_FILE
        self.eval_log = self.run_dir / "eval.csv"
        with self.eval_log.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.EVAL_COLUMNS)
            writer.writerows(self._row(record) for record in evaluations or [])
        self.writer = _summary_writer(self.run_dir, config)

    def iteration(self, progress: Progress, metrics: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        step, add = progress.episodes, self.writer.add_scalar
        add("charts/episodic_return", progress.train_return, step)
        add("charts/epsilon", progress.epsilon, step)
        add("charts/episodes_per_second", progress.episodes_per_second, step)
        add("charts/SPS", progress.steps_per_second, step)
        add("comm/bits_per_episode", progress.bits_per_episode, step)
        for name, value in metrics.items():
            add(name if "/" in name else f"losses/{name}", value, step)

    def _row(self, record: Mapping[str, float]) -> list[str]:
        return [f"{record[k]:.6g}" for k in self.EVAL_COLUMNS]

    def evaluation(self, record: Mapping[str, float]) -> None:
        with self.eval_log.open("a", newline="") as handle:
            csv.writer(handle).writerow(self._row(record))
        if self.writer is not None:
            step = int(record["episodes"])
            self.writer.add_scalar("charts/eval_return", record["return_mean"], step)
            self.writer.add_scalar("comm/eval_bits_per_episode", record["bits_per_episode"],
                                   step)
            for name in COMM_FIGURES:  # what the messages carry (agents/messages.py)
                if record[name] == record[name]:  # not NaN
                    self.writer.add_scalar(f"comm/{name}", record[name], step)
        logger.info("%d episodes: greedy return %.2f ± %.2f, %.1f bits", record["episodes"],
                    record["return_mean"], record["return_std"], record["bits_per_episode"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Every:
    """A counter that is due each time a count passes another multiple of `interval`."""

    def __init__(self, interval: int) -> None:
        self.interval, self.next = interval, interval

    def due(self, count: int) -> int:
        """How many multiples `count` passed since the last call (0: not due)."""
        passed = 0
        while count >= self.next:
            self.next += self.interval
            passed += 1
        return passed


RESUME_FILE = "resume.pt"
# Settings a resumed run may change: where and how it runs, not what it learns.
RESUME_FREE = ("resume", "resume_every", "runs_dir", "run_name", "tensorboard", "threads",
               "device")


def save_snapshot(path: Path, config: TrainConfig, state: dict[str, Any]) -> None:
    """Write a resume snapshot whole or not at all (a stop mid-write keeps the last one)."""
    partial = path.with_suffix(".partial")
    torch.save({"format": RESUME_FILE, "config": asdict(config), **state}, partial)
    partial.replace(path)


def load_snapshot(config: TrainConfig) -> dict[str, Any]:
    """The snapshot in `config.resume`, refused with a one-line reason if it cannot
    continue this config (another setting, no snapshot, a damaged file)."""
    path = Path(str(config.resume)) / RESUME_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {config.resume}: no {RESUME_FILE} there (a run writes it"
                          " with --resume-every N; a finished run removes it)")
    try:
        snapshot: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        saved = snapshot["config"]
    except Exception as error:  # a damaged or foreign file: one line, not a traceback
        raise ConfigError(f"{path}: not a readable resume snapshot ({type(error).__name__})"
                          ) from None
    for name, value in asdict(config).items():
        if name not in RESUME_FREE and saved.get(name) != value:
            raise ConfigError(
                f"--resume {config.resume}: the run was trained with --{name.replace('_', '-')}"
                f" {saved.get(name)!r}, not {value!r}: resume it with its own settings")
    return snapshot


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    scenario: Scenario | None = None,
) -> TrainResult:
    """Train `config.algo` on the simulator; returns where the run and its checkpoint are."""
    from cyberdial.agents.checkpoint import save_checkpoint

    config.validate()
    torch.set_num_threads(config.threads)
    keep_freed_memory()  # no page faults on each update's tensors (agents/memory.py)
    torch.manual_seed(config.seed)
    snapshot = load_snapshot(config) if config.resume else None
    scenario = prepare_scenario(config, scenario)
    model = GameModel(scenario)
    learner = make_learner(model, config)
    buffer = EpisodeBuffer(model, config.buffer_episodes, with_states=learner.uses_state)
    rng = np.random.default_rng(config.seed)
    target_copy, evaluation, checkpointing, resuming = (
        Every(config.target_update_every), Every(config.eval_every),
        Every(config.checkpoint_every), Every(config.resume_every or config.episodes + 1))
    evaluations: list[dict[str, float]] = []
    episodes_done = updates_done = iteration = 0
    elapsed_before = 0.0
    if snapshot is not None:
        learner.load_state_dict(snapshot["learner"])
        learner.set_random_state(snapshot["learner_random"])
        restore_buffer(buffer, snapshot["buffer"])
        rng.bit_generator.state = snapshot["loop_random"]
        torch.set_rng_state(snapshot["torch_random"])
        episodes_done, updates_done, iteration = (
            snapshot["episodes"], snapshot["updates"], snapshot["iteration"])
        for counter, due_next in zip((target_copy, evaluation, checkpointing, resuming),
                                     snapshot["due_next"], strict=True):
            counter.next = due_next
        evaluations = snapshot["evaluations"]
        elapsed_before = snapshot["seconds"]
    log = RunLog(config, scenario, evaluations)
    logger.info("%s %s on %s in %s (%s)", "resuming" if snapshot else "training",
                config.variant, scenario.name, log.run_dir, learner.device)

    sim = SimBatch(model, n_envs=config.envs, seed=config.seed)
    started = time.perf_counter() - elapsed_before
    while episodes_done < config.episodes:
        # 1. Play a batch of whole episodes with the ε-greedy behaviour policy.
        n = min(config.envs, config.episodes - episodes_done)
        if n != sim.n_envs:
            sim = SimBatch(model, n_envs=n, seed=config.seed)
        epsilon = epsilon_at(config, episodes_done)
        # One seed per iteration: reproducible, and never an evaluation seed.
        episodes = collect_episodes(sim, learner, epsilon, seed=config.seed * 7_919 + iteration)
        buffer.add(episodes)
        episodes_done += n
        iteration += 1

        # 2. Learn from sampled episodes; the target network follows every N updates
        #    (DIAL's references) or every N episodes (pymarl's QMIX).
        metrics: dict[str, float] = {}
        for _ in range(config.updates_per_iteration):
            metrics = learner.update(buffer.sample(config.batch_episodes, rng, learner.device))
            updates_done += 1
        if target_copy.due(updates_done if config.target_update_unit == "updates"
                           else episodes_done):
            learner.update_target()

        # 3. Log; evaluate greedily and checkpoint now and then, and at the end.
        elapsed = time.perf_counter() - started
        progress = Progress(
            episodes=episodes_done,
            total=config.episodes,
            episodes_per_second=episodes_done / elapsed,
            steps_per_second=episodes_done * scenario.episode_length / elapsed,
            train_return=float(episodes["rewards"].sum(axis=1).mean()),
            bits_per_episode=float(episodes["bits_sent"].sum(axis=1).mean()),
            epsilon=epsilon,
        )
        log.iteration(progress, metrics)
        last = episodes_done >= config.episodes
        if evaluation.due(episodes_done) or last:
            summary = evaluate(model, learner.greedy_policy(), config.eval_episodes,
                               config.seed).summary()
            record = {
                "episodes": float(episodes_done),
                "seconds": time.perf_counter() - started,
                **{name: summary[name] for name in ("return_mean", "return_std",
                                                    "bits_per_episode", *COMM_FIGURES)},
            }
            evaluations.append(record)
            log.evaluation(record)
            progress.eval_return = record["return_mean"]
            progress.eval_bits = record["bits_per_episode"]
        if checkpointing.due(episodes_done) or last:
            save_checkpoint(log.checkpoint, learner, config, model, episodes_done,
                            evaluations[-1] if evaluations else None)
        if resuming.due(episodes_done) and not last:
            save_snapshot(log.resume_file, config, {
                "learner": learner.state_dict(), "learner_random": learner.random_state(),
                "buffer": buffer_snapshot(buffer), "loop_random": rng.bit_generator.state,
                "torch_random": torch.get_rng_state(), "episodes": episodes_done,
                "updates": updates_done, "iteration": iteration,
                "due_next": [c.next for c in (target_copy, evaluation, checkpointing,
                                              resuming)],
                "evaluations": evaluations, "seconds": time.perf_counter() - started})
        if on_progress is not None:
            on_progress(progress)
    log.resume_file.unlink(missing_ok=True)  # finished: nothing left to resume
    log.close()
    return TrainResult(
        run_dir=log.run_dir,
        checkpoint=log.checkpoint,
        episodes=episodes_done,
        seconds=time.perf_counter() - started,
        evaluations=evaluations,
    )


def _summary_writer(run_dir: Path, config: TrainConfig) -> Any:
    if not config.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    writer.add_text(
        "config",
        "|setting|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in asdict(config).items()),
    )
    return writer
