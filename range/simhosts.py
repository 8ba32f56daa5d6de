"""The simulated host side: the simulator behind real sensor and actuator sockets.

A range has two host sides that a bridge can drive through a `HostHub`: the
emulated one (`range/emulation/`: real hosts and the programs inside them) and this
one. `SimulatedHosts` plays the hosts of a scenario with a `SimBatch`: a world
thread advances red and green every step period and raises alerts through one
`SensorLink` per subnet (range/hub.py); one `ActuatorLink` thread per subnet applies
blue's commands to the simulated state. It resets like a range (`reset_episode`, a
`truth.EpisodeReset`) and `SimReferee` reads its ground truth. It is the bridge's
test and benchmark backend: same messages as real hosts, no root. Sensors and
actuators can be killed (no bye) and restarted, like processes. Each signs with its
own key from the run's `HostKeys`, as real programs do.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import numpy as np
import zmq

from cyberdial.range.hub import HEARTBEAT_INTERVAL_S, ActuatorLink, SensorLink
from cyberdial.range.model import Activity, AlertKind, Compromise, GameModel
from cyberdial.range.scenario import Scenario
from cyberdial.range.sim import SimBatch
from cyberdial.range.truth import FINDING_TEXT, Measurement
from cyberdial.range.wire import Alert, Command, CommandResult, HostKeys

logger = logging.getLogger(__name__)

_ACTIVITY_ALERT = {int(Activity.SCAN): AlertKind.SCAN, int(Activity.EXPLOIT): AlertKind.EXPLOIT}
# Upper bound on one thread's lifetime, so a forgotten host side cannot outlive a test run.
MAX_LIFETIME_S = 3600.0


def sensor_name(subnet: str) -> str:
    return f"sensor-{subnet}"


def actuator_name(subnet: str) -> str:
    return f"actuator-{subnet}"


class SimulatedHosts:
    """Sensors and actuators for every subnet of a scenario, driven by a one-env `SimBatch`."""

    def __init__(
        self,
        scenario: Scenario,
        run_id: str,
        alert_endpoint: str,
        command_endpoint: str,
        *,
        keys: HostKeys,
        step_period_s: float | None = None,
        seed: int | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.scenario = scenario
        self.model = GameModel(scenario)
        self.run_id = run_id
        self.alert_endpoint = alert_endpoint
        self.command_endpoint = command_endpoint
        self.keys = keys
        self.step_period_s = scenario.step_period if step_period_s is None else step_period_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.batch = SimBatch(self.model, n_envs=1, seed=seed)
        self.lock = threading.Lock()
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._stop = threading.Event()
        self._wanted_sensors = {subnet.name for subnet in scenario.subnets}
        self._actuator_stops: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self._green_failures = 0
        self.ticks = 0
        self.alerts_sent = 0
        self.commands_applied = 0

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> SimulatedHosts:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        world = threading.Thread(target=self._world, name="sim-world", daemon=True)
        world.start()
        self._threads.append(world)
        for subnet in self.scenario.subnets:
            self.start_actuator(subnet.name)

    def stop(self) -> None:
        self._stop.set()
        for event in self._actuator_stops.values():
            event.set()
        for thread in self._threads:
            thread.join(5.0)
        self._threads.clear()
        if self._own_context:
            self._context.term()

    # --------------------------------------------------------- fault control

    def kill_sensor(self, subnet: str) -> None:
        """The subnet's sensor dies without a bye (its alerts and heartbeats stop)."""
        with self.lock:
            self._wanted_sensors.discard(subnet)

    def start_sensor(self, subnet: str) -> None:
        with self.lock:
            self._wanted_sensors.add(subnet)

    def kill_actuator(self, subnet: str) -> None:
        event = self._actuator_stops.pop(subnet, None)
        if event is not None:
            event.set()

    def start_actuator(self, subnet: str) -> None:
        stop = threading.Event()
        self._actuator_stops[subnet] = stop
        thread = threading.Thread(target=self._actuator, args=(subnet, stop),
                                  name=actuator_name(subnet), daemon=True)
        thread.start()
        self._threads.append(thread)

    # ----------------------------------------------------------- the world

    def reset_episode(self, seed: int | None = None) -> None:
        """Step 0 of a new episode (`truth.EpisodeReset`): the simulated world starts over."""
        with self.lock:
            self.batch.reset(seed)
            self._green_failures = 0

    def _world(self) -> None:
        links: dict[str, SensorLink] = {}
        started = time.monotonic()
        next_tick = started + self.step_period_s
        try:
            while not self._stop.is_set() and time.monotonic() - started < MAX_LIFETIME_S:
                with self.lock:
                    wanted = set(self._wanted_sensors)
                for subnet in set(links) - wanted:
                    links.pop(subnet).close(say_bye=False)
                for subnet in wanted - set(links):
                    links[subnet] = self._sensor_link(subnet)
                for link in links.values():
                    link.maybe_heartbeat()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(links)
                    next_tick = max(next_tick + self.step_period_s, now)
                self._stop.wait(max(min(next_tick - time.monotonic(),
                                        self.heartbeat_interval_s / 2), 0.0))
        finally:
            for link in links.values():
                link.close(say_bye=False)

    def _sensor_link(self, subnet: str) -> SensorLink:
        hosts = tuple(h.name for h in self.scenario.hosts_in(subnet))
        name = sensor_name(subnet)
        link = SensorLink(self.alert_endpoint, self.run_id, name, key=self.keys.key(name),
                          hosts=hosts, subnet=subnet, context=self._context,
                          heartbeat_interval_s=self.heartbeat_interval_s)
        link.hello()
        return link

    def _tick(self, links: dict[str, SensorLink]) -> None:
        """One step of red and green on the simulated hosts; activity becomes alerts."""
        batch = self.batch
        with self.lock:
            batch.activity[:] = Activity.NONE
            batch._red_step()
            self._green_failures += int(batch._green_step()[0])
            np.maximum(batch.down - 1, 0, out=batch.down)
            batch.t += 1
            activity = batch.activity[0].copy()
        self.ticks += 1
        now = time.time()
        by_subnet: dict[str, list[Alert]] = {}
        for host_index in np.flatnonzero(activity):
            host = self.scenario.all_hosts[int(host_index)]
            by_subnet.setdefault(host.subnet, []).append(Alert(
                host=host.name, kind=_ACTIVITY_ALERT[int(activity[host_index])], observed_at=now,
                evidence="simulated",
            ))
        for subnet, alerts in by_subnet.items():
            link = links.get(subnet)
            if link is None:
                continue  # that sensor is dead: its alerts are lost, as on real hosts
            for alert in alerts:
                link.send("alert", alert)
            self.alerts_sent += len(alerts)

    # --------------------------------------------------------- the actuators

    def _actuator(self, subnet: str, stop: threading.Event) -> None:
        hosts = tuple(h.name for h in self.scenario.hosts_in(subnet))
        name = actuator_name(subnet)
        link = ActuatorLink(self.command_endpoint, self.run_id, name, hosts,
                            subnet, self.apply, key=self.keys.key(name), context=self._context,
                            heartbeat_interval_s=self.heartbeat_interval_s)
        try:
            link.hello()
            link.serve(stop=stop, deadline=time.monotonic() + MAX_LIFETIME_S)
        finally:
            # A killed actuator says no bye; a stopped host side does.
            link.close(say_bye=self._stop.is_set())

    def apply(self, command: Command) -> CommandResult:
        """Carry a blue command out on the simulated hosts (what a real actuator does for real)."""
        scenario, batch = self.scenario, self.batch
        compromise: str | None = None
        with self.lock:
            if command.host is not None:
                h = scenario.host_index[command.host]
                if command.action == "analyse":
                    # Analyse reports in the wire's terms: a clean host reads "none".
                    compromise = FINDING_TEXT[Compromise(int(batch.compromise[0, h]))]
                elif command.action == "remove":
                    if batch.compromise[0, h] == Compromise.USER:
                        batch.compromise[0, h] = Compromise.CLEAN
                elif command.action == "restore":
                    batch.compromise[0, h] = Compromise.CLEAN
                    batch.impacted[0, h] = False
                    batch.decoy[0, h] = False
                    batch.down[0, h] = scenario.blue.restore_downtime
                elif command.action == "decoy":
                    batch.decoy[0, h] = True
            elif command.subnet is not None:
                batch.blocked[0, scenario.subnet_index[command.subnet]] = command.action == "block"
            self.commands_applied += 1
        return CommandResult(command_id=command.command_id, action=command.action, ok=True,
                             host=command.host, subnet=command.subnet, compromise=compromise)

    def measure(self) -> Measurement:
        """The simulated world's truth, with the green failures since the last call."""
        with self.lock:
            failures, self._green_failures = self._green_failures, 0
            return replace(self.batch.measurement(0), green_failures=failures)


class SimReferee:
    """The `Referee` of a `SimulatedHosts`: ground truth straight from the simulated state."""

    def __init__(self, hosts: SimulatedHosts) -> None:
        self.hosts = hosts

    def start_episode(self) -> None:
        pass  # the hosts' own reset starts their green count afresh

    def measure(self) -> Measurement:
        return self.hosts.measure()
