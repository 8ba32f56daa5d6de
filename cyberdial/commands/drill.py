"""`cyberdial drill|report|replay`: run a recorded defence drill, report on it, replay it."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.live import Live

from cyberdial.agents.baselines import BASELINES, BatchPolicy, make_baseline
from cyberdial.agents.checkpoint import load_policy
from cyberdial.agents.drill import (
    PCAP_DIR,
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
    RecordingHeader,
    StepRecord,
    header_for,
    load_recording,
)
from cyberdial.agents.report import write_report
from cyberdial.commands.common import console, stop_signals_interrupt
from cyberdial.range.errors import CyberdialError, NotRootError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from cyberdial.agents.web.server import WebAddress, WebView


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
        help="seconds per step, for watching: a sim drill's (default: 0 without a terminal,"
        " the scenario's step period with one or with --web); on the emulated range the"
        " least a step lasts (default: the scenario's step period; 0: as fast as the hosts"
        " allow, every step still in lockstep)",
    )
    drill.add_argument("--no-live", action="store_true", help="no live view, just the summary")
    drill.add_argument(
        "--web",
        nargs="?",
        const="",
        default=None,
        metavar="ADDR",
        help="also show the drill on a web page at ADDR (HOST:PORT, default 127.0.0.1:8765;"
        " port 0 picks a free one); the address printed carries the page's token; with --human"
        " you play from the page",
    )
    drill.add_argument(
        "--pcap",
        action="store_true",
        help="emulated: capture every subnet bridge's traffic to pcapng files in the run"
        " directory's pcap/ (a ring of files per subnet, see --pcap-mb)",
    )
    drill.add_argument(
        "--pcap-mb",
        type=int,
        default=100,
        metavar="MB",
        help="at most about this many MB of capture per subnet; older packets are dropped"
        " (default: 100)",
    )
    drill.add_argument(
        "--human-deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time the human seat has to choose each step (default: the scenario's step period)",
    )
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


def drill_command(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CyberdialError("--episodes must be at least 1")
    if args.range_kind == "emulated" and os.geteuid() != 0:
        raise NotRootError("a drill on the emulated range")
    scenario = load_scenario(args.scenario)
    policy, model = resolve_policy(args.policy, scenario, args.seed)
    interactive = sys.stdout.isatty() and not args.no_live
    pace = args.pace if args.pace is not None else (scenario.step_period if interactive else 0.0)
    bridge_pace: float | None = args.pace
    if args.range_kind == "emulated":
        pace = 0.0  # the bridge keeps the pace itself (the scenario's step period by default)
    if args.pcap and args.range_kind != "emulated":
        raise CyberdialError("--pcap captures real packets: it needs --range emulated")
    pcap_limits = None
    if args.pcap:
        from cyberdial.range.emulation.capture import CaptureLimits

        pcap_limits = CaptureLimits.per_subnet(args.pcap_mb)
    if args.human_deadline is not None and not 0.1 <= args.human_deadline <= 3600:
        raise CyberdialError("--human-deadline must be between 0.1 and 3600 seconds")
    if args.human_deadline is not None and not args.human:
        raise CyberdialError("--human-deadline needs --human AGENT")
    web_address = None
    if args.web is not None:
        # Imported here: the web server (starlette, uvicorn) is only needed with --web.
        from cyberdial.agents.web.server import parse_address

        web_address = parse_address(args.web)
        if args.pace is None and args.range_kind == "sim":
            pace = scenario.step_period  # a page is watched: keep the scenario's pace
    deadline = args.human_deadline if args.human_deadline is not None else scenario.step_period
    human: HumanSeat | None = None
    if args.human and web_address is None:
        human = HumanSeat(model, args.human, deadline, sys.stdin, sys.stdout)
    elif args.human and args.human not in model.agent_names:
        raise CyberdialError(
            f"--human {args.human}: no such agent; choose one of {', '.join(model.agent_names)}"
        )
    name = f"{scenario.name}__{Path(args.policy).stem}__{time.strftime('%Y%m%d-%H%M%S')}"
    out = args.out or Path("runs") / "drills" / name
    # Ctrl-C and SIGTERM end the drill the same way: the range comes down, the
    # recording keeps what was played and is reported; SIGINT does so even in a drill
    # started in the background of a non-interactive shell (a CI job, `cmd &`).
    with stop_signals_interrupt():
        try:
            with contextlib.ExitStack() as stack:
                drill_range: DrillRange
                if args.range_kind == "emulated":
                    console.print(f"bringing up {scenario.name} on real hosts...")
                    emulated = stack.enter_context(
                        EmulatedDrillRange(model, out, pcap_limits, step_period_s=bridge_pace))
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
                publish = None
                if web_address is not None:
                    web = _start_web(stack, header, scenario, web_address)
                    publish = web.publish
                    stack.callback(web.finish)
                    if args.human:
                        from cyberdial.agents.web.server import WebSeat

                        human = WebSeat(model, args.human, deadline, web)
                        interactive = False
                ends = _play(
                    drill_range, policy, args, recorder, view, human, interactive, pace, publish
                )
        except KeyboardInterrupt:
            if (out / RECORDING_NAME).is_file():
                report = write_report(load_recording(out), out)
                console.print(
                    f"interrupted; the range is down.\nrecording: {out / RECORDING_NAME}\n"
                    f"report: {report}"
                )
            raise
    for end in ends:
        console.print(
            f"episode {end.episode}: return {end.episode_return:.2f},"
            f" {end.bits_sent} bits, {end.steps} steps"
        )
    report = write_report(load_recording(out), out)
    console.print(f"recording: {out / RECORDING_NAME}\nreport: {report}")
    if args.pcap:
        console.print(f"packet captures: {out / PCAP_DIR}")
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
    publish: Callable[[StepRecord], None] | None = None,
) -> list[EpisodeEnd]:
    if interactive and human is None:
        with Live(view.render(), console=console, refresh_per_second=8) as live:

            def show(step: StepRecord) -> None:
                if publish is not None:
                    publish(step)
                view.update(step)
                live.update(view.render())

            return run_drill(
                drill_range, policy, args.episodes, args.seed, recorder, on_step=show, pace_s=pace
            )

    def show_plain(step: StepRecord) -> None:
        if publish is not None:
            publish(step)
        view.update(step)
        if human is not None and publish is None:
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


def _start_web(
    stack: contextlib.ExitStack[bool | None],
    header: RecordingHeader,
    scenario: Scenario,
    address: WebAddress,
) -> WebView:
    """The web view, up until `stack` closes; prints its address (with the token)."""
    from cyberdial.agents.picture import Topology
    from cyberdial.agents.web.server import WebView

    web = stack.enter_context(WebView(header, Topology.of_scenario(scenario), address))
    if not address.loopback:
        console.print(
            f"[bold yellow]the web view listens on {address.host}, not only this machine:[/]"
            " anyone with the address below (it carries the token) can watch and play the seat"
        )
    console.print(f"web view: {web.url}", soft_wrap=True)
    return web


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
