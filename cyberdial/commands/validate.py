"""`cyberdial validate`: does a policy trained in simulation hold on real hosts?"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from cyberdial.agents.baselines import BASELINES, BatchPolicy
from cyberdial.agents.drill import DrillRange, EmulatedDrillRange, SimDrillRange, run_drill
from cyberdial.agents.parallel import PolicyFactory, check_ranges, measure_capacity, play_on_ranges
from cyberdial.agents.recording import (
    RECORDING_NAME,
    EpisodeEnd,
    Recorder,
    header_for,
    load_recording,
)
from cyberdial.agents.validation import write_validation
from cyberdial.commands.common import console, progress_bar, stop_signals_interrupt
from cyberdial.commands.drill import resolve_policy
from cyberdial.range.errors import CyberdialError, NotRootError
from cyberdial.range.scenario import load_scenario

EXIT_OUTSIDE_TOLERANCE = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="play a policy in the simulator and on real hosts with the same seeds, and compare",
        description="Runs N episodes in the simulator and N in the emulated range with the same"
        " seeds, then writes validation.md and PNGs (returns with the gap and a confidence"
        " interval, reward terms, actions, sensor detection and false positives, and how the"
        " observation's activity and compromise bits agree with the game's rules given what"
        " red and blue did) and ends with"
        " a one-line verdict, after the gap's interval and the episodes a 10% difference"
        " would need (a power calculation from both sides' spread). --ranges N plays the"
        " emulated episodes on N ranges at once; the recording and the verdict's inputs are"
        " the same episodes, in seed order, whatever N. Exit status 0 within the tolerance,"
        " 1 outside it.",
    )
    parser.add_argument(
        "policy",
        metavar="CHECKPOINT",
        help="a trained checkpoint (.pt), or a baseline name (react, random, sleep)",
    )
    parser.add_argument("--scenario", required=True, help="scenario file or shipped name")
    parser.add_argument(
        "--episodes", type=int, default=5,
        help="episodes on each side, simulated and emulated (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first episode seed (default 0)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.25,
        help="largest accepted |gap| of mean returns, as a fraction of"
        " max(|simulated mean|, 1) (default 0.25)",
    )
    parser.add_argument(
        "--ranges",
        type=int,
        default=1,
        metavar="N",
        help="emulated ranges playing episodes at once, each in its own process with its own"
        " run id (default 1); refused before anything starts when the machine cannot hold"
        " N (one CPU core and the measured memory per range) or N exceeds --episodes",
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/validate/<name>)")
    parser.set_defaults(func=validate_command)


def _policy_for(name: str, scenario_path: str, seed: int) -> tuple[BatchPolicy, Any]:
    """`resolve_policy` from what pickles small (a range's worker calls it)."""
    return resolve_policy(name, load_scenario(scenario_path), seed)


def _play(drill_range: DrillRange, policy: BatchPolicy, make_policy: PolicyFactory | None,
          episodes: int, seed: int, recorder: Recorder) -> None:
    """Every episode from its own seed; with `make_policy` (a baseline) the policy, too."""
    if make_policy is None:
        run_drill(drill_range, policy, episodes, seed, recorder)
        return
    for episode in range(episodes):
        episode_policy, _ = make_policy(seed + episode)
        run_drill(drill_range, episode_policy, 1, seed, recorder, first_episode=episode)


def validate_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CyberdialError("--episodes must be at least 1")
    if args.tolerance < 0:
        raise CyberdialError("--tolerance must not be negative")
    if args.ranges < 1:
        raise CyberdialError(f"--ranges {args.ranges}: at least one range is needed")
    scenario = load_scenario(args.scenario)
    policy, model = resolve_policy(args.policy, scenario, args.seed)
    # Before anything is built: the policy is loaded, so this process weighs as a worker.
    check_ranges(args.ranges, args.episodes, measure_capacity(model.scenario))
    if os.geteuid() != 0:
        raise NotRootError("validation on the emulated range")
    name = f"{scenario.name}__{Path(args.policy).stem}__{time.strftime('%Y%m%d-%H%M%S')}"
    out: Path = args.out or Path("runs") / "validate" / name
    # As in `drill`: SIGTERM is Ctrl-C, and Ctrl-C works in a backgrounded start too.
    with stop_signals_interrupt():
        try:
            console.print(f"simulator: {args.episodes} episode(s)...")
            header = header_for(model, range_kind="sim", policy=args.policy, seed=args.seed)
            with Recorder(out / "sim" / RECORDING_NAME, header) as recorder:
                _play(SimDrillRange(model), policy, _per_episode(args), args.episodes,
                      args.seed, recorder)
            play_emulated(args, model, policy, out)
        except KeyboardInterrupt:
            console.print("interrupted; every range is down.")
            raise
    command = "cyberdial " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["validate"] else ""
    result = write_validation(
        load_recording(out / "sim"),
        load_recording(out / "emulated"),
        out,
        args.tolerance,
        command=command,
        model=model,
    )
    console.print(f"report: {out / 'validation.md'}")
    console.print(result.summary)
    console.print(result.line)
    return 0 if result.passed else EXIT_OUTSIDE_TOLERANCE


def _per_episode(args: argparse.Namespace) -> PolicyFactory | None:
    """A baseline is made afresh from each episode's seed, so its draws (random's) are the
    same in both ranges and on whichever range plays the episode; None for a trained
    policy (greedy, loaded once)."""
    if args.policy not in BASELINES:
        return None
    return functools.partial(_policy_for, args.policy, args.scenario)


def play_emulated(args: argparse.Namespace, model: Any, policy: BatchPolicy, out: Path) -> None:
    """`args.episodes` emulated episodes (episode e from seed `args.seed` + e) into
    `out`/emulated, on `args.ranges` ranges at once: the same episodes whatever the
    number of ranges. For `validate` and `calibrate`; the caller has checked the ranges
    (`check_ranges`) and holds the stop signals. Every range is down when it returns."""
    if args.ranges == 1:
        _one_range(args, model, policy, _per_episode(args), out)
    else:
        make_policy: PolicyFactory = functools.partial(_policy_for, args.policy, args.scenario)
        _many_ranges(args, model, make_policy, args.policy in BASELINES, out)


def _one_range(args: argparse.Namespace, model: Any, policy: BatchPolicy,
               make_policy: PolicyFactory | None, out: Path) -> None:
    scenario = model.scenario
    console.print(f"emulated range: bringing up {scenario.name}...")
    with contextlib.ExitStack() as stack:
        # Nobody watches: steps as fast as the hosts allow, in lockstep.
        emulated = stack.enter_context(
            EmulatedDrillRange(model, out / "emulated", step_period_s=0.0))
        console.print(
            f"range {emulated.run_id} is up: {args.episodes} episode(s)"
            f" of {scenario.episode_length} steps, as fast as the hosts allow"
        )
        header = header_for(model, range_kind="emulated", policy=args.policy, seed=args.seed,
                            run_id=emulated.run_id)
        recorder = stack.enter_context(Recorder(out / "emulated" / RECORDING_NAME, header))
        _play(emulated, policy, make_policy, args.episodes, args.seed, recorder)


def _many_ranges(args: argparse.Namespace, model: Any, make_policy: PolicyFactory,
                 reseed: bool, out: Path) -> None:
    from cyberdial.range.emulation.plan import new_run_id

    scenario = model.scenario
    run_ids: list[str] = []
    while len(run_ids) < args.ranges:
        run_id = new_run_id()
        if run_id not in run_ids:
            run_ids.append(run_id)
    console.print(
        f"emulated ranges: bringing up {args.ranges} of {scenario.name} at once"
        f" ({', '.join(run_ids)}), {args.episodes} episode(s) of {scenario.episode_length}"
        " steps shared between them, as fast as the hosts allow")
    header = header_for(model, range_kind="emulated", policy=args.policy, seed=args.seed,
                        run_ids=run_ids)
    up: list[str] = []

    with contextlib.ExitStack() as stack:
        recorder = stack.enter_context(Recorder(out / "emulated" / RECORDING_NAME, header))
        progress = stack.enter_context(progress_bar())
        task = progress.add_task("emulated episodes", total=args.episodes)

        def on_up(run_id: str) -> None:
            up.append(run_id)
            console.print(f"range {run_id} is up ({len(up)} of {args.ranges})")

        def on_episode(end: EpisodeEnd, run_id: str) -> None:
            progress.advance(task)

        play_on_ranges(make_policy, ranges=args.ranges, episodes=args.episodes,
                       seed=args.seed, recorder=recorder, workdir=out / "emulated",
                       run_ids=run_ids, reseed=reseed, on_up=on_up, on_episode=on_episode)
    console.print(f"every range is down: {args.episodes} episode(s) played on {args.ranges}")
