"""`cyberdial range up|status|down|shell`: the emulated range from the command line."""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

from cyberdial.commands.common import console
from cyberdial.range.errors import CyberdialError, HostCommandError

UP_TIMEOUT_S = 600.0
DOWN_WAIT_S = 60.0
BRIDGE_WAIT_S = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("range", help="run a scenario as an emulated network (root)")
    actions = parser.add_subparsers(dest="range_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="bring a scenario up on Mininet; prints its run id")
    up.add_argument("scenario", metavar="SCENARIO", help="scenario file or shipped name (tiny)")
    up.add_argument("--seed", type=int, default=None, help="red's seed (default: the scenario's)")
    up.add_argument("--pcap", action="store_true",
                    help="capture every subnet bridge to pcapng files in the run's logs (pcap/)")
    up.add_argument("--pcap-mb", type=int, default=100, metavar="MB",
                    help="at most about this many MB of capture per subnet (default: 100)")
    up.set_defaults(func=up_command)
    status = actions.add_parser("status", help="list the runs on this machine")
    status.set_defaults(func=status_command)
    down = actions.add_parser("down", help="remove everything a run made (also after a crash)")
    down.add_argument("run_id", metavar="RUN_ID")
    down.set_defaults(func=down_command)
    shell = actions.add_parser("shell", help="a shell (or a command) inside a host of a run")
    shell.add_argument("run_id", metavar="RUN_ID")
    shell.add_argument("host", metavar="HOST")
    shell.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                       help="run this instead of an interactive shell")
    shell.set_defaults(func=shell_command)


def up_command(args: argparse.Namespace) -> int:
    from cyberdial.range.emulation.emulator import require_root
    from cyberdial.range.emulation.plan import RangePlan
    from cyberdial.range.emulation.state import RunState
    from cyberdial.range.scenario import load_scenario, resolve_scenario_path

    require_root()
    scenario = load_scenario(args.scenario)  # errors with file:line:column, before any work
    argv = [sys.executable, "-m", "cyberdial.range.emulation.daemon",
            str(resolve_scenario_path(args.scenario))]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.pcap:
        from cyberdial.range.emulation.capture import CaptureLimits

        CaptureLimits.per_subnet(args.pcap_mb)  # a bad size is an error before any work
        argv += ["--pcap-mb", str(args.pcap_mb)]
    daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    assert daemon.stdout is not None
    console.print(f"bringing up {scenario.name} ({len(scenario.all_hosts)} hosts)...")
    poller = select.poll()
    poller.register(daemon.stdout, select.POLLIN)
    line = daemon.stdout.readline().decode().strip() if poller.poll(
        int(UP_TIMEOUT_S * 1000)) else ""
    daemon.stdout.close()
    if not line.startswith("READY "):
        raise HostCommandError(
            line.removeprefix("FAILED ") or f"the range did not come up in {UP_TIMEOUT_S:.0f} s")
    run_id = line.split()[1]
    state = RunState.load(run_id)
    plan = RangePlan.load(state.run_dir)
    table = Table(title=f"run {run_id}: {scenario.name}")
    for column in ("host", "subnet", "address", "services"):
        table.add_column(column)
    for host in plan.hosts[:40]:
        table.add_row(host.name, host.subnet, host.ip,
                      ", ".join(f"{s.name}/{s.port}" for s in host.services))
    if len(plan.hosts) > 40:
        table.add_row(f"... {len(plan.hosts) - 40} more", "", "", "")
    console.print(table)
    console.print(f"run id: {run_id}")
    console.print(f"logs: {state.logs_dir}")
    if args.pcap:
        console.print(f"packet captures: {state.logs_dir}/pcap")
    console.print(f"alerts endpoint: {state.endpoints['alerts']}")
    console.print(f"commands endpoint: {state.endpoints['commands']}")
    console.print(f"a shell in a host: cyberdial range shell {run_id} {plan.hosts[0].name}")
    console.print(f"stop it: cyberdial range down {run_id}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    from cyberdial.range.emulation.state import list_runs

    runs = list_runs()
    if not runs:
        console.print("no runs on this machine")
        return 0
    table = Table(title="emulated runs")
    for column in ("run id", "scenario", "status", "hosts", "controller", "programs", "up since",
                   "logs"):
        table.add_column(column)
    for run in runs:
        alive = sum(p.alive() for p in run.programs)
        table.add_row(
            run.run_id, run.scenario, run.status, str(run.hosts),
            "alive" if run.controller.alive() else "gone (crashed?)",
            f"{alive}/{len(run.programs)}", time.strftime("%H:%M:%S", time.localtime(run.created)),
            run.logs_dir,
        )
    console.print(table)
    return 0


def stop_bridge(run_dir: Path) -> int | None:
    """SIGTERM the `cyberdial bridge` serving a run (its bridge.json names it); its PID."""
    import json

    from cyberdial.range.emulation.state import ProcessRecord

    try:
        info = json.loads((run_dir / "bridge.json").read_text(encoding="utf-8"))
        bridge = ProcessRecord(pid=int(info["pid"]), start=int(info["start"]), role="bridge")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no bridge, or one from before bridges recorded their PID
    if not bridge.alive() or bridge.pid == os.getpid():
        return None
    try:
        with open(f"/proc/{bridge.pid}/cmdline", "rb") as file:
            argv = file.read(4096).split(b"\0")
    except OSError:
        return None
    # bridge.json lies in a folder hosts can write to: signal only a real bridge of this run.
    if b"bridge" not in argv or run_dir.name.encode() not in argv:
        return None
    os.kill(bridge.pid, signal.SIGTERM)
    deadline = time.monotonic() + BRIDGE_WAIT_S
    while time.monotonic() < deadline and bridge.alive():
        time.sleep(0.05)
    if bridge.alive():
        os.kill(bridge.pid, signal.SIGKILL)
    return bridge.pid


def down_command(args: argparse.Namespace) -> int:
    from cyberdial.range.emulation.emulator import require_root
    from cyberdial.range.emulation.state import RunState, teardown_run

    require_root()
    state = RunState.load(args.run_id)
    stopped = stop_bridge(Path(state.run_dir))
    if stopped is not None:
        console.print(f"stopped the bridge of run {args.run_id} (pid {stopped})")
    controller = state.controller
    if controller.alive() and controller.pid != os.getpid():
        # A live controller tears down its own range (and reaps its children).
        os.kill(controller.pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_WAIT_S
        while time.monotonic() < deadline and controller.alive():
            time.sleep(0.1)
    try:
        report = teardown_run(args.run_id)
    except CyberdialError:
        console.print(f"run {args.run_id} is down")
        return 0
    if report.links_left:
        raise HostCommandError(f"links left: {report.links_left}; run the command again")
    if report.containers_left:
        raise HostCommandError(
            f"containers left on {state.engine_url}: {report.containers_left[:3]}; once that"
            " Docker engine answers, run the command again")
    console.print(f"run {args.run_id} is down: {report.killed} processes killed,"
                  f" {report.links_deleted} links deleted, {report.seconds:.1f} s")
    return 0


def shell_command(args: argparse.Namespace) -> int:
    from cyberdial.range.emulation.emulator import require_root
    from cyberdial.range.emulation.plan import RangePlan
    from cyberdial.range.emulation.state import RunState

    require_root()
    state = RunState.load(args.run_id)
    plan = RangePlan.load(state.run_dir)
    if args.host not in plan.host_pids:
        known = ", ".join(sorted(plan.host_pids)[:10])
        raise HostCommandError(f"no host {args.host!r} in run {args.run_id} (hosts: {known}...)")
    command = [c for c in args.command if c != "--"] or [
        "env", f"PS1={args.host}@{args.run_id}# ", "bash", "--norc", "-i"]
    sys.stdout.flush()
    os.execvp("mnexec", ["mnexec", "-a", str(plan.host_pids[args.host]), *command])
    return 0  # not reached: exec replaced this process
