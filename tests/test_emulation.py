"""The emulated range on Mininet: topology, kill chain, sensors, blue actions, clean teardown.

Plan tests run anywhere; the rest need root and mnexec (markers `root`,
`mininet`). Every range is torn down in a `finally`, and each test checks
against the machine's state before it that nothing of the run is left: no
namespace, link, bridge, nftables table or process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cyberdial.range.emulation.emulator import Range
from cyberdial.range.emulation.netns import (
    all_pids,
    cmdline,
    in_netns,
    listening_ports,
    mac_for,
    netns_inode,
    processes_in,
    wait_for_own_namespaces,
)
from cyberdial.range.emulation.plan import (
    IFNAME_MAX,
    IMPLANT_PORT,
    RangePlan,
    check_run_id,
    make_plan,
    nft_ruleset,
)
from cyberdial.range.emulation.programs.payloads import EXPLOIT_OFFSET, exploit_request
from cyberdial.range.emulation.state import (
    RUNS_ROOT,
    ProcessRecord,
    RunState,
    existing_links,
    recorded_pids,
)
from cyberdial.range.errors import CyberdialError, NotRootError
from cyberdial.range.model import AlertKind, Compromise, GameModel
from cyberdial.range.scenario import BRIDGE_MAX_PORTS, Scenario, load_scenario
from cyberdial.range.wire import Alert, Command, CommandResult

REPO = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "cyberdial"]


def fast(name: str, period: float = 0.5) -> Scenario:
    """A shipped scenario with a shorter step, so tests wait less for red."""
    return load_scenario(name).model_copy(update={"step_period": period})


# ------------------------------------------------------------------ plan (no root)


def test_plan_names_carry_run_id_and_fit_interfaces() -> None:
    plan = make_plan(load_scenario("large"), "a1b2c3", "/tmp/x")
    names = [s.bridge for s in plan.subnets] + [h.veth for h in plan.hosts] + [
        s.router_veth for s in plan.subnets]
    assert len(set(names)) == len(names)
    assert all("a1b2c3" in n and len(n) <= IFNAME_MAX for n in names)
    assert plan.nft_table.endswith("a1b2c3")
    ua0 = plan.host("ua0")
    assert ua0.ip == "10.2.0.2" and ua0.gateway == "10.2.0.1"
    assert ua0.decoy_port == 21 and ua0.vulnerable_ports == (22,)
    assert RangePlan.from_json(plan.to_json()) == plan


def test_the_2000_host_scenario_fits_its_bridges_and_interface_names() -> None:
    # (A subnet a bridge cannot hold is the scenario's error: test_scenario.py.)
    plan = make_plan(load_scenario("xlarge"), "a1b2c3", "/tmp/x")
    assert len(plan.hosts) == 2000 and len(plan.subnets) == 8
    assert all(len(s.hosts) + 1 <= BRIDGE_MAX_PORTS for s in plan.subnets)
    names = [h.veth for h in plan.hosts] + [s.router_veth for s in plan.subnets]
    assert len(set(names)) == len(names) and all(len(n) <= IFNAME_MAX for n in names)
    assert len({mac_for(h.ip) for h in plan.hosts}) == 2000


def test_router_rules_follow_flows() -> None:
    rules = nft_ruleset(make_plan(load_scenario("small"), "a1b2c3", "/tmp/x"))
    assert "policy drop" in rules
    assert "ip saddr 10.1.0.0/24 ip daddr 10.1.1.0/24 accept" in rules  # user -> dmz
    assert "ip saddr 10.1.0.0/24 ip daddr 10.1.3.0/24 accept" not in rules  # user -> operational
    # Blocks come before established traffic, so a block also cuts live sessions into the
    # subnet; only traffic into it is refused (the game's Block), not its own way out.
    assert rules.index("ip daddr @blocked ct direction original reject") < rules.index(
        "established")
    assert "saddr @blocked" not in rules


def test_run_ids_are_checked() -> None:
    assert check_run_id("0a1b2c") == "0a1b2c"
    for bad in ("", "xyz", "0a1b2c3", "../etc"):
        with pytest.raises(CyberdialError):
            check_run_id(bad)


def test_not_root_is_one_line_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from cyberdial.cli import main
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError, match="sudo"):
        Range(load_scenario("tiny")).up()
    assert main(["range", "down", "a1b2c3"]) == 2


# ------------------------------------------------------------------ helpers


@dataclass
class Footprint:
    """What a run may leave on the machine, taken before it and checked after it."""

    links: set[str] = field(default_factory=set)
    tables: str = ""
    inodes: set[int] = field(default_factory=set)
    processes: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def take(cls) -> Footprint:
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                check=False).stdout
        inodes = {i for pid in all_pids() for i in [netns_inode(pid)] if i is not None}
        processes = set()
        for pid in all_pids():
            start = ProcessRecord.of(pid, "").start
            processes.add((pid, start))
        return cls(existing_links(), tables, inodes, processes)


@dataclass
class Records:
    """A run's own records, read while it is up (the run directory goes with it)."""

    run_id: str
    run_dir: Path
    processes: list[ProcessRecord]
    inodes: set[int]


def records_of(run_id: str) -> Records:
    state = RunState.load(run_id)
    router = [netns_inode(r.pid) for r in state.shells if r.role == "router"]
    return Records(run_id, Path(state.run_dir),
                   state.shells + state.programs + recorded_pids(state.run_dir),
                   set(state.netns.values()) | {i for i in router if i is not None})


def assert_nothing_left(before: Footprint, records: Records) -> None:
    after = Footprint.take()
    new_links = sorted(after.links - before.links)
    assert not [n for n in new_links if records.run_id in n], new_links
    assert not [n for n in existing_links() if n.startswith(f"c{records.run_id}")]
    assert records.run_id not in after.tables  # root tables; the router's died with it
    assert not (records.inodes & after.inodes), "a namespace of the run still exists"
    alive = [r for r in records.processes if r.alive()]
    assert not alive, f"processes of the run still alive: {alive}"
    new = [pid for pid, start in after.processes - before.processes
           if records.run_id in cmdline(pid) or str(records.run_dir) in cmdline(pid)]
    assert not new, f"new processes mentioning the run: {new}"
    assert not records.run_dir.exists()


@pytest.fixture
def footprint() -> Footprint:
    return Footprint.take()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_for_alert(emulated: Range, match: Callable[[Alert], bool], timeout_s: float,
                   what: str) -> list[Alert]:
    """Steps the range (its programs move only on its step clock) until an alert matches."""
    seen: list[Alert] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        emulated.wait_step(pace=False)
        seen += emulated.alerts(timeout_s=0.2)
        if any(match(alert) for alert in seen):
            return seen
    raise AssertionError(f"no {what} within {timeout_s} s; got"
                         f" {[(a.host, a.kind.value) for a in seen]}")


def first(alerts: list[Alert], host: str, kind: AlertKind) -> float:
    times = [a.observed_at for a in alerts if a.host == host and a.kind == kind]
    assert times, f"no {kind.value} alert on {host}; got {[(a.host, a.kind.value) for a in alerts]}"
    return min(times)


def guests(plan: RangePlan, host: str) -> list[int]:
    shell = plan.host_pids[host]
    inode = netns_inode(shell)
    assert inode is not None
    return [p for p in processes_in([inode])[inode] if p != shell]


def exploit(plan: RangePlan, source: str, target: str) -> int:
    """A real exploit request from `source` to `target`'s vulnerable service; the implant PID."""
    service = next(s for s in plan.host(target).services if s.vulnerable)
    with in_netns(plan.host_pids[source]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(10)
        sock.connect((plan.host(target).ip, service.port))
        sock.sendall(exploit_request(service.protocol, EXPLOIT_OFFSET))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return int(reply.split(b"OK implant ", 1)[1].split()[0])


def c2(plan: RangePlan, host: str, line: str) -> str:
    with in_netns(plan.host_pids[host]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", IMPLANT_PORT))
        sock.sendall(line.encode() + b"\n")
        return sock.recv(1024).decode()


def can_connect(plan: RangePlan, source: str, ip: str, port: int, timeout_s: float = 1.0) -> bool:
    with in_netns(plan.host_pids[source]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((ip, port))
        except OSError:
            return False
        return True


# ------------------------------------------------------------------ root tests

root = pytest.mark.root
mininet = pytest.mark.mininet


@root
@mininet
@pytest.mark.timeout(60)
def test_links_wait_for_every_holder_to_have_made_its_namespace() -> None:
    """A holder is a PID before it has its namespace (a link sent then lands in ours):
    bring-up waits for each; one that stays in ours or exits is named, not waited on."""
    holders = [subprocess.Popen(["mnexec", "-dn", "sh", "-c", "read _"],
                                stdin=subprocess.PIPE) for _ in range(20)]
    stays = subprocess.Popen(["sleep", "30"])
    exits = subprocess.Popen(["true"])
    try:
        assert wait_for_own_namespaces([p.pid for p in holders], timeout=30) == []
        own = netns_inode(os.getpid())
        assert all(netns_inode(p.pid) not in (None, own) for p in holders)
        exits.wait(timeout=10)  # exited and reaped: no namespace to read
        started = time.monotonic()
        late = wait_for_own_namespaces([holders[0].pid, stays.pid, exits.pid], timeout=0.3)
        assert sorted(late) == sorted([stays.pid, exits.pid])
        assert time.monotonic() - started < 10
    finally:
        for process in [*holders, stays]:
            process.kill()
            process.wait(timeout=10)
            if process.stdin is not None:
                process.stdin.close()


@root
@mininet
@pytest.mark.timeout(120)
def test_tiny_kill_chain_reaches_privileged_with_alerts_in_order(
    footprint: Footprint, tmp_path: Path
) -> None:
    emulated = Range(fast("tiny"), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        alerts: list[Alert] = []
        scenario = emulated.scenario
        truth = None
        for _ in range(60):
            emulated.wait_step()
            alerts += emulated.alerts()
            assert emulated.referee is not None
            truth = emulated.referee.measure()
            if truth.level(scenario, "opserver0") == Compromise.PRIVILEGED:
                break
        assert truth is not None
        assert truth.level(scenario, "opserver0") == Compromise.PRIVILEGED, truth.compromise
        assert truth.reward_terms(GameModel(scenario))["privileged"] >= 10.0
        time.sleep(1.0)  # the marker's file_change is seen on the sensor's next watch
        alerts += emulated.alerts(timeout_s=0.5)
        scan = first(alerts, "opserver0", AlertKind.SCAN)
        attack = first(alerts, "opserver0", AlertKind.EXPLOIT)
        implant = first(alerts, "opserver0", AlertKind.NEW_PROCESS)
        marker = first(alerts, "opserver0", AlertKind.FILE_CHANGE)
        assert scan < attack < implant <= marker
        assert first(alerts, "user0", AlertKind.NEW_PROCESS) < scan  # red's entry implant
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(150)
def test_blue_actions_change_the_real_hosts(footprint: Footprint, tmp_path: Path) -> None:
    emulated = Range(fast("tiny"), programs=("services", "sensor", "actuator"),
                     logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        plan = emulated.plan

        def run(action: str, host: str | None = None, subnet: str | None = None
                ) -> CommandResult:
            result = emulated.execute(Command(command_id=f"{action}-{host or subnet}-{time.time()}",
                                              action=action, host=host, subnet=subnet))
            assert result.ok, result
            return result

        # Analyse finds the implant a real exploit started, then its privileged marker.
        pid = exploit(plan, "user0", "ophost0")
        assert pid in guests(plan, "ophost0")
        result = run("analyse", host="ophost0")
        assert result.compromise == "user" and result.implants == (pid,)
        assert c2(plan, "ophost0", "ESCALATE ok").startswith("OK privileged")
        assert run("analyse", host="ophost0").compromise == "privileged"
        # Remove kills user-level implants only: the privileged one survives it.
        run("remove", host="ophost0")
        assert pid in guests(plan, "ophost0")
        user_pid = exploit(plan, "user0", "user1")
        run("remove", host="user1")
        wait_for(lambda: not guests(plan, "user1"), 5, "no process left in user1")
        assert user_pid not in all_pids() or not ProcessRecord.of(user_pid, "").alive()
        # Restore: every process gone, files golden, services listening again.
        plan.data_file("ophost0", "ssh").write_text("tampered\n")
        run("restore", host="ophost0")
        assert not guests(plan, "ophost0")
        assert plan.data_file("ophost0", "ssh").read_text() == (
            plan.golden_dir("ophost0") / "srv" / "ssh.dat").read_text()
        assert not plan.privileged_marker("ophost0").exists()
        wait_for(lambda: 22 in listening_ports(plan.host_pids["ophost0"]), 5, "ssh back")
        # Its link comes back after the scenario's downtime, in steps of the range's clock.
        for _ in range(emulated.scenario.blue.restore_downtime):
            emulated.wait_step(pace=False)
        wait_for(lambda: can_connect(plan, "defender", plan.host("ophost0").ip, 22), 5,
                 "ophost0 reachable after its downtime")
        assert emulated.referee is not None
        truth = emulated.referee.measure()
        assert truth.level(emulated.scenario, "ophost0") == Compromise.CLEAN
        # Block stops traffic from outside into a subnet (docs/game.md), as the simulator:
        # a real connection into the blocked subnet no longer arrives, and a live session
        # that entered it is cut; the subnet's own connections out go on. Unblock.
        web = plan.host("opserver0")
        user1 = plan.host("user1")
        assert can_connect(plan, "user0", web.ip, 80)
        with in_netns(plan.host_pids["user0"]):
            live = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with live:
            live.settimeout(2.0)
            live.connect((web.ip, 80))  # a session into operational, open before the block
            run("block", subnet="operational")
            assert emulated.referee.measure().blocked_names(emulated.scenario) == ["operational"]
            emulated.alerts()
            assert not can_connect(plan, "user0", web.ip, 80)
            with in_netns(plan.host_pids["user0"]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:  # an exploit attempt: it must not reach opserver0's sensor either
                sock.settimeout(1.0)
                with pytest.raises(OSError):
                    sock.connect((web.ip, 80))
            with pytest.raises(OSError):  # the live session is refused from now on
                live.sendall(b"GET / HTTP/1.0\r\n\r\n")
                live.recv(1)
        time.sleep(0.5)
        assert not [a for a in emulated.alerts() if a.host == "opserver0"]
        # Operational's own connections out still work while it is blocked.
        assert can_connect(plan, "ophost0", user1.ip, 22)
        run("unblock", subnet="operational")
        assert can_connect(plan, "user0", web.ip, 80)
        run("block", subnet="user")
        assert emulated.referee.measure().blocked_names(emulated.scenario) == ["user"]
        assert not can_connect(plan, "ophost0", user1.ip, 22)
        assert can_connect(plan, "user0", web.ip, 80)  # out of the blocked subnet: allowed
        run("unblock", subnet="user")
        assert can_connect(plan, "ophost0", user1.ip, 22)
        assert emulated.referee.measure().blocked_names(emulated.scenario) == []
        # Decoy: a listener in the host; contact with it raises decoy_touched.
        run("decoy", host="defender")
        decoy = plan.host("defender").decoy_port
        assert decoy in listening_ports(plan.host_pids["defender"])
        time.sleep(0.5)  # the sensor learns about decoys on its next watch
        assert can_connect(plan, "ophost0", plan.host("defender").ip, decoy)
        wait_for_alert(emulated, lambda a: a.kind == AlertKind.DECOY_TOUCHED
                       and a.host == "defender", 5, "decoy_touched on defender")
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(120)
def test_nmap_from_a_red_host_raises_a_scan_alert(footprint: Footprint, tmp_path: Path) -> None:
    emulated = Range(fast("tiny"), programs=("services", "sensor", "actuator"),
                     logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        plan = emulated.plan
        target = plan.host("opserver0")
        out = emulated.run_in("user1", ["nmap", "-sS", "-Pn", "-n", "-T4", "-p", "1-200",
                                        target.ip])
        assert out.returncode == 0, out.stderr
        assert "80/tcp" in out.stdout and "open" in out.stdout
        wait_for_alert(emulated, lambda a: a.kind == AlertKind.SCAN and a.host == "opserver0"
                       and a.source == plan.host("user1").ip, 10, "a scan alert from user1")
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(120)
def test_green_work_fails_for_real_while_its_server_is_cut_off(
    footprint: Footprint, tmp_path: Path
) -> None:
    scenario = fast("tiny")
    busy = scenario.model_copy(update={"green": scenario.green.model_copy(
        update={"work_rate": 1.0})})
    emulated = Range(busy, programs=("services", "sensor", "actuator", "green"), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        assert emulated.referee is not None
        for _ in range(3):
            emulated.wait_step()
        before = emulated.referee.measure()
        assert before.green_successes > 0 and before.green_failures == 0, before
        result = emulated.execute(Command(command_id="b1", action="block", subnet="operational"))
        assert result.ok, result
        for _ in range(4):
            emulated.wait_step()
        cut = emulated.referee.measure()
        assert cut.green_failures > 0, cut
        assert cut.reward_terms(GameModel(emulated.scenario))["green"] == pytest.approx(
            cut.green_failures * emulated.scenario.reward.green_failure)
        assert emulated.execute(Command(command_id="u1", action="unblock",
                                        subnet="operational")).ok
        for _ in range(3):
            emulated.wait_step()
        emulated.referee.measure()
        for _ in range(2):
            emulated.wait_step()
        after = emulated.referee.measure()
        assert after.green_successes > 0 and after.green_failures == 0, after
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(120)
def test_green_false_positives_raise_real_alerts(footprint: Footprint, tmp_path: Path) -> None:
    tiny = fast("tiny")
    noisy = tiny.model_copy(update={"green": tiny.green.model_copy(
        update={"work_rate": 0.0, "fp_scan": 1.0, "fp_exploit": 1.0})})
    emulated = Range(noisy, programs=("services", "sensor", "actuator", "green"),
                     logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        users = {emulated.plan.host(h).ip for h in ("user0", "user1", "user2")}
        seen = wait_for_alert(emulated, lambda a: a.kind == AlertKind.EXPLOIT
                              and a.host == "opserver0" and "failed login" in a.evidence, 10,
                              "a failed-login alert on opserver0")
        seen += wait_for_alert(emulated, lambda a: a.kind == AlertKind.SCAN
                               and a.source in users and a.host.startswith("user"), 10,
                               "an admin's scan alert")
        # No red runs: every alert here is green noise, and no host is compromised.
        assert emulated.referee is not None
        truth = emulated.referee.measure()
        assert not truth.compromise.any()
        assert truth.green_successes == truth.green_failures == 0  # mistypes are noise
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


CRASHING_CONTROLLER = """
import sys, time
from cyberdial.range.emulation.emulator import Range
from cyberdial.range.scenario import load_scenario
scenario = load_scenario("tiny").model_copy(update={"step_period": 0.5})
emulated = Range(scenario)
emulated.up()
print(emulated.run_id, flush=True)
for _ in range(1200):  # its own hub steps red on (the test kills us long before)
    emulated.wait_step()
"""


@root
@mininet
@pytest.mark.timeout(120)
def test_range_down_cleans_up_after_a_killed_controller(footprint: Footprint) -> None:
    controller = subprocess.Popen([sys.executable, "-c", CRASHING_CONTROLLER],
                                  stdout=subprocess.PIPE, text=True, cwd=REPO)
    run_id = ""
    records = None
    try:
        assert controller.stdout is not None
        run_id = controller.stdout.readline().strip()
        check_run_id(run_id)
        state = RunState.load(run_id)
        red_log = Path(state.run_dir) / "red" / "red.jsonl"
        # Wait for red's implant, so the crash leaves a process started inside a host.
        wait_for(lambda: red_log.exists() and '"enter"' in red_log.read_text(), 20, "red's entry")
        records = records_of(run_id)
        assert any(r.role == "implant" and r.alive() for r in records.processes)
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=10)
        status = subprocess.run([*CLI, "range", "status"], capture_output=True, text=True,
                                timeout=30, cwd=REPO)
        assert run_id in status.stdout
        down = subprocess.run([*CLI, "range", "down", run_id], capture_output=True, text=True,
                              timeout=90, cwd=REPO)
        assert down.returncode == 0, down.stderr
        assert "is down" in down.stdout
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(timeout=10)
        if controller.stdout is not None:
            controller.stdout.close()
        if run_id and (RUNS_ROOT / run_id).exists():
            subprocess.run([*CLI, "range", "down", run_id], capture_output=True, timeout=90,
                           cwd=REPO, check=False)
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(120)
def test_cli_up_shell_status_down(footprint: Footprint) -> None:
    up = subprocess.run([*CLI, "range", "up", "tiny"], capture_output=True, text=True,
                        timeout=90, cwd=REPO)
    assert up.returncode == 0, up.stderr
    run_id = next(line.split()[-1] for line in up.stdout.splitlines()
                  if line.startswith("run id:"))
    records = None
    try:
        records = records_of(run_id)
        assert "opserver0" in up.stdout and "logs:" in up.stdout
        ping = subprocess.run([*CLI, "range", "shell", run_id, "user1", "--", "ping", "-c", "1",
                               "-W", "2", "10.0.2.2"], capture_output=True, text=True,
                              timeout=30, cwd=REPO)
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout + ping.stderr
        status = subprocess.run([*CLI, "range", "status"], capture_output=True, text=True,
                                timeout=30, cwd=REPO)
        assert run_id in status.stdout and "alive" in status.stdout
        missing = subprocess.run([*CLI, "range", "shell", run_id, "nohost"], capture_output=True,
                                 text=True, timeout=30, cwd=REPO)
        assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    finally:
        down = subprocess.run([*CLI, "range", "down", run_id], capture_output=True, text=True,
                              timeout=90, cwd=REPO)
    assert down.returncode == 0, down.stderr
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.timeout(120)
def test_hosts_are_built_in_batches_as_the_plan_says(footprint: Footprint,
                                                    tmp_path: Path) -> None:
    """The batched build: each host's eth0 has the MAC and address the range chose, its
    gateway and the router's hosts are permanent neighbours (no ARP to reach them), the
    root namespace's ends have no IPv6 address, and one launcher forked every program."""
    emulated = Range(load_scenario("tiny"), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        plan = emulated.plan
        for host in plan.hosts:
            link = emulated.run_in(host.name, ["ip", "-o", "link", "show", "eth0"]).stdout
            assert mac_for(host.ip) in link
            addr = emulated.run_in(host.name, ["ip", "-o", "-4", "addr", "show", "eth0"]).stdout
            assert f"{host.ip}/{host.prefix}" in addr
            route = emulated.run_in(host.name, ["ip", "route", "show", "default"]).stdout
            assert f"via {host.gateway} dev eth0" in route
            neigh = emulated.run_in(host.name, ["ip", "neigh", "show", host.gateway]).stdout
            assert mac_for(host.gateway, 1) in neigh and "PERMANENT" in neigh
        router = subprocess.run(["mnexec", "-a", str(plan.router_pid), "ip", "neigh", "show",
                                 "nud", "permanent"], capture_output=True, text=True,
                                check=True).stdout
        assert all(f"{h.ip} dev" in router and mac_for(h.ip) in router for h in plan.hosts)
        root_ends = [h.veth for h in plan.hosts] + [s.bridge for s in plan.subnets]
        for name in root_ends:
            inet6 = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", name],
                                   capture_output=True, text=True, check=True).stdout
            assert inet6 == "", name
        state = emulated.state
        assert state is not None
        launcher = next(p for p in state.programs if p.role == "launcher")
        programs = [p for p in state.programs if p.role != "launcher"]
        assert len(programs) == len(emulated.expected_peers()) + len(plan.subnets)  # + services
        for program in programs:
            stat = Path(f"/proc/{program.pid}/stat").read_text()
            assert int(stat[stat.rfind(")") + 2:].split()[1]) == launcher.pid
            assert Path(f"/proc/{program.pid}/comm").read_text().strip() == program.name[:15]
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)


@root
@mininet
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_small_comes_up_and_down(footprint: Footprint, tmp_path: Path) -> None:
    emulated = Range(load_scenario("small"), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        assert len(emulated.plan.host_pids) == len(load_scenario("small").all_hosts)
        assert emulated.referee is not None
        truth = emulated.referee.measure()
        assert (truth.compromise <= Compromise.USER).all()
        print(json.dumps({k: round(v, 2) for k, v in emulated.timings.items()}))
    finally:
        emulated.down()
    print(f"small down: {emulated.timings['down_s']:.2f} s")
    assert records is not None
    assert_nothing_left(footprint, records)

