"""Speed of the ZeroMQ bridge: latencies, alert throughput and per-step overhead.

Run: .venv/bin/python bench/bridge_speed.py [--seconds 2] [--steps 200]

All on real sockets (ipc in a temp dir). The host side is the simulator-backed
stand-in (`range/simhosts.py`) or plain sensor/actuator links, not real hosts:
these are the bridge's own costs. The step window is 0 ("use whatever alerts
have arrived"), so a step's time is all overhead. Figures, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine

from cyberdial.agents.baselines import RandomPolicy
from cyberdial.bridge.env import EmulatedRange
from cyberdial.bridge.protocol import ActionBatch, encode
from cyberdial.bridge.service import BridgeService, BridgeThread
from cyberdial.range.hub import ActuatorLink, HostHub, SensorLink
from cyberdial.range.model import AlertKind, GameModel
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.simhosts import SimReferee, SimulatedHosts
from cyberdial.range.truth import NoReferee, NoReset
from cyberdial.range.wire import (
    PROTOCOL_VERSION,
    Alert,
    AlertBatch,
    Command,
    CommandResult,
    Header,
    HostKeys,
    signature,
)

RUN = "bench"
# A fixed master secret, so the flood processes sign as the hub expects (a benchmark).
KEYS = HostKeys(RUN, b"bench master secret, not secret.")


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000.0
    return (f"p50 {np.percentile(ms, 50):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms"
            f" (n={len(ms)})")


# Scripted host sides here: no ground truth, and no range to reset.
NO_RANGE = NoReset("a benchmark's scripted host side")


# ------------------------------------------------------------- throughput


def _flood(endpoint: str, seconds: float, batch: int) -> None:
    """A sensor process: send alerts as fast as the hub takes them, for `seconds`.

    The payload is encoded once and only the header changes (as a sensor that
    batches would do): this measures the hub, not the sender's pydantic.
    """
    alert = Alert(host="user0", kind=AlertKind.SCAN, observed_at=time.time())
    kind, payload = ("alert", alert) if batch == 1 else (
        "alert_batch", AlertBatch(alerts=(alert,) * batch))
    body = payload.model_dump_json().encode()
    with SensorLink(endpoint, RUN, f"flood-{batch}", key=KEYS.key(f"flood-{batch}")) as link:
        link.socket.setsockopt(zmq.SNDHWM, 1000)
        end, seq = time.monotonic() + seconds, link._seq + 1000
        while time.monotonic() < end:
            for _ in range(100):
                seq += 1
                header = Header(version=PROTOCOL_VERSION, run_id=RUN, sender=link.sender,
                                seq=seq, step=0, timestamp=time.time())
                try:
                    # Never block: once the hub stops reading, a blocking send would hang.
                    frames = [kind.encode(), header.model_dump_json().encode(), body]
                    frames.append(signature(link.key, frames))
                    link.socket.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.001)


def alert_throughput(folder: Path, seconds: float, batch: int) -> float:
    endpoint = f"ipc://{folder / f'flood{batch}'}"
    with HostHub(RUN, endpoint, f"ipc://{folder / f'cmd{batch}'}", keys=KEYS) as hub:
        spawn = multiprocessing.get_context("spawn")
        sender = spawn.Process(target=_flood, args=(endpoint, seconds + 1.0, batch))
        sender.start()
        try:
            # Warm up (the child imports and connects), then count a steady window.
            deadline = time.monotonic() + 30
            while not hub.poll_alerts(0.1) and time.monotonic() < deadline:
                pass
            received, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                received += len(hub.poll_alerts(0.01))
            rate = received / (time.perf_counter() - start)
        finally:
            sender.join(seconds + 30)
    return rate


# ---------------------------------------------------------------- commands


def command_latency(folder: Path, count: int) -> list[float]:
    stop = threading.Event()
    ctx: zmq.Context[Any] = zmq.Context()

    def handle(command: Command) -> CommandResult:
        return CommandResult(command_id=command.command_id, action=command.action, ok=True)

    def serve(endpoint: str) -> None:
        with ActuatorLink(endpoint, RUN, "act", ("h0",), "s0", handle, key=KEYS.key("act"),
                          context=ctx) as link:
            link.serve(stop=stop, deadline=time.monotonic() + 120)

    samples: list[float] = []
    with HostHub(RUN, f"ipc://{folder / 'ca'}", f"ipc://{folder / 'cc'}", keys=KEYS,
                 context=ctx) as hub:
        thread = threading.Thread(target=serve, args=(hub.command_endpoint,), daemon=True)
        thread.start()
        while hub.route(Command(command_id="x", action="analyse", host="h0")) is None:
            hub.pump(0.05)
        for i in range(count):
            started = time.perf_counter()
            result = hub.execute(Command(command_id=f"c{i}", action="analyse", host="h0"), 1.0)
            samples.append(time.perf_counter() - started)
            assert result.ok, result.detail
        stop.set()
        thread.join(5)
    ctx.term()
    return samples


# ------------------------------------------------------- alert -> observation


def alert_to_observation(folder: Path, steps: int, background_rate: float) -> list[float]:
    """Wall time from a sensor's send to the agent holding an observation that shows it.

    A background sensor streams `background_rate` alerts/s on other hosts meanwhile.
    """
    scenario = load_scenario("tiny")
    ctx: zmq.Context[Any] = zmq.Context()
    ends = {k: f"ipc://{folder / ('l' + k)}" for k in ("a", "c", "g")}
    hub = HostHub(RUN, ends["a"], ends["c"], keys=KEYS, context=ctx)
    service = BridgeService(scenario, hub, NoReferee(GameModel(scenario)), ends["g"],
                            range_reset=NO_RANGE, step_period_s=0, context=ctx)
    stop = threading.Event()

    def background() -> None:
        noise = Alert(host="user2", kind=AlertKind.SCAN, observed_at=time.time())
        with SensorLink(ends["a"], RUN, "noise", key=KEYS.key("noise"), context=ctx) as link:
            per_tick = max(int(background_rate / 100), 1)
            while not stop.wait(0.01):
                link.alerts([noise.model_copy(update={"observed_at": time.time()})] * per_tick)

    samples: list[float] = []
    user1 = scenario.host_index["user1"]
    with BridgeThread(service):
        noise_thread = threading.Thread(target=background, daemon=True)
        noise_thread.start()
        env = EmulatedRange(scenario, ends["g"], run_id=RUN, context=ctx)
        with SensorLink(ends["a"], RUN, "probe", key=KEYS.key("probe"), context=ctx) as probe:
            env.reset()
            layout = env.model.agents[0]
            column = layout.hosts.index(user1) * 4  # first activity bit of user1
            for _ in range(steps):
                sent = time.perf_counter()
                probe.alert("user1", AlertKind.EXPLOIT)
                for _attempt in range(10):  # seen in this step or one of the next few
                    observations, _, _, _, _ = env.step({})
                    if observations["blue_user"]["observation"][column] == 1.0:
                        samples.append(time.perf_counter() - sent)
                        break
                    if not env.agents:
                        break
                if not env.agents:
                    env.reset()
        env.close()
        stop.set()
        noise_thread.join(5)
    ctx.term()
    return samples


# ----------------------------------------------------------- step overhead


def step_overhead(name: str, folder: Path, steps: int) -> tuple[list[float], list[float], int]:
    """Client round trip and server time per step, random legal actions, simulated hosts."""
    scenario: Scenario = load_scenario(name)
    ctx: zmq.Context[Any] = zmq.Context()
    ends = {k: f"ipc://{folder / (name + k)}" for k in ("a", "c", "g")}
    hosts = SimulatedHosts(scenario, RUN, ends["a"], ends["c"], keys=KEYS, step_period_s=0.05,
                           context=ctx)
    hub = HostHub(RUN, ends["a"], ends["c"], keys=KEYS, context=ctx)
    service = BridgeService(scenario, hub, SimReferee(hosts), ends["g"], range_reset=hosts,
                            step_period_s=0,
                            command_timeout_s=1.0, context=ctx)
    round_trips: list[float] = []
    commands = 0
    with BridgeThread(service), hosts:
        while len(hub._peers) < 2 * len(scenario.subnets):
            time.sleep(0.05)
        env = EmulatedRange(scenario, ends["g"], run_id=RUN, context=ctx)
        policy = RandomPolicy(env.model, seed=0, send_rate=0.2)
        m = env.model
        observations, _ = env.reset(seed=0)
        for _ in range(steps):
            obs = np.zeros((1, m.n_agents, m.max_obs), dtype=np.float32)
            masks = np.zeros((1, m.n_agents, m.max_actions), dtype=np.int8)
            for a in m.agents:
                obs[0, a.index, : a.obs_size] = observations[a.name]["observation"]
                masks[0, a.index, : a.n_actions] = observations[a.name]["action_mask"]
            actions, messages = policy.act(obs, masks)
            started = time.perf_counter()
            observations, _, _, _, infos = env.step(
                {a.name: int(actions[0, a.index]) for a in m.agents},
                {a.name: messages[0, a.index] for a in m.agents})
            round_trips.append(time.perf_counter() - started)
            commands += sum(info["executed"] != "sleep" for info in infos.values())
            if not env.agents:
                observations, _ = env.reset()
        env.close()
        server = list(service.step_seconds)
    ctx.term()
    return round_trips, server, commands


def processing_per_step(name: str, folder: Path, steps: int) -> list[float]:
    """The bridge's own work per step (encode, masks, state, serialise), no host traffic."""
    scenario = load_scenario(name)
    ctx: zmq.Context[Any] = zmq.Context()
    hub = HostHub(RUN, f"ipc://{folder / (name + 'pa')}", f"ipc://{folder / (name + 'pc')}",
                  keys=KEYS, context=ctx)
    service = BridgeService(scenario, hub, NoReferee(GameModel(scenario)),
                            f"ipc://{folder / (name + 'pg')}", range_reset=NO_RANGE,
                            step_period_s=0, context=ctx)
    samples: list[float] = []
    with service:
        service.reset()
        for i in range(steps):
            if service.step >= scenario.episode_length:
                service.reset()
            started = time.perf_counter()
            batch = service.play(ActionBatch(step=service.step))
            encode("observations", batch, run_id=RUN, sender="bridge", seq=i + 1)
            samples.append(time.perf_counter() - started)
    ctx.term()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput figure")
    parser.add_argument("--steps", type=int, default=200, help="steps per latency figure")
    args = parser.parse_args()
    print(f"machine: {describe_machine()}, libzmq {zmq.zmq_version()}, pyzmq {zmq.__version__}")
    print("host side: simulator-backed sensors/actuators on ipc (not real hosts); window 0")
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="cdbench") as name:
        folder = Path(name)
        for batch in (1, AlertBatch.MAX_ALERTS):
            rate = alert_throughput(folder, args.seconds, batch)
            kind = "single-alert messages" if batch == 1 else f"batches of {batch}"
            print(f"alerts/s sustained into the hub ({kind}, sender in another process):"
                  f" {rate:,.0f}")
        print(f"action -> command acknowledged (hub ROUTER -> actuator -> result):"
              f" {percentiles(command_latency(folder, args.steps * 5))}")
        for rate in (0.0, 20_000.0):
            samples = alert_to_observation(folder, args.steps, rate)
            print(f"alert -> observation at the agent (tiny, background {rate:,.0f} alerts/s):"
                  f" {percentiles(samples)}")
        for scenario in ("small", "large"):
            print(f"bridge processing per step on {scenario} (all sleep, no host traffic):"
                  f" {percentiles(processing_per_step(scenario, folder, args.steps))}")
        for scenario in ("small", "large"):
            trips, server, commands = step_overhead(scenario, folder, args.steps)
            print(f"step overhead on {scenario} with simulated hosts in this process (random"
                  f" legal actions): client round trip {percentiles(trips)}; bridge side"
                  f" {percentiles(server)}; {commands} agent-actions run as commands")


if __name__ == "__main__":
    main()
