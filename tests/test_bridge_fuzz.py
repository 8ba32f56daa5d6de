"""Fuzzing every bridge socket: random and mutated frames are counted and dropped, never run.

Seeded mutation of valid frames (plus pure noise) at the hub's PULL, the hub's
ROUTER and the agent endpoint. On the host side every mutated message is signed:
with its sender's real key after the mutation (a program that holds its key and
sends garbage), with the signature of the original (tampering), or not at all.
Each frame's expected fate is what `decode` says of it; frames that happen to
stay valid are not sent, except deliberate replays. Afterwards the bridge must
still play a legitimate step. The actuator's own socket: test_hostile.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bridge_support import HEARTBEAT, KEYS, RUN, bridge, endpoints, no_truth, wait_for

from cyberdial.bridge.env import EmulatedRange
from cyberdial.bridge.protocol import (
    AGENT_REQUESTS,
    MAX_FRAME_BYTES,
    PAYLOADS,
    ActionBatch,
    AgentHello,
    Dropped,
    Envelope,
    Heartbeat,
    Hello,
    ResetRequest,
    decode,
    encode,
)
from cyberdial.range.hub import ACTUATOR_PAYLOADS, SENSOR_PAYLOADS, ActuatorLink
from cyberdial.range.model import AlertKind
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.wire import (
    Alert,
    AlertBatch,
    Bye,
    Command,
    CommandResult,
    KeyLookup,
    signature,
)

FRAMES_PER_SOCKET = 10_000
OVERSIZED_PER_SOCKET = 3
REPLAYS_PER_SOCKET = 20
_JUNK_VALUES: list[Any] = [None, -1, 1 << 70, 1e308, "", "x" * 600, [], {}, [[[]]], True,
                           "../../etc/passwd", "$(reboot)", "; rm -rf /", "\u0000", 0.5]
_TYPES = [*PAYLOADS, "", "ALERT", "command ", "\u00e9t\u00e9", "x" * 200]


def _json_mutation(rng: random.Random, frame: bytes) -> bytes:
    try:
        data = json.loads(frame)
    except ValueError:
        return frame
    if not isinstance(data, dict) or not data:
        return json.dumps(rng.choice(_JUNK_VALUES)).encode()
    key = rng.choice(sorted(data))
    choice = rng.randrange(4)
    if choice == 0:
        data[key] = rng.choice(_JUNK_VALUES)
    elif choice == 1:
        del data[key]
    elif choice == 2:
        data["extra_" + str(rng.randrange(100))] = rng.choice(_JUNK_VALUES)
    else:
        data[key] = [data[key]] * rng.randrange(2, 5)
    return json.dumps(data).encode()


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """One random mutation of a valid message (or plain noise)."""
    frames = list(frames)
    op = rng.randrange(12)
    i = rng.randrange(len(frames))
    if op == 0 and frames[i]:
        data = bytearray(frames[i])
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        frames[i] = bytes(data)
    elif op == 1:
        frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
    elif op == 2:
        at = rng.randrange(len(frames[i]) + 1)
        frames[i] = frames[i][:at] + rng.randbytes(rng.randrange(1, 16)) + frames[i][at:]
    elif op in (3, 4, 5):
        frames[i] = _json_mutation(rng, frames[i])
    elif op == 6:
        if len(frames) > 1 and rng.random() < 0.5:
            del frames[i]
        else:
            frames.insert(i, rng.randbytes(rng.randrange(8)))
    elif op == 7:
        frames[0] = rng.choice(_TYPES).encode()
    elif op == 8:
        header = json.loads(frames[1])
        header[rng.choice(["run_id", "version", "seq", "step", "sender"])] = rng.choice(
            ["other-run", 2, -5, "", "bad name!", 0])
        frames[1] = json.dumps(header).encode()
    elif op == 9:
        frames = [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 6))]
    elif op == 10:
        frames[i] = b"[" * rng.randrange(1000, 200_000)
    else:
        frames[2], frames[1] = frames[1], frames[2]
    return frames


def templates(sender: str, kinds: dict[str, Any], seq: int) -> list[list[bytes]]:
    return [encode(kind, payload, run_id=RUN, sender=sender, seq=seq)
            for kind, payload in kinds.items()]


def hub_keys(sender: str) -> bytes | None:
    """The hub's own lookup: every name the run's master secret can key, never the bridge's."""
    return None if sender == "bridge" else KEYS.key(sender)


def signed(frames: list[bytes], sender: str) -> list[bytes]:
    return [*frames, signature(KEYS.key(sender), frames)]


def sign_mutation(rng: random.Random, base: list[bytes], mutated: list[bytes],
                  sender: str) -> list[bytes]:
    choice = rng.random()
    if choice < 0.45:
        return signed(mutated, sender)  # authenticated garbage
    if choice < 0.9:
        return [*mutated, signature(KEYS.key(sender), base)]  # tampered in transit
    return mutated  # unsigned


class FuzzPlan:
    """Frames to send at one socket and the drop counts they must cause."""

    def __init__(self, payloads: dict[str, Any], valid: dict[str, Any], sender: str,
                 seed: int, replay: list[list[bytes]], keys: KeyLookup | None = None) -> None:
        rng = random.Random(seed)
        bases = templates(sender, valid, seq=1)
        self.frames: list[list[bytes]] = []
        self.expected: Counter[str] = Counter()
        while len(self.frames) < FRAMES_PER_SOCKET:
            base = rng.choice(bases)
            candidate = mutate(rng, base)
            if keys is not None:
                candidate = sign_mutation(rng, base, candidate, sender)
            if not candidate or not any(candidate):
                continue
            result = decode(candidate, payloads, run_id=RUN, keys=keys)
            if isinstance(result, Envelope):
                continue  # a mutation that stayed valid is a message, not fuzz
            assert isinstance(result, Dropped)
            self.frames.append(candidate)
            self.expected[result.reason] += 1
        for _ in range(OVERSIZED_PER_SOCKET):
            big = list(rng.choice(bases))
            big[2] = b" " * (MAX_FRAME_BYTES + 1)
            self.frames.append(signed(big, sender) if keys is not None else big)
            self.expected["oversized"] += 1
        # `replay` is valid messages; the last is then sent again: every copy is a replay.
        self.frames.extend(replay)
        self.frames.extend([replay[-1]] * REPLAYS_PER_SOCKET)
        self.expected["replayed"] += REPLAYS_PER_SOCKET


def test_decode_never_raises_on_arbitrary_frames() -> None:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=300), min_size=0, max_size=5))
    def check(frames: list[bytes]) -> None:
        assert isinstance(decode(frames, PAYLOADS, run_id=RUN), Envelope | Dropped)

    check()


@pytest.mark.slow
def test_fuzz_every_bridge_socket(context: zmq.Context[Any]) -> None:
    scenario: Scenario = load_scenario("tiny")
    alert = Alert(host="user0", kind=AlertKind.SCAN, observed_at=time.time())
    sensor_valid = {"hello": Hello(role="sensor", hosts=("user0",)), "heartbeat": Heartbeat(),
                    "alert": alert, "alert_batch": AlertBatch(alerts=(alert, alert)),
                    "bye": Bye(reason="x")}
    actuator_valid = {
        "hello": Hello(role="actuator", subnet="user", hosts=("user0",)),
        "heartbeat": Heartbeat(),
        "command_result": CommandResult(command_id="c1", action="restore", ok=True, host="user0"),
        "bye": Bye(),
    }
    agent_valid = {"agent_hello": AgentHello(client="fuzz"), "reset": ResetRequest(seed=1),
                   "actions": ActionBatch(step=0, actions={"blue_user": 3},
                                          messages={"blue_user": (1,)}),
                   "heartbeat": Heartbeat(), "bye": Bye()}
    pull_plan = FuzzPlan(SENSOR_PAYLOADS, sensor_valid, "fz-sensor", 1,
                         [encode("heartbeat", Heartbeat(), run_id=RUN, sender="fz-r1", seq=1,
                                 key=KEYS.key("fz-r1"))], keys=hub_keys)
    router_plan = FuzzPlan(ACTUATOR_PAYLOADS, actuator_valid, "fz-act", 2,
                           [encode("heartbeat", Heartbeat(), run_id=RUN, sender="fz-r2", seq=1,
                                   key=KEYS.key("fz-r2"))], keys=hub_keys)
    # On the agent endpoint only clients that said hello are remembered, so replays too.
    agent_plan = FuzzPlan(AGENT_REQUESTS, agent_valid, "fz-agent", 3, [
        encode("agent_hello", AgentHello(client="fz-r3"), run_id=RUN, sender="fz-r3", seq=1),
        encode("heartbeat", Heartbeat(), run_id=RUN, sender="fz-r3", seq=2)])
    assert all(len(p.frames) >= 10_000 for p in (pull_plan, router_plan, agent_plan))

    executed: list[Command] = []
    stop = threading.Event()

    def handle(command: Command) -> CommandResult:
        executed.append(command)
        return CommandResult(command_id=command.command_id, action=command.action, ok=True)

    def actuator(endpoint: str) -> None:
        hosts = tuple(h.name for h in scenario.hosts_in("operational"))
        with ActuatorLink(endpoint, RUN, "act-ops", hosts, "operational", handle,
                          key=KEYS.key("act-ops"), context=context,
                          heartbeat_interval_s=HEARTBEAT) as link:
            link.serve(stop=stop, deadline=time.monotonic() + 60)

    with endpoints() as ends, \
            bridge(scenario, ends, context, no_truth(scenario), step_period_s=0) as service:
        thread = threading.Thread(target=actuator, args=(ends.commands,), daemon=True)
        thread.start()
        sockets = []
        try:
            for kind, endpoint, plan in ((zmq.PUSH, ends.alerts, pull_plan),
                                         (zmq.DEALER, ends.commands, router_plan),
                                         (zmq.DEALER, ends.agents, agent_plan)):
                sock = context.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 0)
                sock.connect(endpoint)
                sockets.append(sock)
                for frames in plan.frames:
                    sock.send_multipart(frames)
            hub_expected = pull_plan.expected + router_plan.expected
            wait_for(lambda: sum(service.hub.drops.counts.values()) >= hub_expected.total()
                     and service.drops.total >= agent_plan.expected.total(), timeout_s=60)
            assert service.hub.drops.counts == hub_expected
            assert service.drops.counts == agent_plan.expected
            assert service.hub.commands_sent == 0 and executed == []
            assert service.steps_served == 0
            # The fuzzers' one valid (signed) heartbeat each got through.
            # (Read `_peers`, never `peers()`: the bridge thread owns the hub's sockets.)
            assert {"fz-r1", "fz-r2"} <= set(service.hub._peers)

            # Still serving: a real client plays a step that runs one real command.
            wait_for(lambda: "act-ops" in service.hub._peers)
            env = EmulatedRange(scenario, ends.agents, run_id=RUN, context=context)
            try:
                env.reset()
                block = [a.label for a in env.model.agents[1].actions].index("block operational")
                _, _, _, _, infos = env.step({"blue_ops": block})
            finally:
                env.close()
            assert infos["blue_ops"]["failed_commands"] == ()
            assert [(c.action, c.subnet) for c in executed] == [("block", "operational")]
        finally:
            for sock in sockets:
                sock.close()
            stop.set()
            thread.join(5)
