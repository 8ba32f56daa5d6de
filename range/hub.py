"""The host-side hub: where sensors' alerts arrive and actuators take blue's commands.

The emulated range's host programs talk to one `HostHub` (owned by the bridge
service): sensors PUSH hellos, heartbeats and alerts to its PULL socket;
actuators are DEALER peers of its ROUTER socket and answer each `Command` with a
`CommandResult`. `SensorLink` and `ActuatorLink` are the client halves that host
programs use. No background threads: the hub does its work inside its calls, and
every receive goes through `poll(timeout)`. Envelopes and payloads: `wire.py`.

Every message either way is signed with the program's own key (`HostKeys`): the
hub hears only programs whose key the run's master secret made, so its peer table
holds real programs only, and a seq is accepted only from its authenticated sender.
A link says `hello` on every new connection, so a restarted bridge hears from all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import zmq
from pydantic import BaseModel
from zmq.utils.monitor import recv_monitor_message

from cyberdial.range.model import AlertKind
from cyberdial.range.wire import (
    HOST_PAYLOADS,
    MAX_FRAME_BYTES,
    MAX_TEXT,
    Alert,
    AlertBatch,
    Bye,
    Command,
    CommandResult,
    DropCounter,
    Dropped,
    Envelope,
    Heartbeat,
    Hello,
    HostKeys,
    ReplayGuard,
    StepDone,
    StepPhase,
    StepTick,
    decode,
    encode,
    initial_seq,
)

logger = logging.getLogger(__name__)

# A peer heartbeats every HEARTBEAT_INTERVAL_S; after LIVENESS silent intervals
# it is dead (the Paranoid Pirate rule). 0.5 s x 3 = 1.5 s: a dead peer shows up
# within two steps of the default 1 s step period.
HEARTBEAT_INTERVAL_S = 0.5
LIVENESS = 3
# Receive queue bounds: a flood of alerts is dropped at the socket, not in our memory.
RCVHWM = 100_000
# libzmq bounds queues per connection, in messages: a host connection may queue this
# many before its sender blocks. A real sensor sends a few per step (1024 alerts per
# batch); a flooding host holds at most this many of its messages in our memory.
HOST_RCVHWM = 10_000
SNDHWM = 10_000
# libzmq closes a connection that sends a bigger frame; frames between
# MAX_FRAME_BYTES and this are read and counted as "oversized" drops.
MAX_MESSAGE_SIZE = 4 * MAX_FRAME_BYTES
# Pending alerts the hub keeps between two `poll_alerts` calls.
MAX_PENDING_ALERTS = 200_000
# Messages handled per socket per pump round, so one busy socket cannot starve the other,
# and the time one pump may spend handling (checked before every message).
PUMP_BATCH = 1024
PUMP_BUDGET_S = 0.02
DRAIN_SLICE = 64
# Authenticated programs the hub tracks; only the run's master secret makes new ones.
MAX_PEERS = 4096
# Results an actuator remembers to answer repeated command ids without re-running them.
RESULT_CACHE = 4096
# How long a link waits for queued messages (a final bye) when it closes.
LINK_LINGER_MS = 200

SENSOR_PAYLOADS: dict[str, type[BaseModel]] = {
    name: HOST_PAYLOADS[name]
    for name in ("hello", "bye", "heartbeat", "alert", "alert_batch", "step_done")
}
ACTUATOR_PAYLOADS: dict[str, type[BaseModel]] = {
    name: HOST_PAYLOADS[name]
    for name in ("hello", "bye", "heartbeat", "command_result", "step_done")
}
CLOCK_PAYLOADS: dict[str, type[BaseModel]] = {"step_tick": HOST_PAYLOADS["step_tick"]}
# Who speaks on which hub socket: programs on the PULL (alerts) socket, actuators on the
# ROUTER. A program keeps the role it said hello with.
PULL_ROLES = frozenset({"sensor", "red", "green"})
# The step clock: who takes part in each phase of a step (see `HostHub.run_phase`).
PHASE_ROLES: dict[str, frozenset[str]] = {
    "act": frozenset({"red", "green"}),
    "close": frozenset({"sensor", "actuator"}),
}
# How long a phase waits for its programs before it names the late ones and goes on.
# Generous: a red exploit on a silently dropping path takes ~3 s; a loaded machine more.
PHASE_DEADLINE_S = {"act": 15.0, "close": 10.0}
# A tick not yet answered is published again this often (a program that (re)connected
# after the first copy, PUB/SUB's slow joiner, still gets it).
TICK_REPEAT_S = 0.1
BRIDGE_TO_ACTUATOR_PAYLOADS: dict[str, type[BaseModel]] = {
    name: HOST_PAYLOADS[name] for name in ("command", "heartbeat")
}
HUB_SENDER = "bridge"

CommandHandler = Callable[[Command], CommandResult]


@dataclass(frozen=True)
class PhaseReport:
    """One phase of the step clock: the programs it waited for and those that were late."""

    phase: str
    tick: int
    waited: tuple[str, ...]
    late: tuple[str, ...]
    seconds: float


@dataclass
class PeerStatus:
    """What the hub knows about one authenticated host program (keyed by its `sender`)."""

    role: str
    subnet: str | None
    hosts: tuple[str, ...]
    last_seen: float
    alive: bool = True
    # Set when a command to this peer timed out; cleared by its next message.
    unresponsive: bool = False
    said_bye: bool = False
    pid: int = 0
    # False for an expected program (see `HostHub`) not heard from since the hub opened.
    heard: bool = True
    # The newest step-clock tick it answered (`StepDone`), -1 for none.
    tick_done: int = -1


def configure_socket(sock: zmq.Socket[Any], *, linger_ms: int = 0) -> None:
    """Bounds every bridge socket shares: queue depth, frame size, no linger on close."""
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)


def clock_topic(name: str) -> bytes:
    """The PUB/SUB topic of one program's ticks (NUL-ended: no name is another's prefix)."""
    return name.encode() + b"\0"


def timeout_result(command: Command, detail: str) -> CommandResult:
    return CommandResult(
        command_id=command.command_id, action=command.action, ok=False, host=command.host,
        subnet=command.subnet, detail=detail[:MAX_TEXT],
    )


class HostHub:
    """Binds the alert (PULL) and command (ROUTER) endpoints of one run; a context manager.

    Endpoints: `ipc:///absolute/path` (works across network namespaces; the
    abstract `ipc://@name` does not) or `tcp://127.0.0.1:PORT` (`:*` picks a free
    port; read `alert_endpoint`/`command_endpoint` after entering).

    `keys` authenticates every program; `expected` names the programs the range
    started (name -> their `Hello`): they are known from the start (a restarted
    bridge reports one that stays silent dead, and routes to an actuator as soon as
    it speaks), and a program's hello must match its entry.

    `clock_endpoint` (a PUB socket) makes the hub the range's step clock: the red,
    green, sensor and actuator programs among `expected` follow its ticks
    (`run_phase`), so a step's moves and every alert they cause belong to that step
    by construction, whatever the pace.
    """

    def __init__(
        self,
        run_id: str,
        alert_endpoint: str,
        command_endpoint: str,
        *,
        keys: HostKeys,
        expected: Mapping[str, Hello] | None = None,
        context: zmq.Context[Any] | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        liveness: int = LIVENESS,
        clock_endpoint: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.alert_endpoint = alert_endpoint
        self.command_endpoint = command_endpoint
        self.clock_endpoint = clock_endpoint
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness = liveness
        self.keys = keys
        self.expected = dict(expected or {})
        if len(self.expected) > MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} host programs per run")
        self.drops = DropCounter()
        self.replay = ReplayGuard()
        self._peer_keys: dict[str, bytes] = {}
        self._own_context = context is None
        self._context = context
        self._pull: zmq.Socket[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._clock: zmq.Socket[Any] | None = None
        # The step clock: the newest tick (only grows, also across hub restarts), the
        # programs that closed the current step (their later alerts are the next step's).
        self.tick = initial_seq()
        self._closed: set[str] = set()
        self._held: deque[Alert] = deque()
        self._poller = zmq.Poller()
        self._peers: dict[str, PeerStatus] = {}
        # Routing: actuator sender -> ROUTER identity; host / subnet name -> actuator sender.
        self._identity: dict[str, bytes] = {}
        self._host_route: dict[str, str] = {}
        self._subnet_route: dict[str, str] = {}
        self._alerts: deque[Alert] = deque()
        self._pending: dict[str, tuple[str, Command]] = {}  # command_id -> (peer, command)
        self._results: dict[str, CommandResult] = {}
        self._seq = initial_seq()
        self.step = 0
        self.alerts_received = 0
        self.commands_sent = 0

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> HostHub:
        self.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._pull is not None

    def open(self) -> None:
        if self._context is None:
            self._context = zmq.Context()
        try:
            self._pull = self._context.socket(zmq.PULL)
            configure_socket(self._pull)
            self._pull.setsockopt(zmq.RCVHWM, HOST_RCVHWM)
            self._pull.bind(self.alert_endpoint)
            self.alert_endpoint = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router = self._context.socket(zmq.ROUTER)
            configure_socket(self._router)
            self._router.setsockopt(zmq.RCVHWM, HOST_RCVHWM)
            # Fail fast on a vanished peer instead of silently dropping its command. No
            # ROUTER_HANDOVER: routes follow authenticated messages, never a chosen identity.
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.bind(self.command_endpoint)
            self.command_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            if self.clock_endpoint is not None:
                self._clock = self._context.socket(zmq.PUB)
                configure_socket(self._clock)
                self._clock.bind(self.clock_endpoint)
                self.clock_endpoint = self._clock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as error:
            self.close()
            raise OSError(
                f"cannot bind the host hub ({error}); is another range using these endpoints,"
                " or is the ipc path's directory missing? Run `cyberdial range down RUN_ID`"
                " for a stale run, or pick other endpoints"
            ) from error
        self._poller.register(self._pull, zmq.POLLIN)
        self._poller.register(self._router, zmq.POLLIN)
        now = time.monotonic()
        for name, hello in self.expected.items():
            self._peers[name] = PeerStatus(role=hello.role, subnet=hello.subnet,
                                           hosts=hello.hosts, last_seen=now, pid=hello.pid,
                                           heard=False)
            if hello.role == "actuator":
                self._set_routes(name, hello)
        logger.info("host hub %s: alerts on %s, commands on %s", self.run_id,
                    self.alert_endpoint, self.command_endpoint)

    def close(self) -> None:
        for sock in (self._pull, self._router, self._clock):
            if sock is not None:
                if sock in self._poller:
                    self._poller.unregister(sock)
                sock.close(linger=0)
        self._pull = self._router = self._clock = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # --------------------------------------------------------------- public

    @property
    def has_clock(self) -> bool:
        """True when this hub is the step clock of its programs (a `clock_endpoint`)."""
        return self.clock_endpoint is not None

    def clock_members(self, phase: StepPhase) -> list[str]:
        """The expected programs that take part in `phase` of every step."""
        roles = PHASE_ROLES[phase]
        return sorted(name for name, hello in self.expected.items() if hello.role in roles)

    def run_phase(self, phase: StepPhase, *, episode: int, step: int,
                  deadline_s: float | None = None) -> PhaseReport:
        """One phase of a step: tick every live program of `phase`, wait for all to answer.

        "act": red and green make their move of `step`; "close": every sensor reports
        what it saw up to now and then says so (`StepDone` after its alerts, on the
        same socket), and actuators count the step off. A program is waited for when it
        is alive or starting (silent less than the liveness span) when the phase starts,
        or speaks during it; one still not done after `deadline_s` is named in the
        report's `late` and the step goes on. Alerts a sensor sends after closing the
        step are held for the next one. Without a clock, returns at once.
        """
        started = time.monotonic()
        self._alerts.extend(self._held)
        self._held.clear()
        self._closed.clear()
        if self._clock is None:
            return PhaseReport(phase, -1, (), (), 0.0)
        self.tick += 1
        tick = StepTick(tick=self.tick, episode=episode, step=step, phase=phase)
        deadline = started + (PHASE_DEADLINE_S[phase] if deadline_s is None else deadline_s)
        members = self.clock_members(phase)
        self.pump(0.0)
        now = time.monotonic()
        waiting = {name for name in members if self._may_answer(self._peers.get(name), now)}
        waited = set(waiting)
        next_send = 0.0
        while True:
            for name in members:
                status = self._peers.get(name)
                if status is None or status.said_bye or status.tick_done >= tick.tick:
                    if name in waiting:
                        logger.debug("step %d %s: %s done after %.2f s", step, phase, name,
                                     time.monotonic() - started)
                    waiting.discard(name)
                elif name not in waited and status.heard and not self._silent(status, now):
                    waiting.add(name)  # it spoke during the phase: a (re)started program
                    waited.add(name)
            now = time.monotonic()
            if not waiting or now >= deadline:
                break
            if now >= next_send:
                for name in sorted(waiting):
                    self._publish_tick(name, tick)
                next_send = now + TICK_REPEAT_S
            self.pump(max(min(next_send, deadline) - now, 0.0))
        late = tuple(sorted(waiting))
        if late:
            logger.warning("step %d %s: %s did not answer within %.1f s", step, phase,
                           ", ".join(late), deadline - started)
        return PhaseReport(phase, tick.tick, tuple(sorted(waited)), late,
                           time.monotonic() - started)

    def _may_answer(self, status: PeerStatus | None, now: float) -> bool:
        return status is not None and not status.said_bye and not self._silent(status, now)

    def _publish_tick(self, name: str, tick: StepTick) -> None:
        clock = self._require(self._clock)
        frames = encode("step_tick", tick, run_id=self.run_id, sender=HUB_SENDER,
                        seq=self._next_seq(), step=max(tick.step, 0), key=self._key_for(name))
        try:
            clock.send_multipart([clock_topic(name), *frames], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # sent again on the next repeat

    def poll_alerts(self, timeout_s: float = 0.0) -> list[Alert]:
        """Every alert received so far, oldest first; waits up to `timeout_s` for the first."""
        self.pump(0.0)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while not self._alerts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.pump(remaining)
        alerts = list(self._alerts)
        self._alerts.clear()
        return alerts

    def execute(self, command: Command, timeout_s: float) -> CommandResult:
        return self.execute_many([command], timeout_s)[0]

    def execute_many(self, commands: Sequence[Command], timeout_s: float) -> list[CommandResult]:
        """Send each command to its actuator and wait, at most `timeout_s` in all, for results.

        Never raises for a host-side failure: an unroutable command, a dead actuator
        or a timeout comes back as `CommandResult(ok=False, detail=...)`.
        """
        router = self._require(self._router)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        self.pump(0.0)
        results: dict[int, CommandResult] = {}
        waiting: dict[str, int] = {}  # command_id -> position
        for position, command in enumerate(commands):
            peer = self.route(command)
            if peer is None:
                target = command.host or command.subnet or "?"
                results[position] = timeout_result(
                    command, f"no actuator serves {target}: start the range's actuators"
                    " (its hello must list this host or subnet)")
                continue
            status = self._peers[peer]
            if peer not in self._identity:
                results[position] = timeout_result(
                    command, f"actuator {peer} has not connected to this bridge yet; wait a"
                    " heartbeat, or restart it")
                continue
            if not self._is_alive(status, time.monotonic()):
                results[position] = timeout_result(
                    command, f"actuator {peer} is not alive (last seen"
                    f" {time.monotonic() - status.last_seen:.1f} s ago); restart it")
                continue
            if command.command_id in self._pending or command.command_id in waiting:
                results[position] = timeout_result(
                    command, f"command id {command.command_id} is already in flight")
                continue
            frames = encode("command", command, run_id=self.run_id, sender=HUB_SENDER,
                            seq=self._next_seq(), step=self.step, key=self._key_for(peer))
            try:
                router.send_multipart([self._identity[peer], *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError as error:
                # EHOSTUNREACH (peer gone) or EAGAIN (its queue is full).
                status.unresponsive = True
                results[position] = timeout_result(
                    command, f"cannot reach actuator {peer} ({error.strerror}); restart it")
                continue
            self.commands_sent += 1
            self._pending[command.command_id] = (peer, command)
            waiting[command.command_id] = position
        while waiting:
            for command_id in [c for c in waiting if c in self._results]:
                results[waiting.pop(command_id)] = self._results.pop(command_id)
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                break
            self.pump(remaining)
        for command_id, position in waiting.items():
            peer, command = self._pending.pop(command_id)
            self._peers[peer].unresponsive = True
            logger.warning("command %s to %s timed out after %.3f s", command_id, peer, timeout_s)
            results[position] = timeout_result(
                command, f"timeout after {timeout_s:.3f} s waiting for actuator {peer};"
                " it is marked unresponsive until it speaks again")
        return [results[position] for position in range(len(commands))]

    def route(self, command: Command) -> str | None:
        """The actuator serving the command's host (or, for subnet actions, its subnet)."""
        if command.host is not None:
            return self._host_route.get(command.host)
        if command.subnet is not None:
            return self._subnet_route.get(command.subnet)
        return None

    def peers(self, pump: bool = True) -> dict[str, PeerStatus]:
        """Every program the hub knows, with `alive` up to date. `pump=False` touches no
        socket: for another thread than the one serving the hub (ZeroMQ sockets are not
        thread-safe), which then sees what the serving thread last handled."""
        if pump:
            self.pump(0.0)
        now = time.monotonic()
        for status in self._peers.values():
            status.alive = self._is_alive(status, now)
        return dict(self._peers)

    def dead_peers(self) -> list[str]:
        """Sensors and actuators (authenticated or expected) that are not alive; an
        expected one not heard yet only once the liveness span since the hub opened passed."""
        now = time.monotonic()
        return sorted(name for name, status in self.peers().items() if not status.alive
                      and (status.heard or self._silent(status, now)))

    def pump(self, timeout_s: float = 0.0) -> int:
        """Handle whatever has arrived, waiting up to `timeout_s` for something; returns count.

        Bounded in count and time (PUMP_BUDGET_S after the wait): an alert flood
        cannot hold the caller. The two sockets take turns in slices of DRAIN_SLICE,
        actuators' first (a step waits on them), so a flood on one cannot starve the
        other; within a socket libzmq queues fairly between connections.
        """
        pull, router = self._require(self._pull), self._require(self._router)
        events = dict(self._poller.poll(max(int(timeout_s * 1000), 0)))
        budget_end = time.monotonic() + PUMP_BUDGET_S
        handled = 0
        for _ in range(64 * PUMP_BATCH // DRAIN_SLICE):
            progressed = 0
            if events.get(router):
                progressed += self._drain(router, routed=True, budget_end=budget_end)
            if events.get(pull):
                progressed += self._drain(pull, routed=False, budget_end=budget_end)
            handled += progressed
            if not progressed or time.monotonic() >= budget_end:
                break
            events = dict(self._poller.poll(0))
        return handled

    # ------------------------------------------------------------- internals

    def _require(self, sock: zmq.Socket[Any] | None) -> zmq.Socket[Any]:
        if sock is None:
            raise RuntimeError("the host hub is not open: use it as a context manager")
        return sock

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _silent(self, status: PeerStatus, now: float) -> bool:
        return now - status.last_seen > self.heartbeat_interval_s * self.liveness

    def _is_alive(self, status: PeerStatus, now: float) -> bool:
        return status.heard and not (self._silent(status, now) or status.unresponsive
                                     or status.said_bye)

    def _drain(self, sock: zmq.Socket[Any], *, routed: bool, budget_end: float) -> int:
        count = 0
        while count < DRAIN_SLICE and time.monotonic() < budget_end:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            count += 1
            if routed:
                self._handle_routed(frames)
            else:
                self._handle(frames, identity=None)
        return count

    def _handle_routed(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.drops.drop(Dropped("malformed", "no identity frame"), logger)
            return
        self._handle(frames[1:], identity=frames[0])

    def _key_for(self, sender: str) -> bytes | None:
        if sender == HUB_SENDER:
            return None  # nobody speaks as the hub
        key = self._peer_keys.get(sender)
        return key if key is not None else self.keys.key(sender)

    def _handle(self, frames: list[bytes], identity: bytes | None) -> None:
        payloads = ACTUATOR_PAYLOADS if identity is not None else SENSOR_PAYLOADS
        # Signature first: nothing below (tables, seq, routes) sees an unauthenticated sender.
        result = decode(frames, payloads, run_id=self.run_id, keys=self._key_for)
        if isinstance(result, Dropped):
            self.drops.drop(result, logger)
            return
        sender, payload = result.header.sender, result.payload
        roles = frozenset({"actuator"}) if identity is not None else PULL_ROLES
        socket_name = "actuator" if identity is not None else "alert"
        status = self._peers.get(sender)
        if status is None and len(self._peers) >= MAX_PEERS:
            self.drops.drop(Dropped("overflow", f"over {MAX_PEERS} peers; {sender} ignored"),
                            logger)
            return
        # A program keeps the role it was started as: a sensor's key cannot command routes.
        default = "actuator" if identity is not None else "sensor"
        claimed = payload.role if isinstance(payload, Hello) else (
            status.role if status is not None else default)
        if claimed not in roles or (status is not None and status.role != claimed):
            self.drops.drop(Dropped("spoofed", f"{sender} as {claimed} on the {socket_name}"
                                    " socket"), logger)
            return
        if isinstance(payload, Hello) and sender in self.expected:
            known = self.expected[sender]
            if (payload.role, payload.subnet, tuple(payload.hosts)) != (
                    known.role, known.subnet, tuple(known.hosts)):
                self.drops.drop(Dropped("spoofed", f"{sender} claims other hosts"), logger)
                return
        if not self.replay.accept(result.header):
            self.drops.drop(Dropped("replayed", f"{sender} seq {result.header.seq}"), logger)
            return
        if sender not in self._peer_keys:
            key = self._key_for(sender)
            assert key is not None  # decode verified the message with it
            self._peer_keys[sender] = key
        self._accept(result, identity)

    def _accept(self, envelope: Envelope, identity: bytes | None) -> None:
        sender, payload, now = envelope.header.sender, envelope.payload, time.monotonic()
        status = self._peers.get(sender)
        if identity is not None and self._identity.get(sender) != identity:
            # Authenticated and fresh: the actuator (re)connected, e.g. after a restart.
            self._identity[sender] = identity
        if isinstance(payload, Hello):
            done = status.tick_done if status is not None else -1
            status = PeerStatus(role=payload.role, subnet=payload.subnet, hosts=payload.hosts,
                                last_seen=now, pid=payload.pid, tick_done=done)
            self._peers[sender] = status
            if identity is not None:
                self._set_routes(sender, payload)
            logger.info("%s %s says hello (%d hosts)", payload.role, sender, len(payload.hosts))
            return
        if status is None:
            # A program that talked before the hub (re)started: its hello follows.
            status = PeerStatus(role="actuator" if identity is not None else "sensor",
                                subnet=None, hosts=(), last_seen=now)
            self._peers[sender] = status
        status.heard = True
        status.last_seen = now
        status.unresponsive = False
        status.said_bye = False
        if isinstance(payload, Heartbeat):
            if identity is not None:
                self._send_heartbeat(sender, identity)
        elif isinstance(payload, Alert):
            self._keep_alerts((payload,), sender)
        elif isinstance(payload, AlertBatch):
            self._keep_alerts(payload.alerts, sender)
        elif isinstance(payload, StepDone):
            # Only the current tick closes anything: a future one is a forgery or a bug.
            if payload.tick <= self.tick and payload.tick > status.tick_done:
                status.tick_done = payload.tick
                self._closed.add(sender)
        elif isinstance(payload, CommandResult):
            pending = self._pending.get(payload.command_id)
            if pending is None or pending[0] != sender:
                # A late answer to a command we gave up on: its step is over.
                self.drops.drop(Dropped("stale_step", f"result {payload.command_id}"), logger)
                return
            del self._pending[payload.command_id]
            self._results[payload.command_id] = payload
        elif isinstance(payload, Bye):
            status.said_bye = True
            logger.info("%s %s says bye: %s", status.role, sender, payload.reason)

    def _keep_alerts(self, alerts: Iterable[Alert], sender: str) -> None:
        # A sensor that closed this step already speaks of the next one.
        queue = self._held if sender in self._closed else self._alerts
        for alert in alerts:
            if len(self._alerts) + len(self._held) >= MAX_PENDING_ALERTS:
                self.drops.drop(Dropped("overflow", "alert queue full; call poll_alerts"), logger)
                continue
            queue.append(alert)
            self.alerts_received += 1

    def _set_routes(self, sender: str, hello: Hello) -> None:
        for table in (self._host_route, self._subnet_route):
            for name in [n for n, peer in table.items() if peer == sender]:
                del table[name]
        for host in hello.hosts:
            self._host_route[host] = sender
        if hello.subnet is not None:
            self._subnet_route[hello.subnet] = sender

    def _send_heartbeat(self, sender: str, identity: bytes) -> None:
        frames = encode("heartbeat", Heartbeat(), run_id=self.run_id, sender=HUB_SENDER,
                        seq=self._next_seq(), step=self.step, key=self._key_for(sender))
        try:
            self._require(self._router).send_multipart([identity, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer went away between its heartbeat and our answer


# ------------------------------------------------------------------ clients


class _Link:
    """Shared parts of the host programs' sockets: signing, numbering, heartbeats, greeting.

    `key` is this program's own key (`HostKeys.key(sender)`), handed to it at start.
    A socket monitor tells the link of every new connection to the hub; it says
    `hello` on each, so a bridge that (re)started learns who is there.
    """

    def __init__(
        self, sock_type: int, endpoint: str, run_id: str, sender: str, key: bytes,
        context: zmq.Context[Any] | None, heartbeat_interval_s: float,
    ) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.sender = sender
        self.key = key
        self.heartbeat_interval_s = heartbeat_interval_s
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self.socket: zmq.Socket[Any] = self._context.socket(sock_type)
        configure_socket(self.socket, linger_ms=LINK_LINGER_MS)
        self._monitor: zmq.Socket[Any] | None = self.socket.get_monitor_socket(
            zmq.EVENT_CONNECTED)
        self._seq = initial_seq()
        self._started = time.monotonic()
        self._last_heartbeat = 0.0
        self.send_failures = 0
        self.connections = 0
        self.drops = DropCounter()

    def hello(self) -> bool:
        raise NotImplementedError

    def greet_new_connections(self) -> int:
        """Say hello once per connection made since the last call; returns how many."""
        fresh = 0
        monitor = self._monitor
        while monitor is not None and monitor.poll(0, zmq.POLLIN):
            try:
                event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                break
            if event.get("event") == zmq.EVENT_CONNECTED:
                fresh += 1
        if fresh:
            self.connections += fresh
            self.hello()
        return fresh

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def send(self, message_type: str, payload: BaseModel, step: int = 0) -> bool:
        """Queue one message; False when the queue to the hub is full (the hub is gone)."""
        self._seq += 1
        frames = encode(message_type, payload, run_id=self.run_id, sender=self.sender,
                        seq=self._seq, step=step, key=self.key)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1
            return False
        return True

    def heartbeat(self) -> bool:
        self._last_heartbeat = time.monotonic()
        return self.send("heartbeat", Heartbeat(uptime=self._last_heartbeat - self._started))

    def maybe_heartbeat(self) -> bool:
        """Greet a new connection; send a heartbeat if an interval has passed since the last."""
        self.greet_new_connections()
        if time.monotonic() - self._last_heartbeat >= self.heartbeat_interval_s:
            return self.heartbeat()
        return False

    def close(self, reason: str = "closing", *, say_bye: bool = True) -> None:
        """Say bye (unless the program is dying, `say_bye=False`) and close the socket."""
        if self.socket.closed:
            return
        self._close_monitor()
        if say_bye:
            self.send("bye", Bye(reason=reason[:MAX_TEXT]))
            self.socket.close()
        else:
            self.socket.close(linger=0)
        if self._own_context:
            self._context.term()


class SensorLink(_Link):
    """A sensor's PUSH connection to the hub: hello, heartbeats and alerts, numbered.

    Red and green use it too (`role="red"`/`"green"`): their only messages are
    hellos, heartbeats and `StepDone`s.
    """

    def __init__(
        self, endpoint: str, run_id: str, sender: str, *, key: bytes, hosts: Sequence[str] = (),
        subnet: str | None = None, context: zmq.Context[Any] | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        role: Literal["sensor", "red", "green"] = "sensor",
    ) -> None:
        super().__init__(zmq.PUSH, endpoint, run_id, sender, key, context, heartbeat_interval_s)
        self.hosts = tuple(hosts)
        self.subnet = subnet
        self.role = role
        self.socket.connect(endpoint)

    def __enter__(self) -> SensorLink:
        self.hello()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def hello(self) -> bool:
        sent = self.send("hello", Hello(role=self.role, subnet=self.subnet, hosts=self.hosts,
                                        pid=os.getpid()))
        self._last_heartbeat = time.monotonic()
        return sent

    def alert(
        self, host: str, kind: AlertKind, *, evidence: str = "", source: str | None = None,
        observed_at: float | None = None,
    ) -> bool:
        return self.send("alert", Alert(
            host=host, kind=kind, observed_at=time.time() if observed_at is None else observed_at,
            evidence=evidence[:MAX_TEXT], source=source,
        ))

    def alerts(self, alerts: Sequence[Alert]) -> bool:
        """Many alerts in one message (a sensor watching many hosts); split to the cap."""
        ok = True
        for start in range(0, len(alerts), AlertBatch.MAX_ALERTS):
            chunk = tuple(alerts[start : start + AlertBatch.MAX_ALERTS])
            ok &= self.send("alert_batch", AlertBatch(alerts=chunk))
        return ok


class ActuatorLink(_Link):
    """An actuator's DEALER connection: answers each command through `handler`, once.

    A repeated `command_id` is not run again: the cached result is sent back.
    A handler that raises yields `ok=False` with the error; it never kills the loop.
    """

    def __init__(
        self, endpoint: str, run_id: str, sender: str, hosts: Sequence[str], subnet: str | None,
        handler: CommandHandler, *, key: bytes, context: zmq.Context[Any] | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S, liveness: int = LIVENESS,
    ) -> None:
        super().__init__(zmq.DEALER, endpoint, run_id, sender, key, context,
                         heartbeat_interval_s)
        self.hosts = tuple(hosts)
        self.subnet = subnet
        self.handler = handler
        self.liveness = liveness
        # No chosen identity: the hub routes by the connection its signed messages come on.
        self.socket.connect(endpoint)
        self._results: OrderedDict[str, CommandResult] = OrderedDict()
        self._hub_replay = ReplayGuard()
        self._last_heard = time.monotonic()
        self._hello_sent = False
        self.executed = 0

    def __enter__(self) -> ActuatorLink:
        self.hello()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def bridge_alive(self) -> bool:
        return time.monotonic() - self._last_heard <= self.heartbeat_interval_s * self.liveness

    def hello(self) -> bool:
        self._hello_sent = True
        self._last_heard = time.monotonic()
        sent = self.send("hello", Hello(role="actuator", subnet=self.subnet, hosts=self.hosts,
                                        pid=os.getpid()))
        self._last_heartbeat = time.monotonic()
        return sent

    def serve(
        self, stop: threading.Event | None = None, deadline: float | None = None,
        max_commands: int | None = None,
    ) -> int:
        """Serve until `stop` is set, `deadline` (time.monotonic()) passes or
        `max_commands` were run; returns how many commands ran. Needs a bound."""
        if stop is None and deadline is None and max_commands is None:
            raise ValueError("serve() needs a stop event, a deadline or max_commands")
        if not self._hello_sent:
            self.hello()
        ran = 0
        while stop is None or not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if max_commands is not None and ran >= max_commands:
                break
            wait = self.heartbeat_interval_s - (now - self._last_heartbeat)
            if deadline is not None:
                wait = min(wait, deadline - now)
            # Short waits keep a stop event responsive without a wake-up socket.
            ran += self.serve_once(min(max(wait, 0.0), 0.05))
        return ran

    def serve_once(self, timeout_s: float) -> int:
        """One round: heartbeat if due, wait up to `timeout_s`, answer what came in."""
        if not self.bridge_alive:
            # The hub may have restarted and forgotten us: introduce ourselves again.
            self.hello()
        self.maybe_heartbeat()  # also greets a new connection (a restarted bridge)
        ran = 0
        if not self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return 0
        for _ in range(PUMP_BATCH):
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            ran += self._handle(frames)
        return ran

    def _bridge_key(self, sender: str) -> bytes | None:
        return self.key if sender == HUB_SENDER else None

    def _handle(self, frames: list[bytes]) -> int:
        # Only the bridge, which holds the master secret, can sign with our key.
        result = decode(frames, BRIDGE_TO_ACTUATOR_PAYLOADS, run_id=self.run_id,
                        keys=self._bridge_key)
        if isinstance(result, Dropped):
            self.drops.drop(result, logger)
            return 0
        if not self._hub_replay.accept(result.header):
            self.drops.drop(Dropped("replayed", f"seq {result.header.seq}"), logger)
            return 0
        self._last_heard = time.monotonic()
        if not isinstance(result.payload, Command):
            return 0
        command = result.payload
        cached = self._results.get(command.command_id)
        if cached is not None:
            self.send("command_result", cached, step=result.header.step)
            return 0
        answer = self._run(command)
        self._results[command.command_id] = answer
        if len(self._results) > RESULT_CACHE:
            self._results.popitem(last=False)
        self.send("command_result", answer, step=result.header.step)
        return 1

    def _run(self, command: Command) -> CommandResult:
        started = time.perf_counter()
        try:
            answer = self.handler(command)
        except Exception as error:  # a broken handler must not stop the actuator
            logger.exception("handler failed on %s", command.command_id)
            answer = timeout_result(command, f"handler error: {type(error).__name__}: {error}")
        self.executed += 1
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        # The hub matches on command_id; never let a handler answer for another command.
        return answer.model_copy(update={
            "command_id": command.command_id, "action": command.action,
            "duration_ms": answer.duration_ms or elapsed_ms,
        })


class StepFollower:
    """A program's side of the step clock: a SUB socket that hears only its own ticks.

    Ticks are signed with the program's own key by the hub; anything else is dropped.
    `poll` returns the newest tick heard (the hub repeats a tick until it is answered,
    so copies are normal): the program does a tick once (`tick > done`), answers
    `StepDone(tick)` on its link, and answers a repeated tick again without redoing it.
    """

    def __init__(self, endpoint: str, run_id: str, name: str, *, key: bytes,
                 context: zmq.Context[Any] | None = None) -> None:
        self.run_id = run_id
        self.name = name
        self.key = key
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self.socket: zmq.Socket[Any] = self._context.socket(zmq.SUB)
        configure_socket(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, clock_topic(name))
        self.socket.connect(endpoint)
        self._replay = ReplayGuard()
        self.drops = DropCounter()

    def __enter__(self) -> StepFollower:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def _keys(self, sender: str) -> bytes | None:
        return self.key if sender == HUB_SENDER else None

    def poll(self, timeout_s: float) -> StepTick | None:
        """Wait up to `timeout_s` for a tick; the newest of those queued, or None."""
        newest: StepTick | None = None
        if not self.socket.poll(max(int(timeout_s * 1000), 0), zmq.POLLIN):
            return None
        for _ in range(PUMP_BATCH):
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            result = decode(frames[1:], CLOCK_PAYLOADS, run_id=self.run_id, keys=self._keys)
            if isinstance(result, Dropped):
                self.drops.drop(result, logger)
                continue
            if not self._replay.accept(result.header):
                self.drops.drop(Dropped("replayed", f"seq {result.header.seq}"), logger)
                continue
            tick = result.payload
            assert isinstance(tick, StepTick)
            if newest is None or tick.tick > newest.tick:
                newest = tick
        return newest
