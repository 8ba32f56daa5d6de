"""The host hub on real sockets: routing, idempotent commands, timeouts, liveness, drops.

Hostile host programs (forged, flooding, replaying) are in test_hostile.py.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from cyberdial.range.hub import (
    ActuatorLink,
    HostHub,
    SensorLink,
)
from cyberdial.range.model import AlertKind
from cyberdial.range.wire import (
    Alert,
    Command,
    CommandResult,
    Hello,
    HostKeys,
    encode,
)

RUN = "test-run"
FAST_HEARTBEAT = 0.05
KEYS = HostKeys.generate(RUN)


@pytest.fixture
def hub(context: zmq.Context[Any]) -> Iterator[HostHub]:
    with HostHub(RUN, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", keys=KEYS, context=context,
                 heartbeat_interval_s=FAST_HEARTBEAT, liveness=3) as running:
        yield running


def ok_handler(log: list[Command]) -> Callable[[Command], CommandResult]:
    def handle(command: Command) -> CommandResult:
        log.append(command)
        return CommandResult(command_id=command.command_id, action=command.action, ok=True,
                             host=command.host, subnet=command.subnet, compromise="user")
    return handle


@contextmanager
def actuator(
    hub: HostHub, context: zmq.Context[Any], sender: str, hosts: tuple[str, ...],
    subnet: str | None, handler: Callable[[Command], CommandResult],
) -> Iterator[threading.Event]:
    """An ActuatorLink serving in a thread (its socket lives and dies in that thread)."""
    stop = threading.Event()

    def run() -> None:
        with ActuatorLink(hub.command_endpoint, RUN, sender, hosts, subnet, handler,
                          key=KEYS.key(sender), context=context,
                          heartbeat_interval_s=FAST_HEARTBEAT) as link:
            link.serve(stop=stop, deadline=time.monotonic() + 60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sender in hub.peers())
        yield stop
    finally:
        stop.set()
        thread.join(5)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_alerts_arrive_in_order_over_ipc(context: zmq.Context[Any]) -> None:
    # ipc paths must be short (108 bytes) and absolute; a mkdtemp under /tmp is both.
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        alerts = f"ipc://{Path(folder) / 'alerts'}"
        commands = f"ipc://{Path(folder) / 'commands'}"
        with HostHub(RUN, alerts, commands, keys=KEYS, context=context) as hub, \
                SensorLink(alerts, RUN, "sensor-user", key=KEYS.key("sensor-user"),
                           hosts=("user0",), context=context) as link:
            for i in range(50):
                link.alert("user0", AlertKind.SCAN, evidence=f"probe {i}")
            link.alerts([Alert(host="user1", kind=AlertKind.EXPLOIT, observed_at=1.0)] * 3)
            received: list[Alert] = []
            deadline = time.monotonic() + 5
            while len(received) < 53 and time.monotonic() < deadline:
                received.extend(hub.poll_alerts(timeout_s=0.2))
            assert [a.evidence for a in received[:50]] == [f"probe {i}" for i in range(50)]
            assert [a.host for a in received[50:]] == ["user1"] * 3
            assert hub.peers()["sensor-user"].role == "sensor"
            assert hub.drops.total == 0


def test_commands_route_by_host_and_subnet(hub: HostHub, context: zmq.Context[Any]) -> None:
    log_a: list[Command] = []
    log_b: list[Command] = []
    with actuator(hub, context, "act-user", ("user0", "user1"), "user", ok_handler(log_a)), \
            actuator(hub, context, "act-ops", ("op0",), "ops", ok_handler(log_b)):
        results = hub.execute_many([
            Command(command_id="c1", action="analyse", host="user1"),
            Command(command_id="c2", action="restore", host="op0"),
            Command(command_id="c3", action="block", subnet="user"),
            Command(command_id="c4", action="analyse", host="nowhere"),
        ], timeout_s=2.0)
    assert [r.command_id for r in results] == ["c1", "c2", "c3", "c4"]
    assert [r.ok for r in results] == [True, True, True, False]
    assert "no actuator serves nowhere" in results[3].detail
    assert [c.command_id for c in log_a] == ["c1", "c3"]
    assert [c.command_id for c in log_b] == ["c2"]
    assert results[0].compromise == "user"


def test_repeated_command_id_runs_once(hub: HostHub, context: zmq.Context[Any]) -> None:
    log: list[Command] = []
    with actuator(hub, context, "act", ("h0",), None, ok_handler(log)):
        first = hub.execute(Command(command_id="same", action="remove", host="h0"), 2.0)
        again = hub.execute(Command(command_id="same", action="remove", host="h0"), 2.0)
    assert first.ok and again.ok
    assert first == again  # the cached result, duration included
    assert len(log) == 1


def test_handler_error_is_a_failed_result(hub: HostHub, context: zmq.Context[Any]) -> None:
    def broken(command: Command) -> CommandResult:
        raise RuntimeError("nft not found")

    with actuator(hub, context, "act", ("h0",), None, broken):
        result = hub.execute(Command(command_id="x", action="analyse", host="h0"), 2.0)
    assert not result.ok
    assert "nft not found" in result.detail


def test_slow_actuator_times_out_and_is_marked(hub: HostHub, context: zmq.Context[Any]) -> None:
    release = threading.Event()

    def slow(command: Command) -> CommandResult:
        release.wait(2.0)
        return CommandResult(command_id=command.command_id, action=command.action, ok=True)

    with actuator(hub, context, "slow", ("h0",), None, slow):
        started = time.monotonic()
        result = hub.execute(Command(command_id="t1", action="restore", host="h0"), 0.2)
        elapsed = time.monotonic() - started
        assert not result.ok and result.detail.startswith("timeout")
        assert 0.19 <= elapsed < 1.0
        assert hub.peers()["slow"].unresponsive
        # A command to an unresponsive peer fails at once instead of waiting again.
        quick = hub.execute(Command(command_id="t2", action="restore", host="h0"), 1.0)
        assert not quick.ok and "not alive" in quick.detail
        release.set()
        # Its late answer is dropped as stale; its next heartbeat revives it.
        wait_for(lambda: hub.peers()["slow"].alive)
        assert dict(hub.drops.counts) == {"stale_step": 1}


def test_silent_sensor_goes_dead_and_revives(hub: HostHub, context: zmq.Context[Any]) -> None:
    link = SensorLink(hub.alert_endpoint, RUN, "s1", key=KEYS.key("s1"), context=context,
                      heartbeat_interval_s=FAST_HEARTBEAT)
    try:
        link.hello()
        wait_for(lambda: "s1" in hub.peers() and hub.peers()["s1"].alive)
        time.sleep(FAST_HEARTBEAT * 4)
        assert hub.dead_peers() == ["s1"]
        link.heartbeat()
        wait_for(lambda: hub.peers()["s1"].alive)
    finally:
        link.close()
    wait_for(lambda: not hub.peers()["s1"].alive)  # bye means gone at once
    assert hub.peers()["s1"].said_bye


def test_restarted_sensor_is_heard_again(hub: HostHub, context: zmq.Context[Any]) -> None:
    for _ in range(2):  # the second link's seq starts above the first's (it is a clock)
        with SensorLink(hub.alert_endpoint, RUN, "s1", key=KEYS.key("s1"),
                        context=context) as link:
            link.alert("h0", AlertKind.SCAN)
        wait_for(lambda: bool(hub.poll_alerts()))
    assert hub.drops.total == 0


def test_bad_messages_are_counted_not_fatal(hub: HostHub, context: zmq.Context[Any]) -> None:
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(hub.alert_endpoint)
    try:
        alert = Alert(host="h0", kind=AlertKind.SCAN, observed_at=0.0)
        key = KEYS.key("s")
        good = encode("alert", alert, run_id=RUN, sender="s", seq=5, key=key)
        push.send_multipart(good)
        push.send_multipart(good)  # replayed
        push.send_multipart(encode("alert", alert, run_id="other", sender="s", seq=9, key=key))
        push.send_multipart([b"alert", b"{", b"}", b"0" * 64])
        push.send_multipart([b"launch_missiles", good[1], good[2], good[3]])
        push.send_multipart(encode("command", Command(command_id="c", action="restore", host="h0"),
                                   run_id=RUN, sender="s", seq=10, key=key))
        push.send_multipart([b"alert", b"x" * (2 << 20), b"{}", b""])
        push.send_multipart(encode("alert", alert, run_id=RUN, sender="s", seq=11))  # unsigned
        wait_for(lambda: hub.pump(0.01) >= 0 and hub.drops.total >= 7)
    finally:
        push.close()
    assert dict(hub.drops.counts) == {"replayed": 1, "wrong_run": 1, "malformed": 2,
                                      "unknown_type": 2, "oversized": 1}
    assert len(hub.poll_alerts()) == 1


def test_spoofed_sender_on_router_is_dropped(hub: HostHub, context: zmq.Context[Any]) -> None:
    log: list[Command] = []
    with actuator(hub, context, "act", ("h0",), None, ok_handler(log)):
        intruder = context.socket(zmq.DEALER)
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.connect(hub.command_endpoint)
        try:
            forged = CommandResult(command_id="c9", action="restore", ok=True)
            intruder.send_multipart(encode("command_result", forged, run_id=RUN, sender="act",
                                           seq=10 ** 18, key=b"k" * 32))
            wait_for(lambda: hub.pump(0.01) >= 0 and hub.drops.counts["unauthenticated"] == 1)
        finally:
            intruder.close()
    assert hub.route(Command(command_id="c", action="analyse", host="h0")) == "act"


def test_restarted_hub_hears_a_peer_before_its_hello(hub: HostHub,
                                                     context: zmq.Context[Any]) -> None:
    link = SensorLink(hub.alert_endpoint, RUN, "drive-by", key=KEYS.key("drive-by"),
                      context=context)
    try:
        link.heartbeat()  # no hello yet: e.g. a sensor that started before the hub restarted
        wait_for(lambda: "drive-by" in hub.peers())
        time.sleep(FAST_HEARTBEAT * 4)
        assert hub.dead_peers() == ["drive-by"]  # authenticated, so a real program
    finally:
        link.close(say_bye=False)


def test_peer_table_holds_authenticated_programs_only(hub: HostHub,
                                                      context: zmq.Context[Any]) -> None:
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(hub.alert_endpoint)
    try:
        for index in range(500):  # names nobody issued a key for
            push.send_multipart(encode("hello", Hello(role="sensor"), run_id=RUN,
                                       sender=f"fake{index}", seq=1, key=b"x" * 32))
        push.send_multipart(encode("hello", Hello(role="sensor"), run_id=RUN, sender="real",
                                   seq=10 ** 18, key=KEYS.key("real")))
        wait_for(lambda: hub.pump(0.01) >= 0 and "real" in hub.peers())
    finally:
        push.close()
    assert hub.drops.counts["unauthenticated"] == 500
    assert set(hub.peers()) == {"real"}
