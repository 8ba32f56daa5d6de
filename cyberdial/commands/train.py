"""`cyberdial train` and `cyberdial evaluate`: learn blue agents in the simulator, score them.

`train`'s options are generated from `TrainConfig` (one per field, its docstring
is the help); the loop itself lives in `cyberdial.agents.training`.
"""

from __future__ import annotations

import argparse

from rich.progress import TextColumn
from rich.table import Table

from cyberdial.agents.baselines import BASELINES, BatchPolicy, SilencedPolicy, make_baseline
from cyberdial.agents.checkpoint import load_policy
from cyberdial.agents.messages import MessageStats
from cyberdial.agents.options import add_config_arguments, config_from_args
from cyberdial.agents.rollout import TERM_NAMES, run_episodes
from cyberdial.agents.training import Progress, TrainConfig, train
from cyberdial.commands.common import console, progress_bar
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train learning blue agents (DIAL-SAU, DIAL, QMIX, IQL) in the simulator",
        description="Train blue agents on the simulated range. Writes TensorBoard logs, an"
        " evaluation log (eval.csv) and a checkpoint under"
        " runs/{scenario}__{algo}__{seed}__{time}.",
    )
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(func=train_command)

    evaluate = subparsers.add_parser(
        "evaluate", help="play greedy episodes of a trained checkpoint (or a hand-written blue)"
        " and print its scores"
    )
    evaluate.add_argument("checkpoint", metavar="POLICY",
                          help="checkpoint file (.pt), or a hand-written blue:"
                          f" {', '.join(BASELINES)}")
    evaluate.add_argument("--scenario", default=None,
                          help="scenario file or shipped name (default: the one it was trained"
                          " on; small for a hand-written blue)")
    evaluate.add_argument("--episodes", type=_positive, default=100,
                          help="episodes (default: 100)")
    evaluate.add_argument("--seed", type=int, default=0, help="first episode seed (default: 0)")
    evaluate.add_argument("--device", default="auto",
                          help="where the trained network runs: auto (a GPU when torch sees"
                          " one), cpu, cuda or cuda:N (default: auto)")
    evaluate.add_argument("--ignore-scenario-hash", action="store_true",
                          help="accept a scenario with the same layout but other settings")
    evaluate.add_argument("--silent", action="store_true",
                          help="silence the policy's messages: its actions, but no bit"
                          " is sent (so none is heard, unmasks an Analyse or costs);"
                          " against a run without it, what the messages are worth")
    evaluate.set_defaults(func=evaluate_command)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def train_command(args: argparse.Namespace) -> int:
    config = config_from_args(args, TrainConfig)
    config.validate()
    bar = progress_bar(
        TextColumn("{task.fields[rate]:>5.0f} ep/s"),
        TextColumn("return {task.fields[train_return]:>8.1f}"),
        TextColumn("greedy {task.fields[eval_return]}"),
        TextColumn("bits {task.fields[bits]:>5.1f}"),
    )
    with bar:
        task = bar.add_task(f"{config.variant}", total=config.episodes, rate=0.0,
                            train_return=float("nan"), eval_return="-", bits=0.0)

        def show(progress: Progress) -> None:
            fields: dict[str, object] = {
                "rate": progress.episodes_per_second,
                "train_return": progress.train_return,
                "bits": progress.bits_per_episode,
            }
            if progress.eval_return is not None:
                fields["eval_return"] = f"{progress.eval_return:.1f}"
            bar.update(task, completed=progress.episodes, **fields)  # type: ignore[arg-type]

        result = train(config, on_progress=show)
    final = result.final_evaluation
    console.print(
        f"trained {config.variant} for {result.episodes} episodes in {result.seconds:.0f} s"
        f" ({result.episodes / max(result.seconds, 1e-9):.0f} episodes/s)"
    )
    if final:
        console.print(
            f"greedy return {final['return_mean']:.2f} ± {final['return_std']:.2f},"
            f" {final['bits_per_episode']:.1f} bits per episode"
        )
    console.print(f"run: {result.run_dir}\ncheckpoint: {result.checkpoint}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario) if args.scenario else None
    policy: BatchPolicy
    if args.checkpoint in BASELINES:
        # A hand-written blue needs no file; it is scored exactly as a checkpoint is.
        model = GameModel(scenario if scenario is not None else load_scenario("small"))
        policy, name = make_baseline(args.checkpoint, model, seed=args.seed), args.checkpoint
        trained = ""
    else:
        policy, model, checkpoint = load_policy(args.checkpoint, scenario,
                                                args.ignore_scenario_hash, device=args.device)
        name = checkpoint.config.variant
        trained = f" ({checkpoint.episodes} training episodes)"
    if args.silent:
        policy, name = SilencedPolicy(policy), f"{name}, messages silenced"
    with progress_bar() as bar:
        task = bar.add_task(f"{model.scenario.name} / {name}", total=args.episodes)
        stats = run_episodes(model, policy, args.episodes, seed=args.seed,
                             on_episodes_done=lambda n: bar.advance(task, n))
    summary = stats.summary()
    table = Table(
        title=f"{model.scenario.name}: {name}{trained}, {args.episodes} episodes,"
        f" seed {args.seed}"
    )
    table.add_column("figure")
    table.add_column("per episode", justify="right")
    table.add_row("return", f"{summary['return_mean']:.2f} ± {summary['return_std']:.2f}")
    bits = [float(b) for b in stats.bits_sent]
    bits_std = float(sum((b - summary["bits_per_episode"]) ** 2 for b in bits) / len(bits)) ** 0.5
    table.add_row("bits sent", f"{summary['bits_per_episode']:.2f} ± {bits_std:.2f}")
    table.add_row("red reached a target (privileged)", f"{summary['red_reached_target']:.0%}")
    table.add_row("red impacted a mission host", f"{summary['red_impacted']:.0%}")
    table.add_row("green failures", f"{summary['green_failures']:.1f}")
    for name in TERM_NAMES:
        table.add_row(f"cost: {name}", f"{summary['cost_' + name]:.2f}")
    console.print(table)
    if stats.messages is not None and model.n_agents > 1 and model.message_bits > 0:
        for message_table in message_tables(model, stats.messages):
            console.print(message_table)
    return 0


def message_tables(model: GameModel, messages: MessageStats) -> list[Table]:
    """When each sender spoke, and what its bit carried, per agents/messages.py."""
    rows = messages.per_sender()
    when = Table(title="when each sender sends a 1, per sender",
                 caption="active: its own hosts show a scan or exploit; flag only: no activity"
                 " but a compromise flag still in its observation (the authors' gate opens"
                 " on both, and is shut on the other steps)")
    for column in ("sender", "sends 1", "active", "sends | active", "flag only",
                   "sends | flag"):
        when.add_column(column, justify="left" if column == "sender" else "right")
    carried = Table(title="what the messages carry, per sender",
                    caption="MI: mutual information in bits between the bit sent and the"
                    " sender's own activity, red in its subnets, and red given activity;"
                    " listener: how often a receiver's greedy action changes when the bit"
                    " is flipped")
    for column in ("sender", "MI activity", "MI red", "MI red | active", "listener"):
        carried.add_column(column, justify="left" if column == "sender" else "right")
    for layout, row in zip(model.agents, rows, strict=True):
        when.add_row(layout.name, f"{row['send_rate']:.0%}", f"{row['activity_rate']:.0%}",
                     _percent(row["send_when_active"]), f"{row['remembered_rate']:.0%}",
                     _percent(row["send_when_remembered"]))
        carried.add_row(layout.name, f"{row['mi_activity']:.3f}", f"{row['mi_red']:.3f}",
                        f"{row['mi_red_given_activity']:.3f}",
                        _percent(row["listener_effect"], digits=1))
    return [when, carried]


def _percent(share: float, digits: int = 0) -> str:
    return "-" if share != share else f"{share:.{digits}%}"
