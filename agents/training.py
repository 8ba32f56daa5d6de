"""The one training loop for every learning blue: config, episode buffer, learner registry.

`train()` plays batches of whole episodes in the batched simulator (`SimBatch`)
with an ε-greedy behaviour policy, stores them in an `EpisodeBuffer` (observations,
masks, actions, messages, rewards, global state), hands sampled batches to the
algorithm's `Learner`, evaluates greedily now and then, logs to TensorBoard and
writes checkpoints. Algorithms (DIAL, DIAL-SAU, QMIX, IQL) plug in through
`ALGORITHMS`; they share this loop, the buffer and the checkpoint format.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import inspect
import itertools
import logging
import textwrap
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from cyberdial.agents.baselines import BatchPolicy
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
    """scenario file, or a shipped name (tiny, small, large, signal)"""
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
    reward_scale: float = 0.1
    """rewards are multiplied by this inside the learner (keeps Q-values near 1);
    logged returns are unscaled"""
    no_comm: bool = False
    """ablation: messages forced to 0 (no learned communication)"""
    no_sau: bool = False
    """ablation: switch strategic action unmasking off (every action legal)"""
    message_bits: int | None = None
    """message width in bits per agent and step (default: the scenario's)"""
    eval_every: int = 1_000
    """greedy evaluation every this many training episodes"""
    eval_episodes: int = 100
    """episodes per greedy evaluation"""
    checkpoint_every: int = 5_000
    """write the checkpoint every this many training episodes (and at the end)"""
    runs_dir: str = "runs"
    """folder for runs/{scenario}__{algo}__{seed}__{time}"""
    run_name: str | None = None
    """name of the run folder (default: {scenario}__{algo}__{seed}__{time})"""
    threads: int = 1
    """torch CPU threads (one is fastest here: the per-step matrices are small, and extra
    threads spin when the cores are shared)"""
    tensorboard: bool = True
    """write TensorBoard scalars (charts/, losses/, comm/)"""

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
        if self.target_update_unit not in TARGET_UPDATE_UNITS:
            raise ConfigError(f"--target-update-unit must be one of"
                              f" {', '.join(TARGET_UPDATE_UNITS)}, not {self.target_update_unit!r}")
        if self.buffer_episodes < self.batch_episodes:
            raise ConfigError("--buffer-episodes must be at least --batch-episodes")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("--gamma must lie in [0, 1]")
        if self.message_bits is not None and not 0 <= self.message_bits <= 8:
            raise ConfigError("--message-bits must lie in 0..8")

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
        if self.message_bits is not None:
            parts.append(f"bits{self.message_bits}")
        return "-".join(parts)


class ConfigError(CyberdialError):
    """Training settings that cannot work together."""


# ------------------------------------------------------------------ config <-> CLI


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, read from the source (as tyro does)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(parser: Any, cls: type = TrainConfig) -> None:
    """One `--option` per dataclass field; its docstring is the help text.

    Options not given stay out of the parsed namespace (`argparse.SUPPRESS`), so
    `config_from_args` can tell them apart and fill in the algorithm's own defaults.
    """
    docs = field_docs(cls)
    defaults = cls()
    for item in fields(cls):
        option = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        help_text = docs.get(item.name, "")
        kind = str(item.type)
        if kind == "bool":
            if default:
                parser.add_argument(f"--no-{item.name.replace('_', '-')}", dest=item.name,
                                    action="store_false", default=argparse.SUPPRESS,
                                    help=help_text)
            else:
                parser.add_argument(option, dest=item.name, action="store_true",
                                    default=argparse.SUPPRESS, help=help_text)
            continue
        if kind.startswith("int"):
            converter: Callable[[str], Any] = int
        elif kind.startswith("float"):
            converter = float
        else:
            converter = str
        extra: dict[str, Any] = {}
        if item.name == "algo":
            extra["choices"] = sorted(ALGORITHMS)
        if item.name == "target_update_unit":
            extra["choices"] = TARGET_UPDATE_UNITS
        shown = "the scenario's" if default is None else str(default)
        if cls is TrainConfig:
            own = [f"{name}: {spec.defaults[item.name]}" for name, spec in ALGORITHMS.items()
                   if item.name in spec.defaults]
            shown = "; ".join([shown, *own])
        parser.add_argument(option, dest=item.name, type=converter, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {shown})", **extra)


def config_from_args(args: Any, cls: type = TrainConfig) -> Any:
    """The config the options ask for; options not given take the algorithm's defaults."""
    given = {item.name: getattr(args, item.name) for item in fields(cls)
             if hasattr(args, item.name)}
    if cls is TrainConfig:
        return config_for(given.pop("algo", TrainConfig.algo), **given)
    return cls(**given)


def parse_setting(name: str, raw: str) -> Any:
    """A `TrainConfig` field's value from text, by the field's type (for `compare --option`)."""
    kinds = {item.name: str(item.type) for item in fields(TrainConfig)}
    if name not in kinds:
        raise ConfigError(f"unknown setting {name!r} (see `cyberdial train --help`)")
    kind = kinds[name]
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if "None" in kind and raw.lower() == "none":
            return None
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        wanted = ("true or false" if kind == "bool" else "an integer" if kind.startswith("int")
                  else "a number")
        raise ConfigError(f"{name} takes {wanted}, not {raw[:40]!r}") from None
    return raw


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


# ------------------------------------------------------------------ episode buffer


@dataclass
class EpisodeBatch:
    """Whole episodes as tensors; T steps, so observations and masks have T + 1 entries."""

    observations: torch.Tensor  # (B, T+1, A, max_obs) float32
    masks: torch.Tensor  # (B, T+1, A, max_actions) bool
    actions: torch.Tensor  # (B, T, A) int64
    messages: torch.Tensor  # (B, T, A, bits) float32, the executed bits
    rewards: torch.Tensor  # (B, T) float32, the team reward
    states: torch.Tensor  # (B, T+1, state_size) float32, for centralised critics/mixers
    noise: torch.Tensor  # (B, T+1, A, bits) float32, the DRU noise that acted (0 if none)

    @property
    def size(self) -> int:
        return int(self.actions.shape[0])

    @property
    def steps(self) -> int:
        return int(self.actions.shape[1])


EPISODE_FIELDS = ("observations", "masks", "actions", "messages", "rewards", "states", "noise")


class EpisodeBuffer:
    """A ring of whole episodes in NumPy arrays (observations are bits, kept as uint8)."""

    def __init__(self, model: GameModel, capacity: int) -> None:
        t, a = model.scenario.episode_length, model.n_agents
        self.capacity = capacity
        self.observations = np.zeros((capacity, t + 1, a, model.max_obs), dtype=np.uint8)
        self.masks = np.zeros((capacity, t + 1, a, model.max_actions), dtype=bool)
        self.actions = np.zeros((capacity, t, a), dtype=np.int64)
        self.messages = np.zeros((capacity, t, a, model.message_bits), dtype=np.uint8)
        self.rewards = np.zeros((capacity, t), dtype=np.float32)
        self.states = np.zeros((capacity, t + 1, model.state_size), dtype=np.float32)
        self.noise = np.zeros((capacity, t + 1, a, model.message_bits), dtype=np.float32)
        self.next = 0
        self.filled = 0

    def add(self, episodes: dict[str, NDArray[Any]]) -> None:
        n = len(episodes["actions"])
        index = (self.next + np.arange(n)) % self.capacity
        for name in EPISODE_FIELDS:
            getattr(self, name)[index] = episodes[name]
        self.next = int((self.next + n) % self.capacity)
        self.filled = min(self.filled + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> EpisodeBatch:
        if n >= self.filled:
            index = np.arange(self.filled)
        else:
            index = rng.choice(self.filled, size=n, replace=False)
        return EpisodeBatch(
            observations=torch.from_numpy(self.observations[index].astype(np.float32)),
            masks=torch.from_numpy(self.masks[index]),
            actions=torch.from_numpy(self.actions[index]),
            messages=torch.from_numpy(self.messages[index].astype(np.float32)),
            rewards=torch.from_numpy(self.rewards[index]),
            states=torch.from_numpy(self.states[index]),
            noise=torch.from_numpy(self.noise[index]),
        )


# ------------------------------------------------------------------ learners


class Learner(ABC):
    """What an algorithm provides to the loop: behaviour, learning, a greedy policy, state."""

    uses_messages: ClassVar[bool] = False
    acting_noise: NDArray[np.float32] | None = None
    """the DRU noise (B, A, bits) the last `act` drew, or None: the loop stores it with
    the episode so that the replay feeds receivers the very messages that acted"""

    def __init__(self, model: GameModel, config: TrainConfig) -> None:
        self.model = model
        self.config = config

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
        "states": np.zeros((t_max + 1, n, model.state_size), dtype=np.float32),
        "noise": np.zeros((t_max + 1, n, model.n_agents, model.message_bits), dtype=np.float32),
        "bits_sent": np.zeros((t_max, n), dtype=np.int64),
    }
    for t in range(t_max):
        episode["observations"][t] = observations
        episode["masks"][t] = masks > 0
        episode["states"][t] = sim.state()
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
    episode["states"][t_max] = sim.state()
    # Batch-major, as the buffer stores episodes.
    return {name: np.swapaxes(value, 0, 1) for name, value in episode.items()}


def evaluate(model: GameModel, policy: BatchPolicy, episodes: int, seed: int) -> EpisodeStats:
    """Greedy episodes on seeds the training never used."""
    return run_episodes(model, policy, episodes, seed=seed + EVAL_SEED_OFFSET)


def train(
    config: TrainConfig,
    on_progress: Callable[[Progress], None] | None = None,
    scenario: Scenario | None = None,
) -> TrainResult:
    """Train `config.algo` on the simulator; returns where the run and its checkpoint are."""
    from cyberdial.agents.checkpoint import save_checkpoint

    config.validate()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    scenario = prepare_scenario(config, scenario)
    model = GameModel(scenario)
    learner = make_learner(model, config)
    buffer = EpisodeBuffer(model, config.buffer_episodes)
    rng = np.random.default_rng(config.seed)
    run_name = config.run_name or (
        f"{scenario.name}__{config.variant}__{config.seed}__{int(time.time())}"
    )
    run_dir = Path(config.runs_dir) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint.pt"
    writer = _summary_writer(run_dir, config)
    eval_log = run_dir / "eval.csv"
    with eval_log.open("w", newline="") as handle:
        csv.writer(handle).writerow(
            ["episodes", "seconds", "return_mean", "return_std", "bits_per_episode"]
        )
    logger.info("training %s on %s into %s", config.variant, scenario.name, run_dir)

    sim = SimBatch(model, n_envs=config.envs, seed=config.seed)
    steps_per_episode = scenario.episode_length
    evaluations: list[dict[str, float]] = []
    episodes_done = 0
    updates_done = 0
    next_target = config.target_update_every
    next_eval = config.eval_every
    next_checkpoint = config.checkpoint_every
    started = time.perf_counter()
    iteration = 0
    while episodes_done < config.episodes:
        n = min(config.envs, config.episodes - episodes_done)
        if n != sim.n_envs:
            sim = SimBatch(model, n_envs=n, seed=config.seed)
        epsilon = epsilon_at(config, episodes_done)
        # One seed per iteration: reproducible, and never an evaluation seed.
        episodes = collect_episodes(sim, learner, epsilon, seed=config.seed * 7_919 + iteration)
        buffer.add(episodes)
        episodes_done += n
        iteration += 1
        metrics: dict[str, float] = {}
        for _ in range(config.updates_per_iteration):
            metrics = learner.update(buffer.sample(config.batch_episodes, rng))
            updates_done += 1
        # The target network follows the online one every N updates (DIAL's references)
        # or every N episodes (pymarl's QMIX).
        counted = updates_done if config.target_update_unit == "updates" else episodes_done
        while counted >= next_target:
            learner.update_target()
            next_target += config.target_update_every

        elapsed = time.perf_counter() - started
        returns = episodes["rewards"].sum(axis=1)
        bits = episodes["bits_sent"].sum(axis=1)
        progress = Progress(
            episodes=episodes_done,
            total=config.episodes,
            episodes_per_second=episodes_done / elapsed,
            steps_per_second=episodes_done * steps_per_episode / elapsed,
            train_return=float(returns.mean()),
            bits_per_episode=float(bits.mean()),
            epsilon=epsilon,
        )
        if writer is not None:
            writer.add_scalar("charts/episodic_return", progress.train_return, episodes_done)
            writer.add_scalar("charts/epsilon", epsilon, episodes_done)
            writer.add_scalar("charts/episodes_per_second", progress.episodes_per_second,
                              episodes_done)
            writer.add_scalar("charts/SPS", progress.steps_per_second, episodes_done)
            writer.add_scalar("comm/bits_per_episode", progress.bits_per_episode, episodes_done)
            for name, value in metrics.items():
                writer.add_scalar(name if "/" in name else f"losses/{name}", value, episodes_done)

        last = episodes_done >= config.episodes
        if episodes_done >= next_eval or last:
            while next_eval <= episodes_done:
                next_eval += config.eval_every
            stats = evaluate(model, learner.greedy_policy(), config.eval_episodes, config.seed)
            summary = stats.summary()
            record = {
                "episodes": float(episodes_done),
                "seconds": time.perf_counter() - started,
                "return_mean": summary["return_mean"],
                "return_std": summary["return_std"],
                "bits_per_episode": summary["bits_per_episode"],
                **{name: summary[name] for name in COMM_FIGURES},
            }
            evaluations.append(record)
            with eval_log.open("a", newline="") as handle:
                csv.writer(handle).writerow([f"{record[k]:.6g}" for k in
                                             ("episodes", "seconds", "return_mean", "return_std",
                                              "bits_per_episode")])
            progress.eval_return = record["return_mean"]
            progress.eval_bits = record["bits_per_episode"]
            if writer is not None:
                writer.add_scalar("charts/eval_return", record["return_mean"], episodes_done)
                writer.add_scalar("comm/eval_bits_per_episode", record["bits_per_episode"],
                                  episodes_done)
                for name in COMM_FIGURES:  # what the messages carry (agents/messages.py)
                    if record[name] == record[name]:  # not NaN
                        writer.add_scalar(f"comm/{name}", record[name], episodes_done)
            logger.info("%d episodes: greedy return %.2f ± %.2f, %.1f bits", episodes_done,
                        record["return_mean"], record["return_std"], record["bits_per_episode"])
        if episodes_done >= next_checkpoint or last:
            while next_checkpoint <= episodes_done:
                next_checkpoint += config.checkpoint_every
            save_checkpoint(checkpoint, learner, config, model, episodes_done,
                            evaluations[-1] if evaluations else None)
        if on_progress is not None:
            on_progress(progress)
    if writer is not None:
        writer.close()
    return TrainResult(
        run_dir=run_dir,
        checkpoint=checkpoint,
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
