"""`cyberdial validate`: does a policy trained in simulation hold on real hosts?"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from cyberdial.agents.drill import EmulatedDrillRange, SimDrillRange, run_drill
from cyberdial.agents.recording import RECORDING_NAME, Recorder, header_for, load_recording
from cyberdial.agents.validation import write_validation
from cyberdial.commands.common import console
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
        " interval, reward terms, actions, sensor detection and false positives) and ends with"
        " a one-line verdict. Exit status 0 within the tolerance, 1 outside it.",
    )
    parser.add_argument(
        "policy",
        metavar="CHECKPOINT",
        help="a trained checkpoint (.pt), or a baseline name (react, random, sleep)",
    )
    parser.add_argument("--scenario", required=True, help="scenario file or shipped name")
    parser.add_argument(
        "--episodes", type=int, default=5, help="episodes in each range (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first episode seed (default 0)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.25,
        help="largest accepted |gap| of mean returns, as a fraction of"
        " max(|simulated mean|, 1) (default 0.25)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/validate/<name>)")
    parser.set_defaults(func=validate_command)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def validate_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CyberdialError("--episodes must be at least 1")
    if args.tolerance < 0:
        raise CyberdialError("--tolerance must not be negative")
    if os.geteuid() != 0:
        raise NotRootError("validation on the emulated range")
    scenario = load_scenario(args.scenario)
    policy, model = resolve_policy(args.policy, scenario, args.seed)
    name = f"{scenario.name}__{Path(args.policy).stem}__{time.strftime('%Y%m%d-%H%M%S')}"
    out: Path = args.out or Path("runs") / "validate" / name
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    # As in `drill`: a backgrounded start inherits SIGINT ignored; Ctrl-C must still work.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        console.print(f"simulator: {args.episodes} episode(s)...")
        header = header_for(model, range_kind="sim", policy=args.policy, seed=args.seed)
        with Recorder(out / "sim" / RECORDING_NAME, header) as recorder:
            run_drill(SimDrillRange(model), policy, args.episodes, args.seed, recorder)
        console.print(f"emulated range: bringing up {scenario.name}...")
        with contextlib.ExitStack() as stack:
            # Validation needs no watching: steps as fast as the hosts allow, in lockstep.
            emulated = stack.enter_context(
                EmulatedDrillRange(model, out / "emulated", step_period_s=0.0))
            console.print(
                f"range {emulated.run_id} is up: {args.episodes} episode(s)"
                f" of {scenario.episode_length} steps, as fast as the hosts allow"
            )
            header = header_for(
                model,
                range_kind="emulated",
                policy=args.policy,
                seed=args.seed,
                run_id=emulated.run_id,
            )
            recorder = stack.enter_context(Recorder(out / "emulated" / RECORDING_NAME, header))
            run_drill(emulated, policy, args.episodes, args.seed, recorder)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    command = "cyberdial " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["validate"] else ""
    result = write_validation(
        load_recording(out / "sim"),
        load_recording(out / "emulated"),
        out,
        args.tolerance,
        command=command,
    )
    console.print(f"report: {out / 'validation.md'}")
    console.print(result.line)
    return 0 if result.passed else EXIT_OUTSIDE_TOLERANCE
