"""`cyberdial calibrate`: fit the simulator's sensor model to the real sensors."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from rich.table import Table

from cyberdial.agents.calibration import (
    calibrated_name,
    calibrated_text,
    fit_sensors,
    write_calibration,
)
from cyberdial.agents.parallel import check_ranges, measure_capacity
from cyberdial.agents.recording import load_recording
from cyberdial.commands.common import console, stop_signals_interrupt
from cyberdial.commands.drill import resolve_policy
from cyberdial.commands.validate import play_emulated
from cyberdial.range.errors import CyberdialError, NotRootError
from cyberdial.range.scenario import (
    MAX_SCENARIO_BYTES,
    Scenario,
    load_scenario,
    read_bounded_text,
    resolve_scenario_path,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit the simulator's sensor model to what the real sensors did, as a scenario",
        description="Plays episodes of SCENARIO on the emulated range (root; with --ranges N"
        " on N ranges at once, as validate does), measures how"
        " often the real sensors saw red's scans and exploits (and sweeps, where the"
        " scenario watches them), and writes a copy of the scenario with those rates in"
        " `sensors:` and a `calibration:` section. Train, evaluate and validate on that"
        " file; checkpoints trained on SCENARIO play on it. With --recording, fits an"
        " existing recording played on SCENARIO instead (no root needed).",
    )
    parser.add_argument("scenario", metavar="SCENARIO", help="scenario file or shipped name")
    parser.add_argument("--policy", default="react",
                        help="blue played while measuring: a checkpoint or a baseline"
                        " (default react: it acts on alerts, so red's whole kill chain is"
                        " exercised against a defended network)")
    parser.add_argument("--episodes", type=int, default=30,
                        help="emulated episodes to play (default 30)")
    parser.add_argument("--seed", type=int, default=100_000,
                        help="first episode seed (default 100000, away from validate's 0..)")
    parser.add_argument(
        "--ranges", type=int, default=1, metavar="N",
        help="emulated ranges playing the episodes at once, as `validate --ranges N` (default"
        " 1); refused before anything starts when the machine cannot hold N (one CPU core and"
        " the measured memory per range) or N exceeds --episodes")
    parser.add_argument("--recording", type=Path,
                        help="fit this recording (a run folder or recording.jsonl) instead of"
                        " playing episodes")
    parser.add_argument("--out", type=Path,
                        help="the calibrated scenario file to write"
                        " (default runs/calibrate/<name>__<time>/<name>-cal.yaml; the"
                        " episodes' recording goes beside it, in <file>.episodes/emulated)")
    parser.set_defaults(func=calibrate_command)


def _play(args: argparse.Namespace, scenario: Scenario, folder: Path) -> Path:
    """Play the measuring episodes on fresh emulated ranges (`validate`'s way: the same
    refusals, episodes and teardown); returns the recording's folder."""
    policy, model = resolve_policy(args.policy, scenario, args.seed)
    # Before anything is built: the policy is loaded, so this process weighs as a worker.
    check_ranges(args.ranges, args.episodes, measure_capacity(model.scenario))
    if os.geteuid() != 0:
        raise NotRootError("calibration on the emulated range (or pass --recording)")
    # As in `drill`: SIGTERM is Ctrl-C, and Ctrl-C works in a backgrounded start too.
    with stop_signals_interrupt():
        try:
            play_emulated(args, model, policy, folder)
        except KeyboardInterrupt:
            console.print("interrupted; every range is down.")
            raise
    return folder / "emulated"


def calibrate_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CyberdialError("--episodes must be at least 1")
    if args.ranges < 1:
        raise CyberdialError(f"--ranges {args.ranges}: at least one range is needed")
    if args.recording is not None and args.ranges != 1:
        raise CyberdialError(f"--ranges {args.ranges} plays episodes; with --recording none"
                             " are played: drop one of them")
    scenario = load_scenario(args.scenario)
    source = resolve_scenario_path(args.scenario)
    text = read_bounded_text(source, MAX_SCENARIO_BYTES, "scenario")
    if scenario.calibration is not None:
        raise CyberdialError(f"{source}: already a calibration of {scenario.calibration.base};"
                             " calibrate the base scenario")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / "calibrate" / f"{scenario.name}__{stamp}"
    out: Path = args.out or folder / f"{calibrated_name(scenario.name)}.yaml"
    if args.out:  # the episodes' recording goes beside the file, named after it
        folder = args.out.parent / f"{args.out.stem}.episodes"
    if args.recording is not None:
        recording = load_recording(args.recording)
        policy, seed = recording.header.policy, recording.header.seed
    else:
        recording = load_recording(_play(args, scenario, folder))
        policy, seed = args.policy, args.seed
    fit = fit_sensors(recording, scenario)
    calibrated = calibrated_text(text, fit, policy=policy, seed=seed, source=str(source))
    write_calibration(out, calibrated)

    table = Table(title=f"{scenario.name}: the sensor model against the"
                  f" {recording.header.range} range, {fit.episodes} episode(s)")
    for column in ("rate", "scenario", "measured", "95% interval", "written"):
        table.add_column(column, justify="left" if column == "rate" else "right")
    for rate in fit.rates:
        low, high = rate.interval()
        table.add_row(rate.name, f"{rate.scenario_value:g}", f"{rate.hits}/{rate.trials}",
                      "-" if rate.trials == 0 else f"{low:.3f}-{high:.3f}",
                      f"{rate.fitted:.4f}")
    console.print(table)
    for kind, (measured, modelled) in fit.false_positives.items():
        console.print(f"false-positive {kind} alerts per episode: {measured:.2f} measured,"
                      f" {modelled:.2f} implied by the green rates (left as they are)")
    if args.recording is None:
        console.print(f"episodes recorded in {folder / 'emulated'}")
    console.print(f"calibrated scenario: {out}")
    console.print(f"validate with it: sudo cyberdial validate POLICY --scenario {out}")
    return 0
