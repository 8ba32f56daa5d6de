"""`cyberdial compare`: train and score algorithms over scenarios and seeds, write a report.

The work happens in `cyberdial.agents.compare`; this module parses the options,
shows progress and prints where the report is.
"""

from __future__ import annotations

import argparse
import json
import shlex

from cyberdial.agents.compare import (
    ENGINES,
    MANIFEST,
    CompareConfig,
    CompareError,
    Job,
    default_workers,
    make_engine,
    parse_option,
    pending,
    run_comparison,
    write_report,
)
from cyberdial.agents.training import resolve_device
from cyberdial.commands.common import console, progress_bar, stop_signals_interrupt


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train and score algorithms over scenarios and seeds; write a report",
        description="Train each (algorithm, scenario, seed) in the simulator, score it greedily"
        " on held-out episodes, and write results/NAME/report.md (mean ± std over seeds, bits"
        " sent, green failures, red impact) with learning-curve PNGs. Runs go to parallel"
        " worker processes on this machine, or with --engine ray to Ray tasks (a local Ray,"
        " or a cluster with --address); a finished run is never redone, so an interrupted"
        " comparison resumes when the same command is run again (with the local workers an"
        " unfinished run continues from its last evaluation point).",
    )
    parser.add_argument("--name", default="compare",
                        help="results/NAME holds the runs and the report (default: compare)")
    parser.add_argument("--scenarios", nargs="+", default=["small", "large"],
                        help="scenario files or shipped names (default: small large)")
    parser.add_argument("--algos", nargs="+", default=["dial-sau", "qmix", "iql", "react"],
                        help="learners (dial-sau; dial-sau-nocomm, its no-message ablation;"
                        " dial-sau-mix, DIAL-SAU learning through QMIX's mixer;"
                        " dial, DIAL without SAU; qmix; iql) and hand-written blues (react,"
                        " random, sleep) (default: dial-sau qmix iql react)")
    parser.add_argument("--option", action="append", default=[], metavar="ALGO:SETTING=VALUE",
                        help="a training setting for one algorithm of --algos, as `cyberdial"
                        " train` names it (e.g. dial-sau:comm_penalty=1.0,"
                        " dial-sau:gate_messages=false); repeat for more")
    parser.add_argument("--seeds", type=int, default=5,
                        help="seeds per learner: 0..N-1 (default: 5)")
    parser.add_argument("--episodes", nargs="+", default=[], metavar="[SCENARIO=]N",
                        help="training episodes per run: N for every scenario, or"
                        " SCENARIO=N per scenario (e.g. small=10000 large=3000)")
    parser.add_argument("--eval-points", type=int, default=10,
                        help="greedy evaluations during training, the curves' points"
                        " (default: 10)")
    parser.add_argument("--eval-episodes", type=int, default=100,
                        help="episodes per evaluation during training (default: 100)")
    parser.add_argument("--final-episodes", type=int, default=500,
                        help="held-out episodes each run is scored on (default: 500)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="parallel worker processes, one torch thread each; with --engine"
                        " ray and no --address, the CPUs of the local Ray"
                        f" (default: {default_workers()})")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="where runs execute: local worker processes, or one Ray task each"
                        " (needs cyberdial[ray]; docs/scale.md) (default: local)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --engine ray: a running Ray cluster (HOST:PORT of `ray start"
                        " --head`, or auto); without it the command starts a local Ray and"
                        " stops it at the end")
    parser.add_argument("--device", default="auto",
                        help="where each run's networks train: auto (a GPU when torch sees one"
                        " where the run trains), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--results-dir", default="results", help="(default: results)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs finished so far; train nothing")
    parser.set_defaults(func=compare_command)


def parse_episodes(values: list[str], scenarios: list[str]) -> dict[str, int]:
    """`N` (every scenario) and `SCENARIO=N` items -> {scenario: N}."""
    budget: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            episodes = int(number)
        except ValueError:
            raise CompareError(f"--episodes {value!r}: expected N or SCENARIO=N") from None
        if episodes < 1:
            raise CompareError(f"--episodes {value!r}: must be at least 1")
        if name:
            budget[name] = episodes
        else:
            budget.update({scenario: episodes for scenario in scenarios})
    return budget


def parse_options(values: list[str]) -> dict[str, dict[str, object]]:
    """`ALGO:SETTING=VALUE` items -> {algo: {setting: typed value}}."""
    options: dict[str, dict[str, object]] = {}
    for value in values:
        token, name, setting = parse_option(value)
        options.setdefault(token, {})[name] = setting
    return options


def compare_command(args: argparse.Namespace) -> int:
    config = CompareConfig(
        name=args.name,
        scenarios=list(args.scenarios),
        algos=list(args.algos),
        seeds=args.seeds,
        episodes=parse_episodes(args.episodes, list(args.scenarios)),
        options=parse_options(args.option),
        eval_points=args.eval_points,
        eval_episodes=args.eval_episodes,
        final_episodes=args.final_episodes,
        workers=args.workers,
        results_dir=args.results_dir,
        device=args.device,
    )
    config.command = _command_line(config, args.engine, args.address)
    if args.engine == "local":
        resolve_device(config.device)  # the runs train here: a missing GPU is an error now
    if args.report_only:
        config = _saved_command(config)
        report = write_report(config)
        console.print(f"report: {report}", soft_wrap=True)
        return 0
    config.validate()
    engine = make_engine(args.engine, config.workers, args.address)
    todo = pending(config)
    console.print(f"{config.out_dir}: {_count(len(todo), 'run')} to do"
                  f" ({_count(config.seeds, 'seed')} × {_count(len(config.algos), 'algorithm')}"
                  f" × {_count(len(config.scenarios), 'scenario')}, finished ones kept),"
                  f" on {engine.describe()}", soft_wrap=True)
    with progress_bar() as bar:
        task = bar.add_task("runs", total=len(todo))

        def done(job: Job, record: dict[str, object] | None, count: int, total: int) -> None:
            bar.update(task, completed=count)
            if record is None:
                console.print(f"[{count}/{total}] {job.key}: failed", soft_wrap=True)
                return
            final = record["final"]
            assert isinstance(final, dict)
            console.print(f"[{count}/{total}] {job.key}: held-out return"
                          f" {final['return_mean']:.2f}, {final['bits_per_episode']:.1f} bits,"
                          f" {record['train_seconds']:.0f} s{_where(record)}", soft_wrap=True)

        # `kill PID` stops the sweep as Ctrl-C does (its workers with it).
        with stop_signals_interrupt():
            failures = run_comparison(config, on_done=done, engine=engine)
    report = write_report(config)
    console.print(f"report: {report}", soft_wrap=True)
    if failures:
        raise CompareError(
            f"{len(failures)} run(s) failed ({', '.join(job.key for job, _ in failures)};"
            f" first: {failures[0][1]}): fix the cause and run the same command again to"
            " redo only those"
        )
    return 0


def _where(record: dict[str, object]) -> str:
    """`, on node 1a2b3c4d (host)` for a run that ran on a Ray node; empty otherwise."""
    where = record.get("where")
    if not isinstance(where, dict) or where.get("engine") != "ray":
        return ""
    return f", on node {str(where['node'])[:8]} ({where['host']})"


def _command_line(config: CompareConfig, engine: str = "local",
                  address: str | None = None) -> str:
    """The full command that makes this comparison, every setting spelled out."""
    words = ["cyberdial", "compare", "--name", config.name, "--scenarios", *config.scenarios,
             "--algos", *config.algos, "--seeds", str(config.seeds)]
    if config.episodes:
        words += ["--episodes", *(f"{s}={n}" for s, n in config.episodes.items())]
    for token, changes in config.options.items():
        for name, value in changes.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            words += ["--option", f"{token}:{name}={text}"]
    words += ["--eval-points", str(config.eval_points), "--eval-episodes",
              str(config.eval_episodes), "--final-episodes", str(config.final_episodes),
              "--workers", str(config.workers)]
    if config.results_dir != "results":
        words += ["--results-dir", config.results_dir]
    if config.device != "auto":
        words += ["--device", config.device]
    if engine != "local":
        words += ["--engine", engine]
    if address:
        words += ["--address", address]
    return shlex.join(words)


def _saved_command(config: CompareConfig) -> CompareConfig:
    """With --report-only, the comparison as it was started (its manifest), if any."""
    manifest = config.out_dir / MANIFEST
    if not manifest.is_file():
        return config
    saved = json.loads(manifest.read_text(encoding="utf-8"))["config"]
    return CompareConfig(**{**saved, "name": config.name, "results_dir": config.results_dir})


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
