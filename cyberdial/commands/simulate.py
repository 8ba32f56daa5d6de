"""`cyberdial simulate`: play episodes of a baseline blue on the simulated range."""

from __future__ import annotations

import argparse

from rich.table import Table

from cyberdial.agents.baselines import BASELINES, make_baseline
from cyberdial.agents.rollout import TERM_NAMES, run_episodes
from cyberdial.commands.common import console, progress_bar
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", help="run episodes of a baseline blue in the simulator and summarise them"
    )
    parser.add_argument("scenario", metavar="SCENARIO", help="scenario file or shipped name")
    parser.add_argument(
        "--blue", choices=sorted(BASELINES), default="react", help="blue policy (default: react)"
    )
    parser.add_argument("--episodes", type=_positive, default=20, help="episodes (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="first episode seed (default: 0)")
    parser.set_defaults(func=simulate_command)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def simulate_command(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    model = GameModel(scenario)
    policy = make_baseline(args.blue, model, seed=args.seed)
    with progress_bar() as progress:
        task = progress.add_task(f"{scenario.name} / {args.blue}", total=args.episodes)
        stats = run_episodes(
            model,
            policy,
            args.episodes,
            seed=args.seed,
            on_episodes_done=lambda n: progress.advance(task, n),
        )
    summary = stats.summary()
    table = Table(
        title=f"{scenario.name}: {args.blue} blue, {args.episodes} episodes, seed {args.seed}"
    )
    table.add_column("figure")
    table.add_column("per episode", justify="right")
    table.add_row("return", f"{summary['return_mean']:.2f} ± {summary['return_std']:.2f}")
    table.add_row("steps", str(scenario.episode_length))
    table.add_row("red reached a target (privileged)", f"{summary['red_reached_target']:.0%}")
    table.add_row("red impacted a mission host", f"{summary['red_impacted']:.0%}")
    table.add_row("hosts privileged at end", f"{summary['privileged_hosts_at_end']:.1f}")
    table.add_row("green failures", f"{summary['green_failures']:.1f}")
    table.add_row("bits sent", f"{summary['bits_per_episode']:.1f}")
    for name in TERM_NAMES:
        table.add_row(f"cost: {name}", f"{summary['cost_' + name]:.2f}")
    console.print(table)
    return 0
