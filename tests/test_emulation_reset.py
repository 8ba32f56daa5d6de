"""Episode reset on real hosts: after red's progress and blue's block, step 0 again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from cyberdial.range.emulation.netns import listening_ports
from cyberdial.range.emulation.referee import blocked_subnets, implants_by_host
from cyberdial.range.scenario import load_scenario
from cyberdial.range.wire import Command

if TYPE_CHECKING:
    from cyberdial.range.emulation.emulator import Range


def _wait(emulated: Range, condition: Callable[[], bool], timeout_s: float) -> bool:
    """Step the range (red moves only on its step clock) until `condition` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        emulated.wait_step(pace=False)
    return False


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reset_episode_returns_every_host_to_step_zero() -> None:
    from cyberdial.range.emulation.emulator import Range

    scenario = load_scenario("tiny")
    with Range(scenario) as emulated:
        plan = emulated.plan
        assert emulated.referee is not None
        # Red lands on its entry host and spreads; blue blocks the user subnet.
        assert _wait(emulated, lambda: sum(map(len, implants_by_host(plan).values())) >= 2, 60)
        result = emulated.execute(Command(command_id="b1", action="block", subnet="user"))
        assert result.ok, result.detail
        assert blocked_subnets(plan) == ["user"]
        first_red = [p.pid for p in emulated.state.programs if p.role == "red"]  # type: ignore[union-attr]
        old_implants = {pid for pids in implants_by_host(plan).values() for pid in pids}

        started = time.monotonic()
        # What the bridge does at each episode start: the range's reset, the referee's.
        emulated.reset_episode(7)
        emulated.referee.start_episode()
        took = time.monotonic() - started
        truth = emulated.referee.measure()
        assert took < 30
        # No foothold is left, not even on red's entry host: its implants died with the
        # hosts' guest processes.
        assert truth.compromised(scenario) == {}
        now = {pid for pids in truth.implants.values() for pid in pids}
        assert not now & old_implants
        assert not truth.impacted.any() and not truth.blocked.any()
        for host in plan.hosts:
            ports = listening_ports(plan.host_pids[host.name])
            assert {s.port for s in host.services} <= ports, host.name
        # The same red process plays the new episode (no second start of Python, scapy).
        reds = [p for p in emulated.state.programs if p.role == "red"]  # type: ignore[union-attr]
        assert [p.pid for p in reds] == first_red and reds[0].alive()
        # Red starts the kill chain again from its entry host.
        assert _wait(emulated, lambda: bool(implants_by_host(plan)[scenario.red.entry]), 30)
