"""The emulated lab in one piece: a range on real hosts, its bridge, and an agents' client.

`emulated_lab` is the one assembly that drills, validation, benchmarks and tests
use: it brings the scenario up (`Range`, without its own hub), gives the bridge the
range's hub (endpoints, keys, the programs it started, the step clock), serves the
bridge in a thread, waits until every program of the range has said hello, and
connects an `EmulatedRange`. Leaving the context closes the client, stops the
bridge and takes the range down, whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cyberdial.bridge.env import EmulatedRange
from cyberdial.bridge.service import BridgeService, BridgeThread, StepLog
from cyberdial.range.hub import HostHub
from cyberdial.range.scenario import Scenario

if TYPE_CHECKING:
    from cyberdial.range.emulation.capture import CaptureLimits
    from cyberdial.range.emulation.emulator import Range

logger = logging.getLogger(__name__)

# How long the lab waits for the range's programs to reach the bridge before it warns.
PEERS_WAIT_S = 30.0
# sizeof(sockaddr_un.sun_path) less its terminating NUL: the longest ipc:// path ZeroMQ binds.
IPC_PATH_MAX = 107


@dataclass
class Lab:
    """What `emulated_lab` assembled."""

    range: Range
    hub: HostHub
    service: BridgeService
    env: EmulatedRange

    @property
    def run_id(self) -> str:
        return self.range.run_id


@contextlib.contextmanager
def emulated_lab(
    scenario: Scenario,
    workdir: Path | None = None,
    *,
    step_period_s: float | None = None,
    step_log: Callable[[StepLog], None] | None = None,
    capture_dir: Path | None = None,
    capture_limits: CaptureLimits | None = None,
    run_id: str | None = None,
) -> Iterator[Lab]:
    """The scenario on real hosts with its bridge and a client; needs root.

    `step_period_s`: the least a step lasts (None: the scenario's, a watched drill;
    0: as fast as the hosts allow, validation). `step_log` gets every step's host
    side (alerts, command results, ground truth). The agents' socket lies in
    `workdir` (default, or when `workdir` is too deep for a unix socket's path: a
    temporary folder). `run_id`: the range's run id, chosen by
    the caller (default: a new one).
    """
    # Imported here: the emulator needs root and Mininet; nothing else in bridge/ does.
    from cyberdial.range.emulation.emulator import Range

    with contextlib.ExitStack() as stack:
        emulated = stack.enter_context(
            Range(scenario, hub=False, capture_dir=capture_dir, capture_limits=capture_limits,
                  run_id=run_id))
        if workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(dir="/tmp", prefix="cdlab")))
        workdir.mkdir(parents=True, exist_ok=True)
        assert emulated.referee is not None
        hub = emulated.new_hub()
        socket_path = workdir.resolve() / f"agents-{emulated.run_id}.sock"
        if len(str(socket_path).encode()) > IPC_PATH_MAX:
            # A unix socket's path holds at most 107 bytes: a deep folder's goes to /tmp.
            socket_path = Path(stack.enter_context(tempfile.TemporaryDirectory(
                dir="/tmp", prefix="cdlab"))) / socket_path.name
        endpoint = f"ipc://{socket_path}"
        service = BridgeService(scenario, hub, emulated.referee, endpoint,
                                range_reset=emulated, step_period_s=step_period_s)
        service.step_log = step_log
        stack.enter_context(BridgeThread(service))
        _wait_for_programs(hub)
        env = EmulatedRange(scenario, endpoint, run_id=emulated.run_id)
        stack.callback(env.close)
        yield Lab(emulated, hub, service, env)


def _wait_for_programs(hub: HostHub) -> None:
    # The bridge's thread serves the hub: look without touching its sockets.
    deadline = time.monotonic() + PEERS_WAIT_S
    while time.monotonic() < deadline:
        if all(status.heard for status in hub.peers(pump=False).values()):
            return
        time.sleep(0.05)
    silent = sorted(name for name, s in hub.peers(pump=False).items() if not s.heard)
    logger.warning("%d of the range's programs did not reach the bridge: %s", len(silent),
                   ", ".join(silent[:5]))
