"""`cyberdial compare`'s engine: train and score algorithms over scenarios and seeds, report.

Each (scenario, algorithm, seed) is one *run*: a learner trained by the shared
loop (`agents/training.py`) and then scored greedily on held-out episodes, or a
hand-written blue (react, random, sleep) scored on the same episodes. Runs go to
an `Engine`: a pool of local worker processes (one torch thread each, the default)
or Ray tasks (`agents/ray_engine.py`, docs/scale.md); each finished run leaves
`final/<run>.json` (its learning curve and held-out figures), so a cut
comparison resumes where it stopped. `write_report` turns those files into
`report.md` (mean ± std over seeds) and one PNG of learning curves per scenario.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np

from cyberdial.agents.baselines import BASELINES, make_baseline
from cyberdial.agents.options import parse_setting
from cyberdial.agents.rollout import run_episodes
from cyberdial.agents.training import ALGORITHMS, TrainConfig, check_device_name, config_for
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario

logger = logging.getLogger(__name__)

# Held-out evaluation episodes: far from training seeds (seed·7919 + iteration) and from
# the loop's own greedy evaluations (seed + 1 000 000). Every algorithm and seed is scored
# on the very same episodes, so differences are the policies', not the dice's.
HELD_OUT_SEED = 2_000_000
NO_COMM_SUFFIX = "-nocomm"
MIX_SUFFIX = "-mix"
MANIFEST = "compare.json"
# Two-sided 95 % Student-t quantiles by degrees of freedom (for the curves' bands).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)


class CompareError(CyberdialError):
    """A comparison that cannot run as asked."""


# ------------------------------------------------------------------ what to run


@dataclass
class CompareConfig:
    """One comparison: every algorithm on every scenario with every seed."""

    name: str = "compare"
    scenarios: list[str] = field(default_factory=lambda: ["small", "large"])
    algos: list[str] = field(default_factory=lambda: ["dial-sau", "qmix", "iql", "react"])
    seeds: int = 5
    episodes: dict[str, int] = field(default_factory=dict)
    """training episodes per scenario"""
    eval_points: int = 10
    """greedy evaluations during training (the learning curve's points)"""
    eval_episodes: int = 100
    """episodes per greedy evaluation during training"""
    final_episodes: int = 500
    """held-out episodes each finished run is scored on"""
    workers: int = 2
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per-algorithm training settings: {algorithm as compare names it: {field: value}}"""
    results_dir: str = "results"
    device: str = "auto"
    """where each run's networks live (`TrainConfig.device`), resolved where the run
    trains; not a setting a resume must match (the same learner on another device)"""
    command: str = ""
    """the command line that started the comparison, quoted in the report"""

    @property
    def out_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def settings(self) -> dict[str, Any]:
        """What must not change when a comparison is resumed (its runs depend on it)."""
        settings: dict[str, Any] = {
            "episodes": self.episodes, "eval_points": self.eval_points,
            "eval_episodes": self.eval_episodes, "final_episodes": self.final_episodes}
        if self.options:  # absent when unused, so older comparisons still resume
            settings["options"] = self.options
        return settings

    def validate(self) -> None:
        for token in self.algos:
            parse_algo(token)
        for token, changes in self.options.items():
            check_options(token, changes, self.algos)
        for scenario in self.scenarios:
            load_scenario(scenario)  # a ScenarioError names the file and the problem
            if scenario not in self.episodes and any(not is_baseline(a) for a in self.algos):
                raise CompareError(f"no episode budget for scenario {scenario!r}: pass"
                                   f" --episodes N or --episodes {scenario}=N")
        if self.seeds < 1 or self.workers < 1 or self.final_episodes < 1:
            raise CompareError("--seeds, --workers and --final-episodes must be at least 1")
        if self.eval_points < 1 or self.eval_episodes < 1:
            raise CompareError("--eval-points and --eval-episodes must be at least 1")
        check_device_name(self.device)


def is_baseline(token: str) -> bool:
    return token in BASELINES


def sends_messages(algo: str) -> bool:
    """Whether a registered learner learns messages (DIAL's family)."""
    return algo in ALGORITHMS and ALGORITHMS[algo].learner.endswith(":DialLearner")


def parse_algo(token: str) -> tuple[str, dict[str, Any]]:
    """An algorithm as compare names it -> (registry name, config changes).

    A registered name may carry ablation suffixes, in this order: `-nocomm` (messages
    forced to 0: `dial-sau-nocomm`) and `-mix` (DIAL with QMIX's mixer: `dial-sau-mix`);
    baselines map to themselves.
    """
    if is_baseline(token) or token in ALGORITHMS:
        return token, {}
    base, changes = token, {}
    if base.endswith(MIX_SUFFIX):
        base, changes["mixer"] = base.removesuffix(MIX_SUFFIX), True
    if base.endswith(NO_COMM_SUFFIX) and base.removesuffix(NO_COMM_SUFFIX) in ALGORITHMS:
        base, changes["no_comm"] = base.removesuffix(NO_COMM_SUFFIX), True
    if base in ALGORITHMS:
        if not sends_messages(base):
            suffix = NO_COMM_SUFFIX if changes.get("no_comm") else MIX_SUFFIX
            reason = ("sends no messages, so there is nothing to switch off" if suffix ==
                      NO_COMM_SUFFIX else "is not DIAL: qmix always mixes, iql never does")
            raise CompareError(f"algorithm {token!r}: {base} {reason} ({suffix})")
        return base, {name: changes[name] for name in ("no_comm", "mixer") if name in changes}
    dial = [a for a in ALGORITHMS if sends_messages(a)]
    known = [*ALGORITHMS, *(f"{a}{NO_COMM_SUFFIX}" for a in dial),
             *(f"{a}{MIX_SUFFIX}" for a in dial), *BASELINES]
    raise CompareError(f"unknown algorithm {token!r}: choose from {', '.join(known)}"
                       f" (suffixes combine: dial-sau{NO_COMM_SUFFIX}{MIX_SUFFIX})")


# Settings that compare itself sets per run; an --option may not change them.
RUN_SETTINGS = frozenset({"algo", "scenario", "seed", "episodes", "eval_every", "eval_episodes",
                          "checkpoint_every", "runs_dir", "run_name", "threads",
                          "device"})
# Settings that only mean something for a learner that sends messages.
MESSAGE_SETTINGS = frozenset({"no_comm", "gate_messages", "gate_on_activity", "comm_penalty",
                              "dru_sigma", "message_bits"})


def check_options(token: str, changes: dict[str, Any], algos: Sequence[str]) -> None:
    """Refuse per-algorithm options that cannot apply, naming the option."""
    if token not in algos:
        raise CompareError(f"--option {token}:...: {token!r} is not one of --algos"
                           f" ({', '.join(algos)})")
    if is_baseline(token):
        raise CompareError(f"--option {token}:...: {token} is a hand-written blue; it has no"
                           " training settings")
    algo, _ = parse_algo(token)
    known = {item.name for item in fields(TrainConfig)}
    for name in changes:
        option = f"--option {token}:{name}"
        if name not in known:
            raise CompareError(f"{option}: unknown setting (see `cyberdial train --help`)")
        if name in RUN_SETTINGS:
            raise CompareError(f"{option}: compare sets {name} for every run itself")
        if name in MESSAGE_SETTINGS and not sends_messages(algo):
            raise CompareError(f"{option}: {algo} sends no messages, so {name} makes no sense")
    try:
        config_for(algo, **parse_algo(token)[1], **changes).validate()
    except CyberdialError as error:
        raise CompareError(f"--option {token}: {error}") from None


def parse_option(value: str) -> tuple[str, str, Any]:
    """`ALGO:FIELD=VALUE` -> (algorithm token, field, typed value)."""
    token, colon, assignment = value.partition(":")
    name, equals, raw = assignment.partition("=")
    if not colon or not equals or not token or not name:
        raise CompareError(f"--option {value!r}: expected ALGO:SETTING=VALUE"
                           " (e.g. dial-sau:comm_penalty=1.0)")
    name = name.strip().replace("-", "_")
    try:
        return token, name, parse_setting(name, raw.strip())
    except CyberdialError as error:
        raise CompareError(f"--option {value!r}: {error}") from None


@dataclass(frozen=True)
class Job:
    scenario: str
    algo: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.scenario}__{self.algo}__{self.seed}"


def plan(config: CompareConfig) -> list[Job]:
    """Every run, the most expensive first (bigger scenarios, learners) so workers finish
    together rather than one straggling with a large run at the end; among runs of equal
    cost seed by seed (every algorithm's seed 0, then seed 1, ...), so that a comparison
    cut short already holds paired seeds of every algorithm."""
    jobs = [Job(s, a, seed) for s in config.scenarios for a in config.algos
            for seed in range(config.seeds)]

    def cost(job: Job) -> float:
        if is_baseline(job.algo):
            return 0.0
        scenario = load_scenario(job.scenario)
        return config.episodes[job.scenario] * len(scenario.all_hosts) * scenario.episode_length

    order = {algo: i for i, algo in enumerate(config.algos)}
    return sorted(jobs, key=lambda job: (-cost(job), job.seed, order[job.algo]))


def result_path(config: CompareConfig, job: Job) -> Path:
    return config.out_dir / "final" / f"{job.key}.json"


def pending(config: CompareConfig) -> list[Job]:
    """The runs without a result file yet (a finished run is never redone)."""
    return [job for job in plan(config) if not result_path(config, job).is_file()]


# ------------------------------------------------------------------ one run (in a worker)


def every_step_bits(model: GameModel) -> int:
    """Bits per episode of a blue that sends a 1 on every bit, every step."""
    return model.n_agents * model.message_bits * model.scenario.episode_length


def run_job(
    job: Job, config: CompareConfig, scenario: Scenario | None = None,
    where: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or not) and score one run; writes and returns its result record.

    `scenario` is `job.scenario` already parsed (an engine whose worker may not see the
    driver's files passes the driver's text); `where` says where the run ran (the record's
    `where`; default: this host and process).
    """
    import torch

    from cyberdial.agents.checkpoint import load_policy
    from cyberdial.agents.training import RESUME_FILE, ConfigError, train

    torch.set_num_threads(1)  # workers share the cores; extra threads only spin
    started = time.perf_counter()
    curve: list[dict[str, float]] = []
    episodes = 0
    if scenario is None:
        scenario = load_scenario(job.scenario)
    if is_baseline(job.algo):
        model = GameModel(scenario)
        policy = make_baseline(job.algo, model, seed=job.seed)
    else:
        algo, changes = parse_algo(job.algo)
        episodes = config.episodes[job.scenario]
        eval_every = max(1, episodes // config.eval_points)
        # A snapshot at every evaluation point: a stopped sweep continues its unfinished
        # runs from their last one (runs on Ray write theirs on the worker: they restart).
        settings = config_for(
            algo, scenario=job.scenario, seed=job.seed, episodes=episodes,
            eval_every=eval_every, eval_episodes=config.eval_episodes,
            checkpoint_every=episodes, resume_every=eval_every,
            runs_dir=str(config.out_dir / "runs"), run_name=job.key, threads=1, **changes,
            device=config.device, **config.options.get(job.algo, {}),
        )
        run_dir = config.out_dir / "runs" / job.key
        resumable = (run_dir / RESUME_FILE).is_file()
        if not resumable and run_dir.exists():
            # What an earlier start left (its TensorBoard events) would mix with this
            # run's: the comparison's run folders are its own.
            shutil.rmtree(run_dir)
        try:
            result = train(replace(settings, resume=str(run_dir)) if resumable else settings,
                           scenario=scenario)
        except ConfigError as error:
            if not resumable:
                raise
            # A snapshot this run cannot continue (other settings, damaged): discarded,
            # the run trains afresh.
            logger.warning("%s: %s; training it from its start", job.key, error)
            shutil.rmtree(run_dir)
            result = train(settings, scenario=scenario)
        curve = result.evaluations
        policy, model, _ = load_policy(result.checkpoint, device=config.device)
    train_seconds = time.perf_counter() - started
    stats = run_episodes(model, policy, config.final_episodes, seed=HELD_OUT_SEED)
    record = {
        "scenario": job.scenario,
        "algo": job.algo,
        "seed": job.seed,
        "episodes": episodes,
        "train_seconds": train_seconds,
        "curve": curve,
        "final": stats.summary(),
        "every_step_bits": every_step_bits(model),
        "comm_cost": model.scenario.blue.comm_cost,
        "where": where or {"engine": "local", "host": socket.gethostname(), "pid": os.getpid()},
    }
    path = result_path(config, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    partial.replace(path)  # a result file is whole or absent: resuming trusts it
    return record


# ------------------------------------------------------------------ engines


@dataclass
class Outcome:
    """How one run ended: its record, or why it failed."""

    job: Job
    record: dict[str, Any] | None = None
    error: str | None = None


class Engine(Protocol):
    """Where runs execute. `run` yields each run's outcome as it ends; a run that fails
    yields an error and the others go on. It stops what it started, also on Ctrl-C
    (KeyboardInterrupt passes through it after the cleanup)."""

    def describe(self) -> str:
        """One line for the user: where the runs go."""
        ...

    def run(
        self, jobs: Sequence[Job], config: CompareConfig
    ) -> Generator[Outcome, None, None]: ...


@dataclass
class LocalEngine:
    """Worker processes on this machine (the default): one torch thread each."""

    workers: int = 2

    def describe(self) -> str:
        return f"{self.workers} worker{'' if self.workers == 1 else 's'}"

    def run(self, jobs: Sequence[Job], config: CompareConfig) -> Generator[Outcome, None, None]:
        # spawn, not fork: a forked child would inherit torch's thread pools and locks.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            futures: dict[Future[dict[str, Any]], Job] = {
                pool.submit(run_job, job, config): job for job in jobs
            }
            remaining = set(futures)
            complete = False
            try:
                while remaining:
                    finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for future in finished:
                        try:
                            outcome = Outcome(futures[future], record=future.result())
                        except Exception as error:  # one broken run must not stop the others
                            outcome = Outcome(futures[future], error=describe_error(error))
                        yield outcome
                complete = True
            finally:
                if not complete:  # Ctrl-C, kill, or the caller stopped listening
                    stop_workers(pool)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Start nothing more and end the runs in progress (their unfinished runs are trained
    again on resume). Leaving the pool would wait for running workers, which a signal to
    this process alone (`kill PID`, not a terminal's Ctrl-C to the whole group) never
    reaches: the command would hang for hours while its runs went on."""
    # CPython's ProcessPoolExecutor keeps its worker processes by PID in `_processes`.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=60)


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


ENGINES = ("local", "ray")


def make_engine(name: str, workers: int, address: str | None = None) -> Engine:
    """The engine `--engine NAME` asks for (Ray is imported only when asked for)."""
    if name == "local":
        if address is not None:
            raise CompareError("--address is for --engine ray (the local workers need none)")
        return LocalEngine(workers)
    if name == "ray":
        import importlib.util

        from cyberdial.agents.ray_engine import RayEngine, reachable

        if importlib.util.find_spec("ray") is None:
            raise CompareError("--engine ray needs Ray: pip install 'cyberdial[ray]'")
        if address:
            reachable(address)  # before anything is written: a wrong address is one line
        return RayEngine(address=address, cpus=workers)
    raise CompareError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}")


def check_manifest(config: CompareConfig) -> None:
    """Refuse to resume a comparison whose runs were made with other settings."""
    manifest = config.out_dir / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("settings") != config.settings():
            raise CompareError(
                f"{config.out_dir} holds runs made with {saved.get('settings')}, not"
                f" {config.settings()}: use another --name, or the same settings to resume"
            )
    config.out_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": config.settings(), "command": config.command,
              "config": asdict(config)}
    manifest.write_text(json.dumps(record, indent=1), encoding="utf-8")


def run_comparison(
    config: CompareConfig,
    on_done: Callable[[Job, dict[str, Any] | None, int, int], None] | None = None,
    engine: Engine | None = None,
) -> list[tuple[Job, str]]:
    """Run every pending run on `engine` (default: `config.workers` local processes);
    returns the runs that failed.

    `on_done(job, record or None, done, total)` is called as each run ends.
    """
    config.validate()
    check_manifest(config)
    jobs = pending(config)
    total = len(jobs)
    failures: list[tuple[Job, str]] = []
    if not jobs:
        return failures
    engine = engine or LocalEngine(config.workers)
    logger.info("%d runs to do on %s", total, engine.describe())
    # closing(): an exception here (Ctrl-C in on_done) stops the engine at once, not at GC.
    with contextlib.closing(engine.run(jobs, config)) as outcomes:
        for done_count, outcome in enumerate(outcomes, start=1):
            if outcome.record is None:
                logger.error("run %s failed: %s", outcome.job.key, outcome.error)
                failures.append((outcome.job, outcome.error or "failed"))
            if on_done is not None:
                on_done(outcome.job, outcome.record, done_count, total)
    return failures


# ------------------------------------------------------------------ the report


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((out_dir / "final").glob("*.json"))]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def t_quantile(n: int) -> float:
    """Two-sided 95 % quantile of Student's t for the mean of `n` values."""
    df = n - 1
    if df < 1:
        return float("nan")
    return T_95[df - 1] if df <= len(T_95) else 1.96


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (scenario, algorithm): means and spreads over seeds of the held-out figures."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in results:
        groups.setdefault((record["scenario"], record["algo"]), []).append(record)
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for key, records in groups.items():
        finals = [r["final"] for r in records]
        row: dict[str, Any] = {"seeds": len(records)}
        for name in ("return_mean", "bits_per_episode", "green_failures", "red_impacted",
                     "red_reached_target", "cost_comm", "return_std", *MESSAGE_FIGURES):
            row[name] = _mean_std([f.get(name, math.nan) for f in finals])
        for name in MESSAGE_FIGURES:  # the weakest sender of the weakest seed
            row[f"{name}_worst"] = float(np.min([f.get(f"{name}_min", math.nan)
                                                 for f in finals]))
        row["train_minutes"] = float(np.mean([r["train_seconds"] for r in records])) / 60
        row["episodes"] = records[0]["episodes"]
        row["every_step_bits"] = records[0]["every_step_bits"]
        row["comm_cost"] = records[0]["comm_cost"]
        table[key] = row
    return table


# What the messages carried (agents/messages.py), per run: mean over senders.
MESSAGE_FIGURES = ("mi_activity", "mi_red", "mi_red_given_activity", "listener_effect")
# The comparisons the paper makes (and its ablations): first minus second, paired by seed.
PAIRS = (("dial-sau", "qmix"), ("dial-sau", "dial-sau-nocomm"), ("dial-sau", "dial"),
         ("dial-sau", "iql"), ("dial-sau", "react"), ("qmix", "dial-sau-nocomm"),
         ("dial-sau-mix", "dial-sau"), ("dial-sau-mix", "qmix"),
         ("dial-sau-mix", "dial-sau-nocomm-mix"))


def paired_difference(results: list[dict[str, Any]], scenario: str, first: str,
                      second: str) -> dict[str, float] | None:
    """Held-out return of `first` minus `second` on the same seeds: mean and 95 % interval.

    A hand-written blue has no seed of its own that matters (it is scored on the same
    held-out episodes), so its one mean pairs with every learner seed.
    """
    def by_seed(algo: str) -> dict[int, float]:
        return {r["seed"]: r["final"]["return_mean"] for r in results
                if r["scenario"] == scenario and r["algo"] == algo}

    a, b = by_seed(first), by_seed(second)
    if not a or not b:
        return None
    if is_baseline(second):
        fixed = float(np.mean(list(b.values())))
        b = dict.fromkeys(a, fixed)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = np.array([a[s] - b[s] for s in seeds])
    mean = float(diffs.mean())
    half = (t_quantile(len(diffs)) * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
            if len(diffs) > 1 else math.nan)
    return {"n": float(len(diffs)), "mean": mean, "low": mean - half, "high": mean + half}


def _order(config: CompareConfig, names: Sequence[str]) -> list[str]:
    first = [a for a in config.algos if a in names]
    return first + sorted(set(names) - set(first))


def plot_curves(scenario: str, results: list[dict[str, Any]],
                summary: dict[tuple[str, str], dict[str, Any]], order: list[str],
                path: Path) -> None:
    """Greedy return and bits against training episodes: mean over seeds, 95 % band."""
    figure, (returns_axis, bits_axis) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    lowest = 0.0
    for i, algo in enumerate(order):
        records = [r for r in results if r["scenario"] == scenario and r["algo"] == algo]
        if not records:
            continue
        colour = f"C{i}"
        if not records[0]["curve"]:  # a hand-written blue: its held-out mean as a line
            mean = summary[(scenario, algo)]["return_mean"][0]
            returns_axis.axhline(mean, color=colour, linestyle="--",
                                 label=f"{algo} ({mean:.1f}, held-out)")
            if algo == "react":  # the yardstick a learner must beat stays in view
                lowest = min(lowest, mean)
            continue
        length = min(len(r["curve"]) for r in records)
        x = np.array([p["episodes"] for p in records[0]["curve"][:length]])
        for axis, key in ((returns_axis, "return_mean"), (bits_axis, "bits_per_episode")):
            values = np.array([[p[key] for p in r["curve"][:length]] for r in records])
            mean = values.mean(axis=0)
            axis.plot(x, mean, color=colour, marker=".",
                      label=f"{algo} ({len(records)} seeds)")
            if len(records) > 1:
                half = t_quantile(len(records)) * values.std(axis=0, ddof=1) / math.sqrt(
                    len(records))
                axis.fill_between(x, mean - half, mean + half, color=colour, alpha=0.2)
            if axis is returns_axis:
                lowest = min(lowest, float(mean.min()))
    every = next(r["every_step_bits"] for r in results if r["scenario"] == scenario)
    bits_axis.axhline(every, color="black", linestyle=":", label=f"send every step ({every})")
    bits_axis.legend(fontsize=7, loc="center right")
    # Zoom on the learners and the rule-based blue; weaker blues stay in the legend.
    returns_axis.set_ylim(1.3 * lowest, max(5.0, -0.05 * lowest))
    returns_axis.set_ylabel("greedy return per episode")
    returns_axis.set_title(f"{scenario}: greedy evaluation during training"
                           " (mean over seeds, 95 % band)")
    returns_axis.legend(fontsize=8, loc="lower right")
    returns_axis.grid(alpha=0.3)
    bits_axis.set_ylabel("bits / episode")
    bits_axis.set_xlabel("training episodes")
    bits_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _cell(pair: tuple[float, float], digits: int = 2, percent: bool = False) -> str:
    mean, std = pair
    if percent:
        return f"{100 * mean:.0f} ± {100 * std:.0f} %"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(config: CompareConfig) -> Path:
    """report.md and curves_<scenario>.png from the result files present now."""
    out_dir = config.out_dir
    results = load_results(out_dir)
    summary = summarise(results)
    expected = {(s, a) for s in config.scenarios for a in config.algos}
    lines = [
        f"# Comparison `{config.name}`",
        "",
        f"Command: `{config.command}`" if config.command else "",
        "",
        f"Each learner was trained for the episode budget below with its own default"
        f" settings, then scored greedily on the same {config.final_episodes} held-out"
        f" episodes (simulator seeds from {HELD_OUT_SEED}); hand-written blues were scored"
        " on the same episodes. Figures are mean ± sample std **over seeds** of each run's"
        " held-out mean; `episode std` is the spread of single episodes within a run.",
        "",
    ]
    if config.options:
        lines += ["Per-algorithm settings: " + "; ".join(
            f"{token}: " + ", ".join(f"{k}={v}" for k, v in changes.items())
            for token, changes in config.options.items()) + ".", ""]
    for scenario in config.scenarios:
        rows = [a for a in _order(config, [k[1] for k in summary if k[0] == scenario])]
        model = GameModel(load_scenario(scenario))
        every = every_step_bits(model)
        budget = config.episodes.get(scenario)
        lines += [
            f"## {scenario} ({len(model.scenario.all_hosts)} hosts, {model.n_agents} blue"
            f" agents, {model.scenario.episode_length} steps"
            + (f"; {budget} training episodes per run)" if budget else ")"),
            "",
            "| algorithm | seeds | return | episode std | bits / episode | comm cost |"
            " green failures | red impacted | red privileged on a target | train min |",
            "|-|-|-|-|-|-|-|-|-|-|",
        ]
        for algo in rows:
            row = summary[(scenario, algo)]
            minutes = f"{row['train_minutes']:.1f}" if row["episodes"] else "-"
            lines.append(
                f"| {algo} | {row['seeds']} | {_cell(row['return_mean'])} |"
                f" {row['return_std'][0]:.1f} | {_cell(row['bits_per_episode'], 1)} |"
                f" {_cell(row['cost_comm'])} | {_cell(row['green_failures'], 1)} |"
                f" {_cell(row['red_impacted'], percent=True)} |"
                f" {_cell(row['red_reached_target'], percent=True)} |"
                f" {minutes} |"
            )
        lines.append(
            f"| *send every step* (reference) | - | - | - | {every} |"
            f" {every * model.scenario.blue.comm_cost:.2f} | - | - | - | - |"
        )
        talkers = [a for a in rows if not is_baseline(a) and sends_messages(parse_algo(a)[0])]
        if talkers:
            lines += [
                "",
                "What the messages carry (held-out episodes; mean ± std over seeds of the"
                " mean over senders, and the weakest sender of the weakest seed):",
                "",
                "| algorithm | MI(bit; own activity) | MI(bit; red in its subnets) |"
                r" MI(bit; red \| activity) | listener effect |",
                "|-|-|-|-|-|",
            ]
            for algo in talkers:
                row = summary[(scenario, algo)]
                cells = []
                for name in MESSAGE_FIGURES:
                    mean, std = row[name]
                    if math.isnan(mean):
                        cells.append("-")
                        continue
                    worst = row[f"{name}_worst"]
                    if name == "listener_effect":
                        cells.append(f"{100 * mean:.1f} ± {100 * std:.1f} %"
                                     f" (min {100 * worst:.1f} %)")
                    else:
                        cells.append(f"{mean:.3f} ± {std:.3f} (min {worst:.3f})")
                lines.append(f"| {algo} | " + " | ".join(cells) + " |")
        pairs = [(a, b, d) for a, b in PAIRS
                 if (d := paired_difference(results, scenario, a, b)) is not None]
        if pairs:
            lines += [
                "",
                "Paired differences of held-out return (first minus second, same seeds;"
                " 95 % Student-t interval over seeds):",
                "",
                "| comparison | seeds | difference | 95 % interval | reading |",
                "|-|-|-|-|-|",
            ]
            for a, b, d in pairs:
                if math.isnan(d["low"]):
                    reading = "one seed: no interval"
                elif d["low"] > 0:
                    reading = f"{a} ahead"
                elif d["high"] < 0:
                    reading = f"{b} ahead"
                else:
                    reading = "not resolved (interval holds 0)"
                interval = ("-" if math.isnan(d["low"])
                            else f"[{d['low']:+.2f}, {d['high']:+.2f}]")
                lines.append(f"| {a} − {b} | {int(d['n'])} | {d['mean']:+.2f} |"
                             f" {interval} | {reading} |")
        missing = sorted(a for s, a in expected if s == scenario and (s, a) not in summary)
        if missing:
            lines += ["", f"Not finished yet: {', '.join(missing)}."]
        picture = f"curves_{scenario}.png"
        if any(r["scenario"] == scenario for r in results):
            plot_curves(scenario, results, summary, _order(config, rows), out_dir / picture)
            lines += ["", f"![learning curves on {scenario}]({picture})"]
        lines.append("")
    lines += [
        "Columns: *return* is the team reward per episode (higher is better); *bits* are"
        " message bits sent (1s); *comm cost* is the reward spent on them;"
        " *green failures* are users' requests that failed per episode; *red impacted* and"
        " *red privileged on a target* are the shares of episodes where red impacted a"
        " mission host or got privileged on one of its targets; *train min* is wall-clock"
        " training time per run (shared CPU). The *send every step* row is what a blue that"
        " sends a 1 on every bit of every step would send and pay.",
        "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
