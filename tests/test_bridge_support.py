"""Shared setup for the bridge tests (no tests here): a bridge on ipc endpoints, a host side."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from cyberdial.bridge.service import BridgeService, BridgeThread, CurveKeys
from cyberdial.range.hub import HostHub
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario
from cyberdial.range.simhosts import SimReferee, SimulatedHosts
from cyberdial.range.truth import EpisodeReset, NoReferee, NoReset, Referee
from cyberdial.range.wire import HostKeys

RUN = "test-run"
HEARTBEAT = 0.05
# The run's master secret: links sign with KEYS.key(their name), as real programs do.
KEYS = HostKeys.generate(RUN)


@dataclass
class Endpoints:
    alerts: str
    commands: str
    agents: str


@contextmanager
def endpoints() -> Iterator[Endpoints]:
    # ipc paths are limited to ~107 bytes; a mkdtemp under /tmp stays short.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="cdb") as folder:
        base = Path(folder)
        yield Endpoints(f"ipc://{base / 'a'}", f"ipc://{base / 'c'}", f"ipc://{base / 'g'}")


def no_truth(scenario: Scenario) -> NoReferee:
    """The referee for scripted host sides: nothing is ever compromised."""
    return NoReferee(GameModel(scenario))


# Scripted host sides are no range: they decline to reset (the bridge says so once).
SCRIPTED = NoReset("a test's scripted host side")


@contextmanager
def bridge(
    scenario: Scenario, ends: Endpoints, context: zmq.Context[Any], referee: Referee, *,
    step_period_s: float, command_timeout_s: float | None = None,
    curve: CurveKeys | None = None, allowed_clients: list[bytes] | None = None,
    range_reset: EpisodeReset = SCRIPTED,
) -> Iterator[BridgeService]:
    hub = HostHub(RUN, ends.alerts, ends.commands, keys=KEYS, context=context,
                  heartbeat_interval_s=HEARTBEAT)
    service = BridgeService(scenario, hub, referee, ends.agents, range_reset=range_reset,
                            step_period_s=step_period_s, command_timeout_s=command_timeout_s,
                            curve=curve, allowed_clients=allowed_clients, context=context)
    with BridgeThread(service) as running:
        yield running


@contextmanager
def simulated_range(
    scenario: Scenario, context: zmq.Context[Any], *, step_period_s: float = 0.02,
    seed: int = 0,
) -> Iterator[tuple[BridgeService, SimulatedHosts, Endpoints]]:
    """Bridge + simulator-backed sensors and actuators, all on real ipc sockets."""
    with endpoints() as ends:
        hosts = SimulatedHosts(scenario, RUN, ends.alerts, ends.commands, keys=KEYS,
                               step_period_s=step_period_s, seed=seed,
                               heartbeat_interval_s=HEARTBEAT, context=context)
        with bridge(scenario, ends, context, SimReferee(hosts), step_period_s=step_period_s,
                    command_timeout_s=0.5, range_reset=hosts) as service, hosts:
            wait_for(lambda: len(service.hub._peers) >= 2 * len(scenario.subnets))
            yield service, hosts, ends


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")
