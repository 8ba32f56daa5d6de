"""Hostile hosts on real sockets: what a process on an emulated host can try against the bridge.

Red's implants and a container's image run inside the range and can open its ipc
sockets. Each case of issue 13 is played here against a live bridge (ipc
endpoints, real ZeroMQ sockets, host programs signing with their own keys): the
forger never holds a program's key. Every case also checks that the legitimate
path still works, so a test cannot pass by the bridge hearing nothing at all.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
from test_bridge import ScriptedActuator, slot
from test_bridge_fuzz import mutate, sign_mutation
from test_bridge_support import (
    HEARTBEAT,
    KEYS,
    RUN,
    bridge,
    endpoints,
    no_truth,
    wait_for,
)

from cyberdial.bridge.env import BridgeRefused, EmulatedRange
from cyberdial.bridge.protocol import AgentHello, ResetRequest
from cyberdial.bridge.service import BridgeService, BridgeThread
from cyberdial.range.hub import BRIDGE_TO_ACTUATOR_PAYLOADS, ActuatorLink, HostHub, SensorLink
from cyberdial.range.model import AlertKind, GameModel
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.simhosts import SimReferee, SimulatedHosts
from cyberdial.range.wire import (
    Alert,
    Command,
    CommandResult,
    Dropped,
    Envelope,
    Heartbeat,
    Hello,
    decode,
    encode,
)

FORGED_KEY = b"f" * 32  # what a forger signs with: it holds no program's key
FLOOD_HELLOS = 25_000
ACTUATOR_FUZZ_FRAMES = 10_000


@pytest.fixture
def tiny() -> Scenario:
    return load_scenario("tiny")


@contextmanager
def forger(context: zmq.Context[Any], kind: int, endpoint: str,
           identity: bytes | None = None) -> Iterator[zmq.Socket[Any]]:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close()


def host_bits(observation: Any, host: int) -> list[int]:
    return [int(x) for x in observation["observation"][4 * host: 4 * host + 4]]


def exploit(host: str) -> Alert:
    return Alert(host=host, kind=AlertKind.EXPLOIT, observed_at=time.time(), evidence="forged")


def forgeries(sender: str, payload_type: str, payload: Any) -> list[list[bytes]]:
    """The ways to speak as `sender` without its key: unsigned, wrong key, no hello."""
    huge = 10 ** 18
    return [
        encode(payload_type, payload, run_id=RUN, sender=sender, seq=huge),  # 3 frames
        [*encode(payload_type, payload, run_id=RUN, sender=sender, seq=huge), b"0" * 64],
        encode(payload_type, payload, run_id=RUN, sender=sender, seq=huge, key=FORGED_KEY),
        encode(payload_type, payload, run_id=RUN, sender=sender, seq=huge,
               key=KEYS.key("another-program")),  # a real key of another name
    ]


@contextmanager
def scripted_bridge(tiny: Scenario, context: zmq.Context[Any], *, step_period_s: float = 0.3,
                    compromise: str = "privileged",
                    ) -> Iterator[tuple[BridgeService, Any, SensorLink]]:
    """A bridge with scripted actuators for both subnets and one quiet, real sensor."""
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=step_period_s) as service, \
            ScriptedActuator(ends.commands, context, tiny, "user", compromise=compromise), \
            ScriptedActuator(ends.commands, context, tiny, "operational"), \
            SensorLink(ends.alerts, RUN, "sensor-user", key=KEYS.key("sensor-user"),
                       hosts=("user0", "user1", "user2"), subnet="user",
                       context=context) as sensor:
        model = GameModel(tiny)
        wait_for(lambda: len(service.hub._host_route) == model.n_hosts
                 and "sensor-user" in service.hub._peers)
        yield service, ends, sensor


# ------------------------------------------------------ 1. alerts without a key


def test_forged_alerts_change_no_observation(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with scripted_bridge(tiny, context) as (service, ends, sensor):
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
        try:
            env.reset()
            frames = [*forgeries("sensor-user", "alert", exploit("user0")),
                      *forgeries("stranger", "alert", exploit("user0")),
                      *forgeries("sensor-user", "hello", Hello(role="sensor"))]
            with forger(context, zmq.PUSH, ends.alerts) as push:
                for message in frames:
                    push.send_multipart(message)
                wait_for(lambda: service.hub.drops.total >= len(frames))
                observations, _, _, _, infos = env.step({})
            assert host_bits(observations["blue_user"], 0) == [0, 0, 0, 0]
            assert infos["blue_user"]["alerts"] == 0
            # Unsigned (three frames) is malformed; every other forgery is unauthenticated.
            assert dict(service.hub.drops.counts) == {"malformed": 3, "unauthenticated": 9}
            # The real sensor, same alert: it is seen (activity exploit, compromise unknown).
            sensor.alert("user0", AlertKind.EXPLOIT, evidence="real")
            observations, _, _, _, infos = env.step({})
            assert host_bits(observations["blue_user"], 0) == [1, 1, 1, 0]
            assert infos["blue_user"]["alerts"] == 1
        finally:
            env.close()
    assert set(service.hub._peers) == {"act-user", "act-operational", "sensor-user"}


# ----------------------------------------- 2. a forged heartbeat with a huge seq


def test_forged_seq_cannot_silence_a_sensor(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with scripted_bridge(tiny, context, step_period_s=0.2) as (service, ends, sensor):
        with forger(context, zmq.PUSH, ends.alerts) as push:
            for message in forgeries("sensor-user", "heartbeat", Heartbeat()):
                push.send_multipart(message)
            wait_for(lambda: service.hub.drops.counts["unauthenticated"] >= 3)
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
        try:
            env.reset()
            sensor.alert("user1", AlertKind.SCAN, evidence="real, after the forgery")
            for _ in range(3):
                sensor.heartbeat()
                observations, _, _, _, infos = env.step({})
                if infos["blue_user"]["alerts"]:
                    break
            # Heard after the forgery: its alert became blue's observation (activity scan).
            assert host_bits(observations["blue_user"], 1)[:2] == [1, 0]
        finally:
            env.close()
    assert service.hub.drops.counts["replayed"] == 0


# ------------------------------------ 3. a forged actuator takes no host's route


def test_forged_actuator_neither_routes_nor_answers(tiny: Scenario,
                                                    context: zmq.Context[Any]) -> None:
    model = GameModel(tiny)
    with scripted_bridge(tiny, context, step_period_s=0.4) as (service, ends, sensor):
        hosts = ("user0", "user1", "user2")
        # The old takeover: a DEALER choosing the real actuator's name as its identity.
        with forger(context, zmq.DEALER, ends.commands, identity=b"act-user") as thief, \
                forger(context, zmq.DEALER, ends.commands) as liar:
            for sock in (thief, liar):
                for message in forgeries("act-user", "hello",
                                         Hello(role="actuator", subnet="user", hosts=hosts)):
                    sock.send_multipart(message)
            wait_for(lambda: service.hub.drops.total >= 8)
            assert service.hub._host_route["user0"] == "act-user"
            env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
            stop = threading.Event()

            def answer_falsely() -> None:  # even knowing the command ids blue will use
                while not stop.is_set():
                    for step in range(6):
                        forged = CommandResult(command_id=f"{service._nonce}.1.{step}.0",
                                               action="analyse", ok=True, host="user0",
                                               compromise="none")
                        for message in forgeries("act-user", "command_result", forged):
                            liar.send_multipart(message)
                    stop.wait(0.01)

            thread = threading.Thread(target=answer_falsely, daemon=True)
            try:
                env.reset()
                sensor.alert("user0", AlertKind.EXPLOIT)  # activity unmasks Analyse (SAU)
                observations, _, _, _, _ = env.step({})
                assert host_bits(observations["blue_user"], 0) == [1, 1, 1, 0]
                thread.start()
                analyse = slot(model, "blue_user", "analyse user0")
                observations, _, _, _, infos = env.step({"blue_user": analyse})
                for _ in range(5):  # Analyse takes its duration; its result comes at the end
                    if not infos["blue_user"]["busy"]:
                        break
                    observations, _, _, _, infos = env.step({})
            finally:
                stop.set()
                thread.join(5)
                env.close()
            # The real actuator's finding (privileged), not the forger's "none".
            assert host_bits(observations["blue_user"], 0)[2:] == [1, 1]
            assert infos["blue_user"]["failed_commands"] == ()
            # Neither forger was sent a command (nor anything else).
            assert not thief.poll(100) and not liar.poll(100)


# ------------------------------------------------ 4. a flood of fake programs


def flood_process(alerts: str, commands: str, count: int) -> None:
    """A hostile host process: as many fake programs' hellos as fast as it can send."""
    context: zmq.Context[Any] = zmq.Context()
    with forger(context, zmq.PUSH, alerts) as push, \
            forger(context, zmq.DEALER, commands) as dealer:
        for index in range(count):
            sock, role = (push, "sensor") if index % 2 else (dealer, "actuator")
            key = FORGED_KEY if index % 3 else KEYS.key("another-program")
            sock.send_multipart(encode("hello", Hello(role=role, hosts=("user0",)), run_id=RUN,
                                       sender=f"fake-{index}", seq=1, key=key))
        time.sleep(0.5)  # let the queues drain to the bridge before the sockets close
    context.term()


@pytest.mark.slow
def test_hello_flood_leaves_agents_and_real_sensors_alone(tiny: Scenario,
                                                          context: zmq.Context[Any]) -> None:
    import multiprocessing

    heartbeat = 0.25  # the default's half: a loaded CI machine must not miss one by chance
    with endpoints() as ends:
        hosts = SimulatedHosts(tiny, RUN, ends.alerts, ends.commands, keys=KEYS,
                               step_period_s=0.1, heartbeat_interval_s=heartbeat,
                               context=context)
        hub = HostHub(RUN, ends.alerts, ends.commands, keys=KEYS, context=context,
                      heartbeat_interval_s=heartbeat)
        service = BridgeService(tiny, hub, SimReferee(hosts), ends.agents, range_reset=hosts,
                                step_period_s=0.1, context=context)
        with BridgeThread(service), hosts:
            wait_for(lambda: len(hub._peers) == 4)
            env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
            flooder = multiprocessing.get_context("spawn").Process(
                target=flood_process, args=(ends.alerts, ends.commands, FLOOD_HELLOS))
            received_before = hub.alerts_received
            sizes: list[int] = []
            try:
                env.reset(seed=1)
                flooder.start()
                while env.agents:
                    _, _, _, _, infos = env.step({})
                    # Only real programs could ever be named, and none of them went unheard.
                    assert infos["blue_user"]["dead_peers"] == ()
                    assert env._last is not None
                    sizes.append(len(env._last.model_dump_json()))
                flooder.join(60)
                assert flooder.exitcode == 0
                wait_for(lambda: hub.drops.counts["unauthenticated"] >= FLOOD_HELLOS,
                         timeout_s=30)
            finally:
                if flooder.is_alive():
                    flooder.kill()
                env.close()
            assert dict(hub.drops.counts) == {"unauthenticated": FLOOD_HELLOS}
            # Only the range's four programs are known; replies stayed small.
            assert set(hub._peers) == {"sensor-user", "sensor-operational",
                                       "actuator-user", "actuator-operational"}
            assert max(sizes) < 2 * min(sizes) < 64 * 1024
            assert hosts.alerts_sent > 0 and hub.alerts_received > received_before
            assert service.steps_served == tiny.episode_length


# ------------------------------------------ 5. programs greet every new bridge


def test_restarted_bridge_hears_every_program_and_reports_deaths(
        tiny: Scenario, context: zmq.Context[Any]) -> None:
    names = {"sensor-user", "sensor-operational", "actuator-user", "actuator-operational"}
    expected = {name: Hello(role="sensor" if name.startswith("sensor") else "actuator",
                            subnet=name.split("-", 1)[1],
                            hosts=tuple(h.name for h in tiny.hosts_in(name.split("-", 1)[1])))
                for name in names}
    with endpoints() as ends:
        hosts = SimulatedHosts(tiny, RUN, ends.alerts, ends.commands, keys=KEYS,
                               step_period_s=0.05, heartbeat_interval_s=HEARTBEAT,
                               context=context)

        def new_bridge() -> BridgeService:
            hub = HostHub(RUN, ends.alerts, ends.commands, keys=KEYS, expected=expected,
                          context=context, heartbeat_interval_s=HEARTBEAT)
            return BridgeService(tiny, hub, SimReferee(hosts), ends.agents, range_reset=hosts,
                                 step_period_s=0, context=context)

        with hosts:
            with BridgeThread(new_bridge()) as first:
                wait_for(lambda: all(first.hub._peers[n].heard for n in names))
            hosts.kill_sensor("operational")  # dies while no bridge runs
            with BridgeThread(new_bridge()) as second:
                hub = second.hub
                # Every live program said hello to the new bridge (a hello carries its pid).
                wait_for(lambda: all(hub._peers[n].pid == os.getpid()
                                     for n in names - {"sensor-operational"}))
                assert all(hub._peers[n].hosts for n in names)
                wait_for(lambda: {n for n in names if not hub._is_alive(hub._peers[n],
                                                                         time.monotonic())}
                         == {"sensor-operational"})
                hosts.kill_sensor("user")  # dies while this bridge runs: reported too
                env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
                try:
                    env.reset()
                    deadline = time.monotonic() + 10
                    dead: tuple[str, ...] = ()
                    while time.monotonic() < deadline and len(dead) < 2:
                        _, _, _, _, infos = env.step({})
                        dead = infos["blue_user"]["dead_peers"]
                        time.sleep(0.05)
                        if not env.agents:
                            env.reset()
                    assert set(dead) == {"sensor-user", "sensor-operational"}
                finally:
                    env.close()


# --------------------------------------------------------------- agent side


def test_second_client_cannot_reset_anothers_episode(tiny: Scenario,
                                                      context: zmq.Context[Any]) -> None:
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0) as service:
        first = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, client="first")
        second = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, client="second",
                               timeout_s=2.0)
        try:
            first.reset()
            first.step({})
            with pytest.raises(BridgeRefused, match="busy"):
                second.reset()
            with pytest.raises(BridgeRefused, match="busy"):
                second.step({})
            first.step({})  # undisturbed
            assert first._step == 2
            # Another connection claiming the driver's name is refused, without its token.
            with pytest.raises(BridgeRefused, match="name_taken"):
                EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, client="first",
                              timeout_s=2.0)
            first.step({})
            first.close()  # bye: the episode is free
            wait_for(lambda: service.driver is None)  # (the bye came on another connection)
            second.reset()
            second.step({})
        finally:
            first.close()
            second.close()


def test_reconnecting_client_recovers(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0) as service:
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, timeout_s=2.0)
        try:
            env.reset()
            env.step({})
            # The connection drops and comes back: the bridge sees a new peer identity.
            env._socket.disconnect(ends.agents)
            env._socket.connect(ends.agents)
            wait_for(lambda: env._socket.poll(10, zmq.POLLOUT) > 0)
            for _ in range(3):
                env.step({})
            assert env._step == 4
            assert service.driver == env.client
        finally:
            env.close()


def test_hello_with_a_stolen_name_but_no_token(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0) as service:
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, client="owner")
        try:
            env.reset()
            with forger(context, zmq.DEALER, ends.agents) as thief:
                for session in (None, "0" * 32):
                    thief.send_multipart(encode("agent_hello", AgentHello(client="owner",
                                                                          session=session),
                                                run_id=RUN, sender="owner", seq=1))
                    assert thief.poll(2000)
                    reply = thief.recv_multipart()
                    assert reply[0] == b"error" and b"name_taken" in reply[2]
                thief.send_multipart(encode("reset", ResetRequest(), run_id=RUN,
                                            sender="owner", seq=2))
                wait_for(lambda: service.drops.counts["spoofed"] >= 1)
            env.step({})
            assert env._step == 1 and service.episode == 1
        finally:
            env.close()


# ------------------------------------------------- fuzz at the actuator's socket


def test_fuzz_the_actuator_socket(context: zmq.Context[Any]) -> None:
    """A hostile ROUTER where the bridge should be: mutated, forged and re-signed commands."""
    executed: list[Command] = []

    def handle(command: Command) -> CommandResult:
        executed.append(command)
        return CommandResult(command_id=command.command_id, action=command.action, ok=True)

    rng = random.Random(13)
    key = KEYS.key("act-x")
    valid = [Command(command_id=f"c{i}", action=action, host="h0")
             for i, action in enumerate(("analyse", "remove", "restore", "decoy"))]
    bases = [encode("command", c, run_id=RUN, sender="bridge", seq=1) for c in valid]
    bases.append(encode("heartbeat", Heartbeat(), run_id=RUN, sender="bridge", seq=1))

    def lookup(sender: str) -> bytes | None:
        return key if sender == "bridge" else None

    frames: list[list[bytes]] = []
    expected: Counter[str] = Counter()
    while len(frames) < ACTUATOR_FUZZ_FRAMES:
        base = rng.choice(bases)
        candidate = sign_mutation(rng, base, mutate(rng, base), "act-x")
        if not candidate or not any(candidate):
            continue
        result = decode(candidate, BRIDGE_TO_ACTUATOR_PAYLOADS, run_id=RUN, keys=lookup)
        if isinstance(result, Envelope):
            continue
        assert isinstance(result, Dropped)
        frames.append(candidate)
        expected[result.reason] += 1
    # Perfectly formed commands, forged: without the key, with another program's key.
    for index, wrong in enumerate([None, FORGED_KEY, KEYS.key("act-y")] * 500):
        frames.append(encode("command", Command(command_id=f"forged{index}", action="restore",
                                                host="h0"),
                             run_id=RUN, sender="bridge", seq=10 ** 18 + index, key=wrong)
                      if wrong is not None else
                      [*encode("command", Command(command_id=f"forged{index}",
                                                  action="restore", host="h0"),
                               run_id=RUN, sender="bridge", seq=10 ** 18 + index), b"0" * 64])
        expected["unauthenticated"] += 1

    with endpoints() as ends:
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, 0)
        router.bind(ends.commands)
        stop = threading.Event()
        links: list[ActuatorLink] = []

        def serve() -> None:
            with ActuatorLink(ends.commands, RUN, "act-x", ("h0",), None, handle, key=key,
                              context=context, heartbeat_interval_s=HEARTBEAT) as link:
                links.append(link)
                link.serve(stop=stop, deadline=time.monotonic() + 60)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            assert router.poll(5000)
            identity = router.recv_multipart()[0]
            for message in frames:
                router.send_multipart([identity, *message])
            wait_for(lambda: bool(links) and links[0].drops.total >= sum(expected.values()),
                     timeout_s=60)
            assert links[0].drops.counts == expected
            assert executed == []
            # The real bridge (it holds the key) is obeyed, once.
            router.send_multipart([identity, *encode(
                "command", valid[0], run_id=RUN, sender="bridge", seq=10 ** 19, key=key)])
            wait_for(lambda: len(executed) == 1)
        finally:
            stop.set()
            thread.join(5)
            router.close()
    assert len(frames) >= ACTUATOR_FUZZ_FRAMES

