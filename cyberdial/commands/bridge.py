"""`cyberdial bridge RUN_ID`: serve agents from a running emulated range.

Reads the run's state file (`RUNS_ROOT/RUN_ID/state.json`, written by the
emulator) for the host endpoints, the scenario and the plan its referee needs,
asks the run's controller for the host keys (never on disk) and, at each
episode's start, to reset the range (`controller.DetachedRange`), binds the host hub
there and serves agents until interrupted, SIGTERM (`cyberdial range down`), or
the run's controller is gone. Without a run directory, endpoints, scenario and a
host key file can be given explicitly (see --help).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from types import FrameType

import zmq.auth

from cyberdial.bridge.service import BridgeService, CurveKeys
from cyberdial.commands.common import console
from cyberdial.range.errors import CyberdialError
from cyberdial.range.hub import HostHub
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.truth import EpisodeReset, NoReferee, NoReset, Referee
from cyberdial.range.wire import Hello, HostKeys

logger = logging.getLogger(__name__)

DEFAULT_MAX_HOURS = 24.0
BRIDGE_FILE = "bridge.json"
# How often a serving bridge checks that its run's controller still lives.
RUN_CHECK_S = 1.0


class BridgeSetupError(CyberdialError):
    """The bridge cannot attach to the run as asked."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bridge", help="serve agents (EmulatedRange clients) from a running emulated range",
        description="Attach to a running range's sensors and actuators and serve agents. "
        "The range must be up without its own hub (the bridge binds the host endpoints).",
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to attach to")
    parser.add_argument("--runs-root", type=Path, default=None,
                        help="where run directories live"
                        " (default: $CYBERDIAL_RUNS or /run/cyberdial)")
    parser.add_argument("--agent-endpoint", default=None,
                        help="where agents connect (default: ipc://RUN_DIR/agents.sock);"
                        " off loopback tcp needs --curve-secret")
    parser.add_argument("--alerts", default=None,
                        help="host alert endpoint, instead of the run's state file")
    parser.add_argument("--commands", default=None,
                        help="host command endpoint, instead of the run's state file")
    parser.add_argument("--scenario", default=None,
                        help="scenario file or name, instead of the run directory's copy")
    parser.add_argument("--host-key-file", type=Path, default=None,
                        help="with explicit endpoints: a file (mode 0600) holding the host"
                        " programs' master key as one `cyberdial-key HEX` line")
    parser.add_argument("--no-referee", action="store_true",
                        help="serve without ground truth (rewards then hold only blue's own"
                        " costs); for runs without a run directory")
    parser.add_argument("--step-period", type=float, default=None,
                        help="the least seconds a step lasts, the pace of a watched drill"
                        " (default: the scenario's; 0: as fast as the hosts allow)")
    parser.add_argument("--curve-secret", type=Path, default=None,
                        help="the bridge's .key_secret file (zmq.auth.create_certificates)")
    parser.add_argument("--allow-clients", type=Path, default=None,
                        help="folder of client .key files allowed in (default with Curve:"
                        " any client that knows the bridge's public key)")
    parser.add_argument("--max-hours", type=float, default=DEFAULT_MAX_HOURS,
                        help=f"stop after this long (default: {DEFAULT_MAX_HOURS:g})")
    parser.set_defaults(func=bridge_command)


def _refuse_taken_ipc(endpoint: str) -> None:
    """An ipc bind silently replaces a live socket file: refuse instead of stealing it."""
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://"):]
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        return  # nobody listens there
    finally:
        probe.close()
    raise BridgeSetupError(
        f"{endpoint} is already served (is the range running its own hub, or another bridge?):"
        " start the range without a hub, or stop the other bridge")


def _check_exposure(endpoint: str, curve: CurveKeys | None) -> None:
    if not endpoint.startswith("tcp://") or curve is not None:
        return
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise BridgeSetupError(
            f"{endpoint} is reachable from other machines: add --curve-secret (see docs/bridge.md)"
            " or bind tcp://127.0.0.1")


class _Run:
    """What attaching to a run needs: its files, its controller, its host programs."""

    def __init__(self, args: argparse.Namespace) -> None:
        # The emulator is optional at import time: this path needs it, the explicit one not.
        from cyberdial.range.emulation.controller import DetachedRange
        from cyberdial.range.emulation.keys import expected_peers, fetch_host_keys
        from cyberdial.range.emulation.plan import RangePlan
        from cyberdial.range.emulation.referee import Referee as EmulationReferee
        from cyberdial.range.emulation.state import RunState

        state = RunState.load(args.run_id, args.runs_root)
        self.state = state
        self.run_dir = Path(state.run_dir)
        if state.status != "up":
            raise BridgeSetupError(f"run {args.run_id} is {state.status}, not up: wait for"
                                   f" `cyberdial range up` to finish, or start it again")
        if not state.controller.alive():
            raise BridgeSetupError(
                f"the controller of run {args.run_id} (pid {state.controller.pid}) is gone:"
                f" run `cyberdial range down {args.run_id}` and bring the range up again")
        self.scenario = (load_scenario(args.scenario) if args.scenario else
                         Scenario.model_validate_json(
                             (self.run_dir / "scenario.json").read_text("utf-8")))
        plan = RangePlan.load(self.run_dir)
        self.referee: Referee | None = None
        if not args.no_referee:
            self.referee = EmulationReferee(plan, self.scenario)
        self.alerts = args.alerts or state.endpoints["alerts"]
        self.commands = args.commands or state.endpoints["commands"]
        self.keys = fetch_host_keys(args.run_id, state.controller.pid)
        # Each episode starts with the range reset by its controller.
        self.range_reset: EpisodeReset = DetachedRange(args.run_id, state.controller.pid)
        roles = {p.role for p in state.programs}
        self.expected: dict[str, Hello] = expected_peers(plan, roles)
        # The range's programs follow the step clock this bridge keeps.
        self.clock_endpoint: str | None = plan.clock_endpoint

    def alive(self) -> bool:
        return self.state.controller.alive() and (self.run_dir / "state.json").exists()


def _read_host_key_file(path: Path | None) -> bytes:
    from cyberdial.range.emulation.keys import parse_key_line

    if path is None:
        raise BridgeSetupError("with explicit endpoints give --host-key-file (the master key"
                               " your host programs' keys derive from; see docs/protocol.md)")
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BridgeSetupError(f"{path} is readable by others: chmod 600 it")
        with path.open("rb") as file:
            return parse_key_line(file.read(256))
    except OSError as error:
        raise BridgeSetupError(f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise BridgeSetupError(f"{path} holds no `cyberdial-key HEX` line of 32 bytes or"
                               " more") from None


def bridge_command(args: argparse.Namespace) -> int:
    explicit = args.alerts and args.commands and args.scenario
    run: _Run | None = None
    expected: dict[str, Hello] = {}
    clock_endpoint: str | None = None
    range_reset: EpisodeReset = NoReset(
        "this bridge knows its range only by endpoints (--alerts/--commands), so it cannot"
        " reset it; attach by RUN_ID alone to a `cyberdial range up` run for real resets")
    if explicit and args.no_referee:
        scenario = load_scenario(args.scenario)
        alerts, commands, referee, run_dir = args.alerts, args.commands, None, None
    elif explicit:
        raise BridgeSetupError("with explicit endpoints there is no run directory to read the"
                               " referee from: add --no-referee, or attach by RUN_ID alone")
    else:
        run = _Run(args)
        scenario, alerts, commands, referee, run_dir = (
            run.scenario, run.alerts, run.commands, run.referee, run.run_dir)
        expected = run.expected
        clock_endpoint = run.clock_endpoint
        range_reset = run.range_reset
    if referee is None:
        logger.warning("no referee: rewards hold only blue's own costs (bits, restores, actions)")
    curve = CurveKeys.load(args.curve_secret) if args.curve_secret else None
    allowed = None
    if args.allow_clients is not None:
        allowed = [zmq.auth.load_certificate(str(path))[0]
                   for path in sorted(args.allow_clients.glob("*.key"))]
        if not allowed:
            raise BridgeSetupError(f"no client .key files in {args.allow_clients}")
    if args.agent_endpoint:
        agent_endpoint = args.agent_endpoint
    elif run_dir is not None:
        agent_endpoint = f"ipc://{run_dir / 'agents.sock'}"
    else:
        raise BridgeSetupError("give --agent-endpoint (there is no run directory to put it in)")
    _check_exposure(agent_endpoint, curve)
    keys = run.keys if run is not None else HostKeys(args.run_id,
                                                     _read_host_key_file(args.host_key_file))
    for endpoint in (alerts, commands, agent_endpoint, clock_endpoint):
        if endpoint is not None:
            _refuse_taken_ipc(endpoint)

    hub = HostHub(args.run_id, alerts, commands, keys=keys, expected=expected,
                  clock_endpoint=clock_endpoint)
    service = BridgeService(scenario, hub, referee or NoReferee(GameModel(scenario)),
                            agent_endpoint, range_reset=range_reset, step_period_s=args.step_period,
                            curve=curve, allowed_clients=allowed)
    stop = threading.Event()
    reason = ["interrupted"]

    def on_term(signum: int, frame: FrameType | None) -> None:
        reason[0] = "asked to stop (SIGTERM)"
        stop.set()

    # `range down` sends SIGTERM; signals can only be caught in the main thread (tests run
    # this command in another one).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    with service:
        if run_dir is not None:
            from cyberdial.range.emulation.netns import process_start_time

            info = {"agent_endpoint": service.agent_endpoint, "scenario": scenario.name,
                    "scenario_hash": scenario.scenario_hash,
                    "server_key": curve.public.decode() if curve else None,
                    "pid": os.getpid(), "start": process_start_time(os.getpid()) or 0}
            (run_dir / BRIDGE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
        console.print(f"bridge for run {args.run_id} ({scenario.name}): agents on"
                      f" {service.agent_endpoint}; hosts on {hub.alert_endpoint},"
                      f" {hub.command_endpoint}. Ctrl-C stops it.")
        deadline = time.monotonic() + args.max_hours * 3600
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                service.serve(stop=stop, deadline=min(deadline, time.monotonic() + RUN_CHECK_S))
                if run is not None and not run.alive():
                    reason[0] = f"run {args.run_id} is gone (its controller stopped)"
                    break
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
            if run_dir is not None:
                (run_dir / BRIDGE_FILE).unlink(missing_ok=True)
            console.print(f"bridge stopped ({reason[0]}) after {service.steps_served} steps;"
                          f" dropped host messages {dict(hub.drops.counts)},"
                          f" agent messages {dict(service.drops.counts)}")
    return 0
