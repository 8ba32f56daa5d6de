"""The hub's step clock on real sockets: ticks, answers, alerts placed by order, late programs.

Programs here are threads with the range programs' own client halves (`SensorLink`,
`StepFollower`); the real programs on real hosts are in test_lockstep_emulated.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from cyberdial.range.hub import HostHub, SensorLink, StepFollower, clock_topic
from cyberdial.range.model import AlertKind
from cyberdial.range.wire import Hello, HostKeys, StepDone, StepTick, encode

RUN = "clock-run"
KEYS = HostKeys.generate(RUN)
EXPECTED = {
    "red": Hello(role="red"),
    "sensor-a": Hello(role="sensor", subnet="a", hosts=("h1",)),
    "sensor-b": Hello(role="sensor", subnet="b", hosts=("h2",)),
}


@pytest.fixture
def hub(context: zmq.Context[Any]) -> Iterator[HostHub]:
    with HostHub(RUN, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", keys=KEYS, context=context,
                 expected=EXPECTED, clock_endpoint="tcp://127.0.0.1:*") as running:
        yield running


@contextmanager
def program(hub: HostHub, context: zmq.Context[Any], name: str,
            on_tick: Callable[[SensorLink, StepTick], None] | None) -> Iterator[None]:
    """A program in a thread: heartbeats, and (with `on_tick`) follows the clock as
    `Program.follow_steps` does: each new tick once, every copy answered."""
    hello = EXPECTED[name]
    stop = threading.Event()

    def run() -> None:
        with SensorLink(hub.alert_endpoint, RUN, name, key=KEYS.key(name), context=context,
                        hosts=hello.hosts, subnet=hello.subnet,
                        role=hello.role) as link, \
                StepFollower(hub.clock_endpoint or "", RUN, name, key=KEYS.key(name),
                             context=context) as clock:
            done = -1
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                link.maybe_heartbeat()
                tick = clock.poll(0.02)
                if tick is None or on_tick is None:
                    continue
                if tick.tick > done:
                    on_tick(link, tick)
                    done = tick.tick
                link.send("step_done", StepDone(tick=done))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def wait_heard(hub: HostHub, names: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(hub.peers()[n].heard for n in names):
            return
        hub.pump(0.05)
    raise AssertionError(f"not all of {names} heard")


def test_each_step_acts_once_and_alerts_belong_to_the_step_their_sensor_closed(
    hub: HostHub, context: zmq.Context[Any]
) -> None:
    acted: list[int] = []

    def red(link: SensorLink, tick: StepTick) -> None:
        time.sleep(0.05)  # a move that takes a while: the hub repeats the tick meanwhile
        acted.append(tick.step)

    def sensor(link: SensorLink, tick: StepTick) -> None:
        link.alert("h1", AlertKind.EXPLOIT, evidence=f"before {tick.step}")
        link.send("step_done", StepDone(tick=tick.tick))
        # Raised after it closed the step: it belongs to the next one.
        link.alert("h1", AlertKind.SCAN, evidence=f"after {tick.step}")

    with program(hub, context, "red", red), program(hub, context, "sensor-a", sensor), \
            program(hub, context, "sensor-b", lambda link, tick: None):
        wait_heard(hub, set(EXPECTED))
        for step in range(20):
            act = hub.run_phase("act", episode=1, step=step)
            assert act.waited == ("red",) and act.late == ()
            assert acted == list(range(step + 1))  # once, though the tick came many times
            close = hub.run_phase("close", episode=1, step=step)
            assert close.waited == ("sensor-a", "sensor-b") and close.late == ()
            evidence = sorted(a.evidence for a in hub.poll_alerts(0.0))
            expected = sorted([f"before {step}"] + ([f"after {step - 1}"] if step else []))
            assert evidence == expected
    assert hub.drops.total == 0


def test_a_sensor_that_never_closes_is_named_and_the_step_goes_on(
    hub: HostHub, context: zmq.Context[Any]
) -> None:
    with program(hub, context, "sensor-a", lambda link, tick: None), \
            program(hub, context, "sensor-b", None):  # alive (heartbeats), never answers
        wait_heard(hub, {"sensor-a", "sensor-b"})
        started = time.monotonic()
        close = hub.run_phase("close", episode=1, step=0, deadline_s=0.5)
        assert close.late == ("sensor-b",)
        assert 0.5 <= time.monotonic() - started < 5
        # Red never started: once past the liveness span it is named dead, and not waited for.
        deadline = time.monotonic() + 10
        while "red" not in hub.dead_peers() and time.monotonic() < deadline:
            hub.pump(0.05)
        act = hub.run_phase("act", episode=1, step=0, deadline_s=5.0)
        assert act.waited == () and act.late == ()


def test_a_follower_drops_ticks_not_signed_with_its_key(context: zmq.Context[Any]) -> None:
    forger = context.socket(zmq.PUB)
    forger.setsockopt(zmq.LINGER, 0)
    port = forger.bind_to_random_port("tcp://127.0.0.1")
    try:
        with StepFollower(f"tcp://127.0.0.1:{port}", RUN, "red", key=KEYS.key("red"),
                          context=context) as clock:
            time.sleep(0.2)  # the subscription reaches the publisher
            tick = StepTick(tick=1, episode=1, step=0, phase="act")
            wrong = encode("step_tick", tick, run_id=RUN, sender="bridge", seq=1,
                           key=KEYS.key("sensor-a"))
            right = encode("step_tick", tick, run_id=RUN, sender="bridge", seq=2,
                           key=KEYS.key("red"))
            for frames in (wrong, right):
                forger.send_multipart([clock_topic("red"), *frames])
                time.sleep(0.05)
            heard = None
            deadline = time.monotonic() + 5
            while heard is None and time.monotonic() < deadline:
                heard = clock.poll(0.1)
            assert heard == tick
            assert clock.drops.counts["unauthenticated"] == 1
            forger.send_multipart([clock_topic("red"), *right])  # a replayed copy
            assert clock.poll(0.5) is None
            assert clock.drops.counts["replayed"] == 1
    finally:
        forger.close(linger=0)
