"""The bridge service: real alerts become the simulator's observations, actions become commands.

It owns the agent endpoint (ROUTER; clients are DEALERs such as `EmulatedRange`)
and drives a `HostHub` (sensors and actuators), a `Referee` (ground truth) and the
range's `EpisodeReset` (each episode's step 0).
Each step it runs the game model's rules that the simulator runs — same
observation bits and layout, same SAU masks, same action durations, same reward
formula — on what the real hosts report. Nothing an agent sends reaches a host
except as a `Command` built here from the agent's own closed action catalogue.

Agent sessions: every client that says hello gets a secret session token; the
client that resets drives the episode (others are answered `busy`), and only
the token moves a client's name to a new connection (a reconnecting client).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zmq
import zmq.auth
from numpy.typing import NDArray
from pydantic import BaseModel
from zmq.auth.thread import ThreadAuthenticator

from cyberdial.bridge.protocol import (
    AGENT_REQUESTS,
    ActionBatch,
    AgentHello,
    AgentInfo,
    AgentObservation,
    AgentSpec,
    Alert,
    Bye,
    Command,
    CommandResult,
    DropCounter,
    Dropped,
    ErrorReply,
    Heartbeat,
    ObservationBatch,
    ReplayGuard,
    ResetRequest,
    Welcome,
    decode,
    encode,
)
from cyberdial.range.blue import (
    advance_timers,
    global_state,
    learn_alerts,
    learn_analysed,
    learn_blocked,
    learn_restored,
)
from cyberdial.range.errors import CyberdialError
from cyberdial.range.hub import PHASE_DEADLINE_S, PUMP_BATCH, HostHub, configure_socket
from cyberdial.range.model import ALERT_ACTIVITY, ActionKind, Activity, BlueAction, GameModel
from cyberdial.range.scenario import Scenario
from cyberdial.range.truth import (
    EpisodeReset,
    Measurement,
    Referee,
    ResetUnsupported,
    decode_finding,
)
from cyberdial.range.wire import initial_seq

logger = logging.getLogger(__name__)

BRIDGE_SENDER = "bridge"
# Share of the step period that commands may take before they count as timed out;
# the rest of the window is for the alerts their effects (and red) cause.
COMMAND_SHARE = 0.5
# With a step clock a step lasts what the hosts take: commands get this long.
CLOCK_COMMAND_TIMEOUT_S = 5.0
# Agent clients remembered at once; one drives a bridge, a few may watch or retry.
MAX_CLIENTS = 64
# A driving client silent this long (seconds) no longer holds the episode: another may
# reset. Well above the longest step (`2 x step_period + 5 s` is what clients wait).
DRIVER_IDLE_S = 120.0
# A client name held by a connection silent this long may be taken by a new one.
CLIENT_IDLE_S = 120.0
# The bridge's one environment, as an index array for the batch-shaped `range.blue` rules.
_FIRST = np.zeros(1, dtype=np.int64)


@dataclass(frozen=True)
class CurveKeys:
    """A CurveZMQ key pair (Z85 text as bytes), for agent connections off loopback."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, path: str | Path) -> CurveKeys:
        """Read a `.key_secret` file as written by `zmq.auth.create_certificates`."""
        public, secret = zmq.auth.load_certificate(str(path))
        if secret is None:
            raise ValueError(f"{path} holds no secret key: pass the .key_secret file")
        return cls(public, secret)


class _AllowedClients:
    """ZAP callback: admits only the listed client public keys."""

    def __init__(self, keys: Collection[bytes]) -> None:
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


@dataclass
class AgentSession:
    """One agent client: its connection, its secret token, when it last spoke."""

    identity: bytes
    token: str
    last_seen: float


@dataclass(frozen=True)
class StepLog:
    """Everything one step did on the host side, for recordings (never sent to agents)."""

    episode: int
    step: int
    alerts: tuple[Alert, ...]
    commands: tuple[tuple[str, BlueAction, CommandResult], ...]  # (agent, action, result)
    measurement: Measurement
    terms: dict[str, float]


class BridgeService:
    """Serves one scenario's agents from a running range; a context manager.

    `step_log`, if set, is called in the serving thread with a `StepLog` after
    every step and before its reply is sent (drills record ground truth with it).

    With a hub that keeps the step clock (`HostHub.has_clock`, the emulated range's),
    a step is lockstep: blue's commands, then red's and green's moves (the "act"
    phase), then every sensor closes the step ("close"); the observation holds
    exactly the alerts of that step, whatever the pace. `step_period_s` (default the
    scenario's) is then the least a step lasts, the pace of a watched drill; 0 steps as
    fast as the hosts allow (validation, evaluation). Commands get `command_timeout_s`
    (default the larger of half a period and 5 s).

    Without a clock (simulator-backed hosts), a step is a window of `step_period_s`
    from the actions' arrival; 0 means "do not wait": each step uses whatever alerts
    arrived (benchmarks and fast tests). Commands get `command_timeout_s` (default
    half a step period, at least 50 ms).
    """

    def __init__(
        self,
        scenario: Scenario,
        hub: HostHub,
        referee: Referee,
        agent_endpoint: str,
        *,
        range_reset: EpisodeReset,
        step_period_s: float | None = None,
        command_timeout_s: float | None = None,
        curve: CurveKeys | None = None,
        allowed_clients: Collection[bytes] | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.scenario = scenario
        self.model = GameModel(scenario)
        self.hub = hub
        self.referee = referee
        self.range_reset = range_reset
        self.range_resets = 0  # episodes that started with the range really reset
        self.run_id = hub.run_id
        self.agent_endpoint = agent_endpoint
        self.step_period_s = scenario.step_period if step_period_s is None else step_period_s
        floor = CLOCK_COMMAND_TIMEOUT_S if hub.has_clock else 0.05
        self.command_timeout_s = (
            max(COMMAND_SHARE * self.step_period_s, floor) if command_timeout_s is None
            else command_timeout_s
        )
        self.curve = curve
        self.allowed_clients = allowed_clients
        self._own_context = context is None
        self._context = context
        self._socket: zmq.Socket[Any] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._opened_hub = False
        self.drops = DropCounter()
        self.replay = ReplayGuard()
        self._clients: dict[str, AgentSession] = {}  # sender -> its session
        self.driver: str | None = None  # the client whose episode this is
        self._seq = initial_seq()
        self._nonce = secrets.token_hex(3)  # command ids stay unique across bridge restarts
        self._host_agent = np.full(self.model.n_hosts, -1, dtype=np.int64)
        for layout in self.model.agents:
            self._host_agent[list(layout.hosts)] = layout.index
        self.episode = 0
        self.step = 0
        self.steps_served = 0
        self.step_seconds: deque[float] = deque(maxlen=100_000)
        self._started = False
        self._last_reply: tuple[int, list[bytes]] | None = None
        self._last_commands: list[tuple[str, BlueAction, CommandResult]] = []
        self.step_log: Callable[[StepLog], None] | None = None
        self._said_no_reset = False
        self._reset_state()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> BridgeService:
        self.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        if self._context is None:
            self._context = zmq.Context()
        if not self.hub.is_open:
            self.hub.open()
            self._opened_hub = True
        sock = self._context.socket(zmq.ROUTER)
        configure_socket(sock)
        if self.curve is not None:
            if self.allowed_clients is not None:
                # ZAP runs in pyzmq's own authenticator thread; we only give it the keys.
                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                self._auth.configure_curve_callback(
                    "*", credentials_provider=_AllowedClients(self.allowed_clients))
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        try:
            sock.bind(self.agent_endpoint)
        except zmq.ZMQError as error:
            sock.close(linger=0)
            self.close()
            raise OSError(f"cannot bind the agent endpoint {self.agent_endpoint} ({error});"
                          " pick another with --agent-endpoint") from error
        self._socket = sock
        self.agent_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("bridge for %s serving agents on %s", self.run_id, self.agent_endpoint)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._opened_hub:
            self.hub.close()
            self._opened_hub = False
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    # ------------------------------------------------------------- serving

    def serve(
        self, stop: threading.Event | None = None, deadline: float | None = None,
        max_steps: int | None = None,
    ) -> int:
        """Serve agents until `stop` is set, `deadline` (monotonic) passes or `max_steps`."""
        if stop is None and deadline is None and max_steps is None:
            raise ValueError("serve() needs a stop event, a deadline or max_steps")
        served = self.steps_served
        while stop is None or not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if max_steps is not None and self.steps_served - served >= max_steps:
                break
            self.serve_once(0.05)
        return self.steps_served - served

    def serve_once(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for agent requests and answer them; keep the hub fresh."""
        sock = self._require()
        self.hub.pump(0.0)
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return 0
        handled = 0
        for _ in range(PUMP_BATCH):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            self._handle(frames)
        return handled

    def _require(self) -> zmq.Socket[Any]:
        if self._socket is None:
            raise RuntimeError("the bridge service is not open: use it as a context manager")
        return self._socket

    def _reply(self, identity: bytes, message_type: str, payload: BaseModel) -> list[bytes]:
        self._seq += 1
        frames = encode(message_type, payload, run_id=self.run_id, sender=BRIDGE_SENDER,
                        seq=self._seq, step=self.step)
        self._send(identity, frames)
        return frames

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._require().send_multipart([identity, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as error:
            logger.warning("could not answer an agent client (%s)", error.strerror)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.drops.drop(Dropped("malformed", "no identity frame"), logger)
            return
        identity, body = frames[0], frames[1:]
        result = decode(body, AGENT_REQUESTS, run_id=self.run_id)
        if isinstance(result, Dropped):
            self.drops.drop(result, logger)
            return
        sender, payload = result.header.sender, result.payload
        session = self._clients.get(sender)
        now = time.monotonic()
        if isinstance(payload, AgentHello):
            if session is not None and session.identity != identity and not self._may_take(
                    session, payload, now):
                self._reply(identity, "error", ErrorReply(
                    code="name_taken", message=f"client name {sender} is in use by another"
                    " connection: pick another name (EmulatedRange(client=...))"))
                return
            if session is None or session.identity != identity:
                self.replay.forget(sender)  # a new connection numbers afresh
        elif session is None:
            # Answered, but not remembered: only clients that said hello cost us memory.
            self._reply(identity, "error", ErrorReply(
                code="not_ready", message="send agent_hello first (see docs/protocol.md)"))
            return
        elif session.identity != identity:
            self.drops.drop(Dropped("spoofed", f"{sender} from another connection"), logger)
            return
        if not self.replay.accept(result.header):
            self.drops.drop(Dropped("replayed", f"{sender} seq {result.header.seq}"), logger)
            return
        if session is not None:
            session.last_seen = now
        if isinstance(payload, AgentHello):
            self._on_hello(identity, sender, payload)
        elif isinstance(payload, Heartbeat):
            self._reply(identity, "heartbeat", Heartbeat())
        elif isinstance(payload, Bye):
            del self._clients[sender]
            self.replay.forget(sender)
            if self.driver == sender:
                self.driver = None
        elif not self._may_drive(sender, now):
            self._reply(identity, "error", ErrorReply(
                code="busy", message=f"client {self.driver} drives this bridge's episode:"
                " wait until it says bye (or is silent for"
                f" {DRIVER_IDLE_S:.0f} s), or start another range"))
        elif isinstance(payload, ResetRequest):
            self.driver = sender
            try:
                reply = self.reset(payload.seed)
            except CyberdialError as error:
                self._started = False
                self._reply(identity, "error", ErrorReply(
                    code="reset_failed", message=f"the range could not be reset: {error}"[:512]))
                return
            self._last_reply = (self.step, self._reply(identity, "observations", reply))
        elif isinstance(payload, ActionBatch):
            self._on_actions(identity, payload)

    def _may_take(self, session: AgentSession, hello: AgentHello, now: float) -> bool:
        """May a hello on a new connection take over this client name?"""
        if hello.session is not None and hmac.compare_digest(hello.session, session.token):
            return True  # the same client, reconnected
        return now - session.last_seen > CLIENT_IDLE_S

    def _may_drive(self, sender: str, now: float) -> bool:
        """Reset and actions: only the driving client's, or anyone's when nobody drives."""
        if self.driver is None or self.driver == sender:
            return True
        driver = self._clients.get(self.driver)
        return driver is None or now - driver.last_seen > DRIVER_IDLE_S

    def _on_hello(self, identity: bytes, sender: str, hello: AgentHello) -> None:
        scenario = self.scenario
        if hello.scenario_hash is not None and hello.scenario_hash != scenario.scenario_hash:
            self._reply(identity, "error", ErrorReply(
                code="scenario_mismatch",
                message=f"this bridge serves {scenario.name} ({scenario.scenario_hash}), not"
                f" {hello.scenario_hash}: load the scenario the range was started with"))
            self.replay.forget(sender)
            return
        session = self._clients.get(sender)
        if session is not None and (session.identity == identity or (
                hello.session is not None and hmac.compare_digest(hello.session,
                                                                  session.token))):
            session.identity = identity  # same client (again, or reconnected): same session
        else:
            if session is not None and self.driver == sender:
                self.driver = None  # a stale name taken over does not take the episode
            session = AgentSession(identity, secrets.token_hex(16), time.monotonic())
            self._clients.pop(sender, None)
            self._clients[sender] = session
        while len(self._clients) > MAX_CLIENTS:  # forget the longest-known idle client
            oldest = next(name for name in self._clients if name != self.driver)
            del self._clients[oldest]
            self.replay.forget(oldest)
        self._reply(identity, "welcome", self.welcome(session.token))

    def welcome(self, session: str = "0") -> Welcome:
        m = self.model
        return Welcome(
            scenario=self.scenario.name, scenario_hash=self.scenario.scenario_hash,
            agents=tuple(AgentSpec(name=a.name, obs_size=a.obs_size, n_actions=a.n_actions,
                                   actions=tuple(x.label for x in a.actions)) for a in m.agents),
            message_bits=m.message_bits, episode_length=self.scenario.episode_length,
            step_period_s=self.step_period_s, step_deadline_s=self.step_deadline_s,
            heartbeat_interval_s=self.hub.heartbeat_interval_s,
            liveness=self.hub.liveness, state_size=m.state_size, session=session,
        )

    def _on_actions(self, identity: bytes, batch: ActionBatch) -> None:
        if not self._started:
            self._reply(identity, "error", ErrorReply(
                code="not_ready", message="no episode: send reset first"))
        elif batch.step == self.step - 1 and self._last_reply and self._last_reply[0] == self.step:
            # The client retried a step whose answer it missed: answer again, do not re-run it.
            self._send(identity, self._last_reply[1])
        elif batch.step != self.step:
            self.drops.drop(Dropped("stale_step", f"actions for {batch.step}, at {self.step}"),
                            logger)
        elif self.step >= self.scenario.episode_length:
            self._reply(identity, "error", ErrorReply(
                code="episode_over", message="the episode is over: send reset"))
        else:
            started = time.perf_counter()
            reply = self.play(batch)
            self._last_reply = (self.step, self._reply(identity, "observations", reply))
            # Time to serve a step beyond its window: what benchmarks call the bridge overhead.
            self.step_seconds.append(time.perf_counter() - started - self.step_period_s)

    @property
    def step_deadline_s(self) -> float:
        """How much longer than `step_period_s` a step may take (late programs, slow commands)."""
        if not self.hub.has_clock:
            return 0.0
        return self.command_timeout_s + sum(PHASE_DEADLINE_S.values())

    # --------------------------------------------------------- the game

    def _reset_state(self) -> None:
        m = self.model
        self.activity = np.zeros((1, m.n_hosts), dtype=np.int8)
        self.observed = np.zeros((1, m.n_hosts), dtype=np.int8)
        self.blocked = np.zeros((1, m.n_subnets), dtype=bool)
        self.messages = np.zeros((1, m.n_agents, m.message_bits), dtype=np.uint8)
        self.last_action = np.zeros((1, m.n_agents), dtype=np.int64)
        self.pending = np.zeros(m.n_agents, dtype=np.int64)
        self.timer = np.zeros(m.n_agents, dtype=np.int64)
        self.mask = m.action_masks(self.activity, self.observed, self.messages,
                                   (self.timer > 0)[None, :])
        self.measurement = Measurement.clean(m)
        self._episode_wall_start = time.time()

    def reset(self, seed: int | None = None) -> ObservationBatch:
        """Start an episode: the range back at step 0 (`range_reset`; one that declines is
        said once in the log, and the episode starts from the hosts' current state), the
        referee's count afresh, old alerts forgotten; observe step 0. A range that fails to
        reset raises its `CyberdialError` (the client is answered `reset_failed`)."""
        try:
            self.range_reset.reset_episode(seed)
            self.range_resets += 1
        except ResetUnsupported as declined:
            if not self._said_no_reset:
                logger.warning("%s", declined)
                self._said_no_reset = True
        self.referee.start_episode()
        self._reset_state()
        self.episode += 1
        # Alerts from before this episode are not its activity: with a clock, every
        # sensor first closes the time before step 0 (the reset's own noise).
        self.hub.run_phase("close", episode=self.episode, step=-1)
        self.hub.poll_alerts(0.0)
        self.step = 0
        self.hub.step = 0
        self._started = True
        self.measurement = self._measure()
        return self._observation_batch(None)

    def play(self, batch: ActionBatch) -> ObservationBatch:
        """One step: actions -> commands, the step window's alerts -> observations."""
        started = time.monotonic()
        m = self.model
        chosen = np.zeros(m.n_agents, dtype=np.int64)
        sent = np.zeros((1, m.n_agents, m.message_bits), dtype=np.uint8)
        for layout in m.agents:
            action = batch.actions.get(layout.name, 0)
            # Out of range or masked: a safe no-op, as in the simulator.
            if 0 <= action < layout.n_actions and self.mask[0, layout.index, action] > 0:
                chosen[layout.index] = action
            bits = batch.messages.get(layout.name, ())[: m.message_bits]
            sent[0, layout.index, : len(bits)] = bits

        finished = self._advance_blue(chosen)
        action_costs = self._action_costs(finished)
        failed, restores = self._execute(finished)

        late: tuple[str, ...] = ()
        if self.hub.has_clock:
            # Lockstep: red and green move, then every sensor closes the step.
            act = self.hub.run_phase("act", episode=self.episode, step=self.step)
            while (left := started + self.step_period_s - time.monotonic()) > 0:
                self.hub.pump(min(left, 0.05))  # the pace of a watched drill
            close = self.hub.run_phase("close", episode=self.episode, step=self.step)
            late = tuple(sorted({*act.late, *close.late}))
            alerts = self.hub.poll_alerts(0.0)
        else:
            # The step window: alerts that arrive until it closes are this step's activity.
            alerts = self._collect_alerts(started + self.step_period_s)
        per_agent_alerts = self._apply_alerts(alerts)

        self.messages = sent
        bits_sent = int(sent.sum())
        self.measurement = self._measure()
        terms = self._reward_terms(restores, bits_sent, action_costs)
        if self.step_log is not None:
            self.step_log(StepLog(self.episode, self.step, tuple(alerts),
                                  tuple(self._last_commands), self.measurement, terms))
        self.step += 1
        self.hub.step = self.step
        self.steps_served += 1
        self.mask = m.action_masks(self.activity, self.observed, self.messages,
                                   (self.timer > 0)[None, :])
        return self._observation_batch(
            {"terms": terms, "bits_sent": bits_sent, "failed": failed,
             "alerts": per_agent_alerts, "dead": tuple(self.hub.dead_peers()), "late": late}
        )

    def _advance_blue(self, chosen: NDArray[np.int64]) -> list[tuple[int, BlueAction]]:
        """Blue's timers (`range.blue`, as the simulator's): a busy agent continues; done
        ones act."""
        m = self.model
        pending, timer, finished = advance_timers(m, chosen[None], self.pending[None],
                                                  self.timer[None])
        self.pending, self.timer = pending[0], timer[0]
        self.last_action[0] = self.pending
        done: list[tuple[int, BlueAction]] = []
        for index in np.flatnonzero(finished[0]):
            action = m.agents[index].actions[int(self.pending[index])]
            if action.kind != ActionKind.SLEEP:
                done.append((int(index), action))
        return done

    def _execute(self, finished: list[tuple[int, BlueAction]]) -> tuple[dict[int, list[str]], int]:
        """Run the finished actions on the hosts; their results update what blue knows."""
        failed: dict[int, list[str]] = {}
        self._last_commands = []
        if not finished:
            return failed, 0
        commands = [
            Command(command_id=f"{self._nonce}.{self.episode}.{self.step}.{index}",
                    action=action.kind.name.lower(),
                    host=action.host, subnet=action.subnet)
            for index, action in finished
        ]
        results = self.hub.execute_many(commands, self.command_timeout_s)
        restores = 0
        for (index, action), result in zip(finished, results, strict=True):
            self._last_commands.append((self.model.agents[index].name, action, result))
            if not result.ok:
                failed.setdefault(index, []).append(f"{action.label}: {result.detail}"[:512])
                continue
            restores += self._apply_result(action, result)
        return failed, restores

    def _apply_result(self, action: BlueAction, result: CommandResult) -> int:
        """What blue learns from a result: the simulator's rules (`range.blue`) on real data."""
        index, first = self.scenario.host_index, _FIRST
        if action.kind == ActionKind.ANALYSE and action.host is not None:
            if result.compromise is not None:
                # The wire's text, decoded once here; blue's bits take the game's value.
                learn_analysed(self.observed, first, np.array([index[action.host]]),
                               np.array([decode_finding(result.compromise)], dtype=np.int8))
        elif action.kind == ActionKind.RESTORE and action.host is not None:
            learn_restored(self.observed, first, np.array([index[action.host]]))
            return 1
        elif action.kind in (ActionKind.BLOCK, ActionKind.UNBLOCK) and action.subnet is not None:
            learn_blocked(self.blocked, first,
                          np.array([self.scenario.subnet_index[action.subnet]]),
                          action.kind == ActionKind.BLOCK)
        return 0

    def _collect_alerts(self, window_end: float) -> list[Alert]:
        alerts = self.hub.poll_alerts(0.0)
        # Bounded: one poll per remaining slice of the window, each at most 50 ms.
        while (remaining := window_end - time.monotonic()) > 0:
            self.hub.pump(min(remaining, 0.05))
        alerts.extend(self.hub.poll_alerts(0.0))
        return alerts

    def _apply_alerts(self, alerts: list[Alert]) -> NDArray[np.int64]:
        m = self.model
        self.activity[:] = Activity.NONE
        per_agent = np.zeros(m.n_agents, dtype=np.int64)
        host_index = self.scenario.host_index
        for alert in alerts:
            h = host_index.get(alert.host)
            if h is None:
                self.drops.drop(Dropped("unknown_host", alert.host), logger)
                continue
            if alert.observed_at < self._episode_wall_start:
                self.drops.drop(Dropped("stale_step", f"alert from before episode {self.episode}"),
                                logger)
                continue
            level = ALERT_ACTIVITY.get(alert.kind, Activity.NONE)
            if level > self.activity[0, h]:
                self.activity[0, h] = level
            if self._host_agent[h] >= 0:
                per_agent[self._host_agent[h]] += 1
        # An exploit seen on a host blue believes clean makes it "unknown", as in the sim.
        learn_alerts(self.activity, self.observed)
        return per_agent

    def _measure(self) -> Measurement:
        m = self.model
        try:
            measurement = self.referee.measure()
            if not isinstance(measurement, Measurement):
                problem = f"measure() gave a {type(measurement).__name__}, not a Measurement"
            elif measurement.compromise.shape != (m.n_hosts,) or \
                    measurement.blocked.shape != (m.n_subnets,):
                problem = (f"a measurement of {measurement.compromise.shape[0]} hosts and"
                           f" {measurement.blocked.shape[0]} subnets, not {m.n_hosts} and"
                           f" {m.n_subnets}")
            else:
                return measurement
        except Exception as error:  # a failing referee must not stop the episode
            problem = f"{type(error).__name__}: {error}"
        # Scored as clean (no host-state costs); counted, and logged once per kind.
        self.drops.drop(Dropped("referee_failed", problem), logger)
        return Measurement.clean(m)

    def _action_costs(self, finished: list[tuple[int, BlueAction]]) -> NDArray[np.float32]:
        """Wasted-action costs as the simulator charges them, on the last measured truth."""
        done = np.zeros((1, self.model.n_agents), dtype=bool)
        done[0, [index for index, _ in finished]] = True
        return self.model.action_costs(done, self.pending[None, :],
                                       self.measurement.compromise[None], self.observed,
                                       self.blocked)

    def _reward_terms(self, restores: int, bits_sent: int,
                      action_costs: NDArray[np.float32] | None = None) -> dict[str, float]:
        return self.measurement.reward_terms(self.model, restores=restores, bits_sent=bits_sent,
                                             action_costs=action_costs)

    def state(self) -> NDArray[np.float32]:
        """The global state in `SimBatch.state()`'s layout (`range.blue.global_state`), from
        the referee's ground truth."""
        truth = self.measurement
        return global_state(self.model, self.step, truth.compromise[None], truth.impacted[None],
                            truth.decoy[None], truth.down[None], self.activity, self.observed,
                            self.blocked, self.messages)[0]

    def _observation_batch(self, outcome: dict[str, Any] | None) -> ObservationBatch:
        m = self.model
        observations = m.encode_observations(self.activity, self.observed, self.blocked,
                                             self.messages, self.last_action)
        # Our own output needs no validation: model_construct skips it (most of the cost
        # of a 500-host batch); the client validates what it receives.
        per_agent = {
            a.name: AgentObservation.model_construct(
                observation=tuple(observations[0, a.index, : a.obs_size].tolist()),
                action_mask=tuple(self.mask[0, a.index, : a.n_actions].tolist()))
            for a in m.agents
        }
        state = tuple(self.state().tolist())
        if outcome is None:
            return ObservationBatch.model_construct(
                step=self.step, observations=per_agent, rewards={}, terminations={},
                truncations={}, infos={a.name: AgentInfo() for a in m.agents}, state=state)
        done = self.step >= self.scenario.episode_length
        reward = outcome["terms"]["total"]
        infos = {
            a.name: AgentInfo(
                reward_terms=outcome["terms"], bits_sent=outcome["bits_sent"],
                busy=bool(self.timer[a.index] > 0),
                executed=a.actions[int(self.last_action[0, a.index])].label,
                dead_peers=outcome["dead"],
                failed_commands=tuple(outcome["failed"].get(a.index, ())),
                alerts=int(outcome["alerts"][a.index]), late_peers=outcome["late"])
            for a in m.agents
        }
        return ObservationBatch.model_construct(
            step=self.step, observations=per_agent,
            rewards={a.name: reward for a in m.agents},
            terminations={a.name: False for a in m.agents},
            truncations={a.name: done for a in m.agents}, infos=infos, state=state)


class BridgeThread:
    """Runs a `BridgeService` in a thread (its sockets live there); for tests and benchmarks."""

    def __init__(self, service: BridgeService, *, lifetime_s: float = 3600.0) -> None:
        self.service = service
        self.lifetime_s = lifetime_s
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bridge", daemon=True)

    def __enter__(self) -> BridgeService:
        self._thread.start()
        if not self._ready.wait(10.0) or self._error is not None:
            self._stop.set()
            self._thread.join(5.0)
            raise RuntimeError(f"the bridge did not start: {self._error}")
        return self.service

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        try:
            with self.service:
                self._ready.set()
                self.service.serve(stop=self._stop, deadline=time.monotonic() + self.lifetime_s)
        except BaseException as error:  # reported to the starting thread, not lost
            self._error = error
            self._ready.set()
            raise
