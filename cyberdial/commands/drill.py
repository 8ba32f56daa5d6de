"""`cyberdial drill|report|replay`: run a recorded defence drill, report on it, replay it."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from rich.live import Live

from cyberdial.agents.baselines import BASELINES, BatchPolicy, make_baseline
from cyberdial.agents.checkpoint import load_policy
from cyberdial.agents.drill import (
    DrillRange,
    EmulatedDrillRange,
    HumanSeat,
    SimDrillRange,
    run_drill,
)
from cyberdial.agents.liveview import LiveView
from cyberdial.agents.recording import (
    RECORDING_NAME,
    EpisodeEnd,
    Recorder,
    StepRecord,
    header_for,
    load_recording,
)
from cyberdial.agents.report import write_report
from cyberdial.commands.common import console
from cyberdial.range.errors import CyberdialError, NotRootError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drill = subparsers.add_parser(
        "drill", help="run a policy's agents (and optionally you) against red and green, recorded"
    )
    drill.add_argument("scenario", metavar="SCENARIO", help="scenario file or shipped name")
    drill.add_argument(
        "--policy",
        default="react",
        help=f"a baseline ({', '.join(sorted(BASELINES))}) or a checkpoint file",
    )
    drill.add_argument("--episodes", type=int, default=1, help="episodes (default: 1)")
    drill.add_argument("--seed", type=int, default=0, help="first episode seed (default: 0)")
    drill.add_argument(
        "--range",
        dest="range_kind",
        choices=["emulated", "sim"],
        default="emulated",
        help="emulated: real hosts, red and green (needs root); sim: the simulator"
        " (default: emulated)",
    )
    drill.add_argument("--human", metavar="AGENT", help="seat yourself in this blue agent's place")
    drill.add_argument("--out", type=Path, help="run directory (default: runs/drills/<name>)")
    drill.add_argument(
        "--pace",
        type=float,
        default=None,
        help="seconds per simulated step, for watching a sim drill (default: 0 without a"
        " terminal, the scenario's step period with one)",
    )
    drill.add_argument("--no-live", action="store_true", help="no live view, just the summary")
    drill.set_defaults(func=drill_command)

    report = subparsers.add_parser("report", help="write report.md and PNG plots of a recording")
    report.add_argument("run", metavar="RUN", help="run directory or recording.jsonl")
    report.add_argument("--out", type=Path, help="where to write (default: beside the recording)")
    report.set_defaults(func=report_command)

    replay = subparsers.add_parser("replay", help="replay a recording in the drill's live view")
    replay.add_argument("run", metavar="RUN", help="run directory or recording.jsonl")
    replay.add_argument(
        "--speed",
        type=float,
        default=4.0,
        help="times real time (0: as fast as possible; default 4)",
    )
    replay.set_defaults(func=replay_command)


def resolve_policy(name: str, scenario: Scenario, seed: int) -> tuple[BatchPolicy, GameModel]:
    """A baseline by name, or a trained checkpoint (its model carries its training switches)."""
    if name in BASELINES:
        model = GameModel(scenario)
        return make_baseline(name, model, seed=seed), model
    if not Path(name).is_file():
        raise CyberdialError(
            f"--policy {name}: neither a baseline ({', '.join(sorted(BASELINES))}) nor a"
            " checkpoint file"
        )
    policy, model, _ = load_policy(name, scenario)
    return policy, model


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def drill_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CyberdialError("--episodes must be at least 1")
    if args.range_kind == "emulated" and os.geteuid() != 0:
        raise NotRootError("a drill on the emulated range")
    scenario = load_scenario(args.scenario)
    policy, model = resolve_policy(args.policy, scenario, args.seed)
    interactive = sys.stdout.isatty() and not args.no_live
    pace = args.pace if args.pace is not None else (scenario.step_period if interactive else 0.0)
    if args.range_kind == "emulated":
        pace = 0.0  # the bridge keeps the scenario's step period itself
    human = None
    if args.human:
        human = HumanSeat(model, args.human, scenario.step_period, sys.stdin, sys.stdout)
    name = f"{scenario.name}__{Path(args.policy).stem}__{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.out or Path("runs") / "drills" / name
    # Ctrl-C and SIGTERM end the drill the same way: the range comes down, the
    # recording keeps what was played and is reported.
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    # A process started in the background of a non-interactive shell (a CI job, `cmd &`)
    # inherits SIGINT *ignored*, and Python keeps it so: Ctrl-C was then lost and the drill
    # played on. Its own handler makes SIGINT interrupt however the drill was started.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            drill_range: DrillRange
            if args.range_kind == "emulated":
                console.print(f"bringing up {scenario.name} on real hosts...")
                emulated = stack.enter_context(EmulatedDrillRange(model, out))
                console.print(f"range {emulated.run_id} is up; the drill starts")
                drill_range = emulated
            else:
                drill_range = SimDrillRange(model)
            header = header_for(
                model,
                range_kind=args.range_kind,
                policy=args.policy,
                seed=args.seed,
                run_id=getattr(drill_range, "run_id", None),
            )
            recorder = stack.enter_context(Recorder(out / RECORDING_NAME, header))
            view = LiveView(header)
            ends = _play(drill_range, policy, args, recorder, view, human, interactive, pace)
    except KeyboardInterrupt:
        if (out / RECORDING_NAME).is_file():
            report = write_report(load_recording(out), out)
            console.print(
                f"interrupted; the range is down.\nrecording: {out / RECORDING_NAME}\n"
                f"report: {report}"
            )
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    for end in ends:
        console.print(
            f"episode {end.episode}: return {end.episode_return:.2f},"
            f" {end.bits_sent} bits, {end.steps} steps"
        )
    report = write_report(load_recording(out), out)
    console.print(f"recording: {out / RECORDING_NAME}\nreport: {report}")
    return 0


def _play(
    drill_range: DrillRange,
    policy: BatchPolicy,
    args: argparse.Namespace,
    recorder: Recorder,
    view: LiveView,
    human: HumanSeat | None,
    interactive: bool,
    pace: float,
) -> list[EpisodeEnd]:
    if interactive and human is None:
        with Live(view.render(), console=console, refresh_per_second=8) as live:

            def show(step: StepRecord) -> None:
                view.update(step)
                live.update(view.render())

            return run_drill(
                drill_range, policy, args.episodes, args.seed, recorder, on_step=show, pace_s=pace
            )

    def show_plain(step: StepRecord) -> None:
        view.update(step)
        if human is not None:
            console.print(view.render())

    return run_drill(
        drill_range,
        policy,
        args.episodes,
        args.seed,
        recorder,
        on_step=show_plain,
        human=human,
        pace_s=pace,
    )


def report_command(args: argparse.Namespace) -> int:
    recording = load_recording(args.run)
    run = Path(args.run)
    out = args.out or (run if run.is_dir() else run.parent)
    console.print(f"report: {write_report(recording, out)}")
    return 0


def replay_command(args: argparse.Namespace) -> int:
    recording = load_recording(args.run)
    view = LiveView(recording.header, title=f"replay of {args.run}")
    delay = recording.header.step_period / args.speed if args.speed > 0 else 0.0
    if sys.stdout.isatty():
        with Live(view.render(), console=console, refresh_per_second=8) as live:
            for step in recording.steps:
                view.update(step)
                live.update(view.render())
                time.sleep(delay)
    else:
        for step in recording.steps:
            view.update(step)
            console.print(view.render())
            time.sleep(delay)
    for end in recording.ends:
        console.print(
            f"episode {end.episode}: return {end.episode_return:.2f},"
            f" {end.bits_sent} bits{' (interrupted)' if end.interrupted else ''}"
        )
    return 0
