"""`EmulatedRange`: the PettingZoo ParallelEnv that plays a scenario on the emulated range.

A client of the bridge service (DEALER to its agent endpoint, optionally with
CurveZMQ), so a policy may run in another process or on another machine. Its
spaces are exactly `SimRange`'s for the same scenario: a policy trained in the
simulator runs here unchanged.

A client whose connection dropped and came back (a bridge or network hiccup)
says hello again with its session token and carries on; one whose bridge
restarted is told so (the episode is gone: reset).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np
import zmq
from numpy.typing import NDArray
from pettingzoo import ParallelEnv
from pydantic import BaseModel
from zmq.utils.monitor import recv_monitor_message

from cyberdial.bridge.protocol import (
    BRIDGE_REPLIES,
    ActionBatch,
    AgentHello,
    Bye,
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
from cyberdial.bridge.service import CurveKeys
from cyberdial.range.errors import BridgeTimeout, CyberdialError
from cyberdial.range.hub import configure_socket
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.sim import agent_spaces

logger = logging.getLogger(__name__)

# Beyond the bridge's own step period: command timeouts plus slack for a busy machine.
REPLY_MARGIN_S = 5.0
# A step whose reply went missing is asked for once more (the bridge answers a
# repeated step from its cache, it does not play it twice).
ATTEMPTS = 2


class BridgeRefused(CyberdialError):
    """The bridge answered with an error; the message says how to recover."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class EmulatedRange(ParallelEnv):
    """PettingZoo ParallelEnv over a running bridge; spaces identical to `SimRange`'s.

    `endpoint` is the bridge's agent endpoint (`tcp://HOST:PORT` or `ipc:///path`).
    Off loopback, pass `server_key` (the bridge's Curve public key) and
    `curve` (this client's key pair, which the bridge may have to allow).
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "cyberdial_emulated_v0", "render_modes": ["ansi"],
                "is_parallelizable": True}

    def __init__(
        self,
        scenario: Scenario | str | Path,
        endpoint: str,
        *,
        run_id: str,
        client: str | None = None,
        server_key: bytes | None = None,
        curve: CurveKeys | None = None,
        timeout_s: float | None = None,
        render_mode: str | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.scenario = scenario
        self.model = GameModel(scenario)
        self.endpoint = endpoint
        self.run_id = run_id
        self.client = client or f"agent-{os.getpid()}"
        self.render_mode = render_mode
        self.possible_agents = list(self.model.agent_names)
        self.agents: list[str] = []
        self._observation_spaces, self._action_spaces = agent_spaces(self.model)
        self.drops = DropCounter()
        self._replay = ReplayGuard()
        self._seq = 0
        self._step = 0
        self._state = np.zeros(self.model.state_size, dtype=np.float32)
        self._last: ObservationBatch | None = None
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        configure_socket(self._socket)
        self._session: str | None = None
        self._connections = 0
        self._monitor: zmq.Socket[Any] | None = self._socket.get_monitor_socket(
            zmq.EVENT_CONNECTED)
        if server_key is not None:
            keys = curve or CurveKeys.generate()
            self._socket.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            self._socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        self._socket.connect(endpoint)
        self._timeout_s = REPLY_MARGIN_S if timeout_s is None else timeout_s
        try:
            self.welcome = self._hello()
        except BaseException:
            self.close()
            raise
        if timeout_s is None:
            self._timeout_s = (2 * self.welcome.step_period_s + self.welcome.step_deadline_s
                               + REPLY_MARGIN_S)

    @classmethod
    def attach(cls, run_id: str, *, runs_root: Path | None = None, **options: Any) -> EmulatedRange:
        """Connect to the bridge serving a run on this machine (its `bridge.json`).

        The scenario is the run's own copy; other options as for the constructor.
        """
        from cyberdial.range.emulation.netns import process_start_time
        from cyberdial.range.emulation.state import RUNS_ROOT

        run_dir = (runs_root or RUNS_ROOT) / run_id
        try:
            info = json.loads((run_dir / "bridge.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BridgeRefused(f"no bridge serves run {run_id}: start `cyberdial bridge"
                                f" {run_id}` (looked for {run_dir / 'bridge.json'})") from None
        except (OSError, ValueError) as error:
            raise BridgeRefused(f"cannot read {run_dir / 'bridge.json'} ({error}): restart"
                                f" `cyberdial bridge {run_id}`") from None
        pid = info.get("pid")
        if isinstance(pid, int) and process_start_time(pid) != info.get("start"):
            # The bridge that wrote it died without removing it (SIGKILL, a crash).
            raise BridgeRefused(f"no bridge serves run {run_id}: the bridge that wrote"
                                f" {run_dir / 'bridge.json'} (pid {pid}) is gone; start"
                                f" `cyberdial bridge {run_id}`")
        scenario = Scenario.model_validate_json((run_dir / "scenario.json").read_text("utf-8"))
        if info.get("server_key") and "server_key" not in options:
            options["server_key"] = info["server_key"].encode()
        return cls(scenario, info["agent_endpoint"], run_id=run_id, **options)

    # ------------------------------------------------------------- spaces

    def observation_space(self, agent: str) -> gymnasium.spaces.Dict:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Discrete:
        return self._action_spaces[agent]

    # ------------------------------------------------------------ the wire

    def _send(self, message_type: str, payload: BaseModel, step: int = 0) -> None:
        self._seq += 1
        frames = encode(message_type, payload, run_id=self.run_id, sender=self.client,
                        seq=self._seq, step=step)
        try:
            # Never block: with no connected bridge (or a failed Curve handshake) a DEALER
            # send would wait forever.
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            raise BridgeTimeout(
                f"cannot send to the bridge at {self.endpoint}: it is not connected (is it"
                " running, and do the Curve keys match?)") from None

    def _reconnected(self) -> bool:
        """True once per connection after the first (the bridge sees a new peer then)."""
        fresh = 0
        while self._monitor is not None and self._monitor.poll(0, zmq.POLLIN):
            try:
                event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except (zmq.Again, ValueError):
                break
            if event.get("event") == zmq.EVENT_CONNECTED:
                fresh += 1
        before, self._connections = self._connections, self._connections + fresh
        return fresh > 0 and before + fresh > 1

    def _rehello(self) -> None:
        """Move our session to the current connection (the token proves it is ours)."""
        self._request("agent_hello", AgentHello(
            client=self.client, scenario_hash=self.scenario.scenario_hash,
            session=self._session), Welcome, attempts=1)

    def _request(
        self, message_type: str, payload: BaseModel, expect: type[BaseModel], *,
        step: int = 0, attempts: int = ATTEMPTS,
    ) -> Any:
        for attempt in range(attempts):
            if message_type != "agent_hello" and self._session is not None and (
                    attempt > 0 or self._reconnected()):
                try:
                    self._rehello()
                except BridgeTimeout:
                    pass  # counted as this attempt's failure below
            self._send(message_type, payload, step)
            deadline = time.monotonic() + self._timeout_s
            try:
                reply = self._receive(expect, step, deadline)
            except BridgeRefused as refused:
                if refused.code != "not_ready" or message_type == "agent_hello" or \
                        "agent_hello" not in str(refused) or attempt + 1 >= attempts:
                    raise
                # The bridge does not know us (it restarted): introduce ourselves again.
                logger.warning("the bridge forgot this client (restarted?): saying hello again")
                self._session = None
                self.welcome = self._hello()
                continue
            if reply is not None:
                return reply
            logger.warning("no %s reply from the bridge in %.1f s (attempt %d of %d)",
                           message_type, self._timeout_s, attempt + 1, attempts)
        raise BridgeTimeout(
            f"the bridge at {self.endpoint} did not answer {message_type} in"
            f" {self._timeout_s:.1f} s ({attempts} tries): is `cyberdial bridge {self.run_id}`"
            " running for this run, and are the run id and endpoint right?")

    def _receive(self, expect: type[BaseModel], step: int, deadline: float) -> Any:
        # Bounded by the deadline; replies for older requests are skipped, not mistaken.
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                return None
            result = decode(self._socket.recv_multipart(), BRIDGE_REPLIES, run_id=self.run_id)
            if isinstance(result, Dropped):
                self.drops.drop(result, logger)
                continue
            if not self._replay.accept(result.header):
                self.drops.drop(Dropped("replayed", str(result.header.seq)), logger)
                continue
            payload = result.payload
            if isinstance(payload, ErrorReply):
                raise BridgeRefused(f"the bridge refused: {payload.message} ({payload.code})",
                                    payload.code)
            if not isinstance(payload, expect):
                continue
            if isinstance(payload, ObservationBatch) and payload.step != step:
                self.drops.drop(Dropped("stale_step", f"observations {payload.step}"), logger)
                continue
            return payload
        return None

    def _hello(self) -> Welcome:
        welcome: Welcome = self._request(
            "agent_hello", AgentHello(client=self.client,
                                      scenario_hash=self.scenario.scenario_hash,
                                      session=self._session), Welcome)
        self._session = welcome.session
        served = {spec.name: (spec.obs_size, spec.n_actions) for spec in welcome.agents}
        local = {a.name: (a.obs_size, a.n_actions) for a in self.model.agents}
        if served != local:
            raise BridgeRefused(f"the bridge serves agents {served}, this scenario has {local}:"
                                " use the same scenario file on both sides")
        return welcome

    def ping(self) -> float:
        """Round trip to the bridge in seconds."""
        started = time.perf_counter()
        self._request("heartbeat", Heartbeat(), Heartbeat)
        return time.perf_counter() - started

    # ---------------------------------------------------------- PettingZoo

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        batch: ObservationBatch = self._request("reset", ResetRequest(seed=seed),
                                                ObservationBatch, step=0)
        self._step = 0
        self.agents = list(self.possible_agents)
        observations, _, _, _, _ = self._unpack(batch)
        return observations, {a: {} for a in self.agents}

    def step(
        self, actions: dict[str, int], messages: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        bits = self.model.message_bits
        message_lists: dict[str, tuple[int, ...]] = {}
        for name in self.agents:
            if messages and name in messages:
                raw = np.asarray(messages[name]).reshape(-1)[:bits]
                message_lists[name] = tuple(int(x > 0) for x in raw)
        request = ActionBatch(
            step=self._step,
            actions={name: int(action) for name, action in actions.items() if name in self.agents},
            messages=message_lists,
        )
        batch: ObservationBatch = self._request("actions", request, ObservationBatch,
                                                step=self._step + 1)
        self._step = batch.step
        observations, rewards, terminations, truncations, infos = self._unpack(batch)
        if all(truncations.values()) or all(terminations.values()):
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def _unpack(
        self, batch: ObservationBatch
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        self._last = batch
        if batch.state:
            self._state = np.asarray(batch.state, dtype=np.float32)
        live = self.agents
        observations: dict[str, dict[str, NDArray[Any]]] = {}
        for name in live:
            item = batch.observations[name]
            observations[name] = {
                "observation": np.asarray(item.observation, dtype=np.float32),
                "action_mask": np.asarray(item.action_mask, dtype=np.int8),
            }
        rewards = {a: float(batch.rewards.get(a, 0.0)) for a in live}
        terminations = {a: bool(batch.terminations.get(a, False)) for a in live}
        truncations = {a: bool(batch.truncations.get(a, False)) for a in live}
        infos = {a: batch.infos[a].model_dump() if a in batch.infos else {} for a in live}
        return observations, rewards, terminations, truncations, infos

    def state(self) -> NDArray[np.float32]:
        return self._state.copy()

    def render(self) -> str | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; pass render_mode='ansi'")
            return None
        if self._last is None:
            return "no step yet"
        lines = [f"step {self._last.step}/{self.scenario.episode_length}"]
        for name, info in self._last.infos.items():
            lines.append(f"  {name}: {info.executed:<24} alerts {info.alerts}"
                         f" dead peers {','.join(info.dead_peers) or '-'}")
        return "\n".join(lines)

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if not self._socket.closed:
            try:
                self._send("bye", Bye(reason="client closed"))
            except (zmq.ZMQError, BridgeTimeout):
                pass  # the bridge is gone: nobody to say bye to
            # A short linger lets the bye out; a dead bridge cannot hold us longer.
            self._socket.close(linger=100)
        if self._own_context and not self._context.closed:
            self._context.term()
