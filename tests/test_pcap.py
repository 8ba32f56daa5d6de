"""Packet captures of emulated drills: red's packets at the steps the recording puts them.

The root test plays one episode of tiny with `--pcap`, opens the pcapng files
with scapy and finds, for every scan and exploit the recording's ground truth
names, red's SYNs and its exploit request to that host inside that step's
window (or the one before: red's log names an action when it finishes, and a
scan waits for its answers across the boundary), and green users' requests to
their servers beside them. The other tests need no root.
"""

from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cyberdial.agents.recording import load_recording
from cyberdial.range.emulation.capture import CaptureLimits
from cyberdial.range.emulation.plan import make_plan
from cyberdial.range.errors import HostCommandError
from cyberdial.range.scenario import load_scenario

EXPLOIT_SIGNATURE = b"/bin/sh;offset="
SCAN_PORTS_AT_LEAST = 5


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cyberdial", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_capture_limits_are_a_bounded_ring() -> None:
    limits = CaptureLimits.per_subnet(100)
    assert (limits.file_mb, limits.files) == (20, 5)
    with pytest.raises(HostCommandError, match="--pcap-mb 1"):
        CaptureLimits.per_subnet(1)
    with pytest.raises(ValueError):
        CaptureLimits(file_mb=0, files=5)


def test_pcap_needs_the_emulated_range(tmp_path: Path) -> None:
    result = _cli("drill", "tiny", "--range", "sim", "--pcap", "--out", str(tmp_path / "d"),
                  timeout=120)
    assert result.returncode == 2
    assert "--pcap captures real packets" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_red_and_green_packets_sit_at_their_recorded_steps(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapNgReader

    out = tmp_path / "drill"
    result = _cli("drill", "tiny", "--policy", "react", "--pcap", "--out", str(out),
                  "--no-live", timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    recording = load_recording(out)
    steps = recording.steps
    assert all(s.started is not None for s in steps)
    starts = [float(s.started or 0.0) for s in steps]
    ends = [s.wall_time for s in steps]
    assert all(a < b for a, b in zip(starts, ends, strict=True))

    scenario = load_scenario("tiny")
    ip_of = {h.name: h.ip for h in make_plan(scenario, "000000", tmp_path / "plan").hosts}
    host_of = {ip: name for name, ip in ip_of.items()}
    servers = {ip_of[name] for name in scenario.green.servers}

    def step_of(time: float) -> int | None:
        index = bisect.bisect_right(starts, time) - 1
        return index if 0 <= index and time <= ends[index] + 0.5 else None

    files = sorted((out / "pcap").glob("*.pcapng"))
    assert {f.name.split("_")[0] for f in files} == {s.name for s in scenario.subnets}
    syn_ports: dict[tuple[int, str], set[int]] = defaultdict(set)
    exploits: dict[int, set[str]] = defaultdict(set)
    green: dict[int, int] = defaultdict(int)
    service_ports = {
        (ip_of[h.name], service.port) for h in scenario.all_hosts for service in h.services
    }
    for file in files:
        with PcapNgReader(str(file)) as packets:
            for packet in packets:
                if IP not in packet or TCP not in packet:
                    continue
                step = step_of(float(packet.time))
                if step is None:
                    continue
                target = packet[IP].dst
                payload = bytes(packet[TCP].payload)
                port = int(packet[TCP].dport)
                if int(packet[TCP].flags) == 0x02:  # a bare SYN: red's scan, or a connect
                    syn_ports[(step, target)].add(port)
                elif EXPLOIT_SIGNATURE in payload:
                    exploits[step].add(host_of.get(target, target))
                elif payload and target in servers and (target, port) in service_ports:
                    green[step] += 1  # a user's request to a service of a green server

    scans_seen = exploits_seen = 0
    for step in steps:
        t = step.step
        for action in step.ground_truth.red_actions:
            kind, _, target = action.partition(" ")
            window = (t - 1, t)  # this step's window, or the one before it
            if kind == "scan":
                ports = set().union(*(syn_ports.get((s, ip_of[target]), set()) for s in window))
                assert len(ports) >= SCAN_PORTS_AT_LEAST, f"step {t}: {action}: SYNs to {ports}"
                scans_seen += 1
            elif kind == "exploit":
                assert any(target in exploits.get(s, set()) for s in window), f"step {t}: {action}"
                exploits_seen += 1
    assert scans_seen >= 1 and exploits_seen >= 1, "red neither scanned nor exploited"
    # Every exploit request on the wire is one the recording names (there or a step later).
    recorded = {(s.step, a.partition(" ")[2]) for s in steps for a in s.ground_truth.red_actions
                if a.startswith("exploit ")}
    for step, targets in exploits.items():
        for target in targets:
            assert (step, target) in recorded or (step + 1, target) in recorded, (step, target)
    # Green's users talk to their servers beside red, in most steps of the episode.
    assert sum(1 for count in green.values() if count) >= len(steps) // 3, dict(green)
    # The captures stopped with the range: no capture process of ours is left.
    mine = str(out / "pcap")
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert mine.encode() not in cmdline, f"capture {pid} still runs"


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_range_up_pcap_captures_until_range_down() -> None:
    from scapy.utils import PcapNgReader

    up = _cli("range", "up", "tiny", "--pcap", "--pcap-mb", "10", timeout=200)
    assert up.returncode == 0, up.stdout + up.stderr
    found = re.search(r"run id: (\w+)", up.stdout)
    assert found, up.stdout
    run_id = found.group(1)
    try:
        captures = re.search(r"packet captures: (\S+)", up.stdout)
        assert captures, up.stdout
        directory = Path(captures.group(1))
        assert run_id in str(directory)
    finally:
        down = _cli("range", "down", run_id, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    scenario = load_scenario("tiny")
    for subnet in scenario.subnets:
        files = sorted(directory.glob(f"{subnet.name}_*.pcapng"))
        assert files, f"no capture of {subnet.name}"
        with PcapNgReader(str(files[0])) as packets:
            assert sum(1 for _ in packets) > 0  # the range's own readiness checks at least
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert str(directory).encode() not in cmdline, f"capture {pid} still runs"
    shutil.rmtree(directory)  # this run's captures only (the path carries its run id)


@pytest.mark.root
@pytest.mark.timeout(120)
def test_the_ring_stays_bounded(tmp_path: Path) -> None:
    """dumpcap on loopback with a ring of 2 files of 1 MB, fed 4 MB of our own datagrams."""
    import socket
    import time
    from types import SimpleNamespace

    from cyberdial.range.emulation.capture import BridgeCapture, capture_files
    from cyberdial.range.emulation.state import ProcessRecord, RunState

    if shutil.which("dumpcap") is None:
        pytest.skip("needs dumpcap (Debian package wireshark-common)")
    state = RunState(run_id="ring00", scenario="ring", run_dir=str(tmp_path),
                     logs_dir=str(tmp_path), created=time.time(),
                     controller=ProcessRecord.of(os.getpid(), "controller"))
    plan = SimpleNamespace(subnets=[SimpleNamespace(name="lo", bridge="lo")])
    capture = BridgeCapture(plan, tmp_path / "pcap", tmp_path,  # type: ignore[arg-type]
                            CaptureLimits(file_mb=1, files=2))
    try:
        capture.start(state)
        assert [p.role for p in state.programs] == ["capture"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            receiver.bind(("127.0.0.1", 0))
            receiver.setblocking(False)
            payload = b"x" * 1400
            for _ in range(3000):  # about 4.2 MB on the wire
                sender.sendto(payload, receiver.getsockname())
                try:
                    receiver.recv(2048)
                except BlockingIOError:
                    pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = [p.name for p in capture_files(tmp_path / "pcap", "lo")]
            if any("_00004_" in n or "_00005_" in n for n in names):
                break
            time.sleep(0.2)
    finally:
        capture.stop()
    files = capture_files(tmp_path / "pcap", "lo")
    assert len(files) <= 2, files  # the oldest files were dropped
    assert any(int(f.name.split("_")[1]) >= 4 for f in files), files  # it did rotate
    assert all(f.stat().st_size <= 1_200_000 for f in files)
    assert not any(p.alive() for p in state.programs)
