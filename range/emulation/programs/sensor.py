"""One subnet's sensor: sniffs the subnet's bridge and watches its hosts' processes and files.

A raw AF_PACKET socket on the bridge (promiscuous, from the root namespace) sees
every frame of the subnet, including what crosses the router. Rules: SYNs to many
ports of one host -> scan; a NOP sled with a shell path -> exploit; a service
answering LOGIN FAILED -> exploit (green's mistyped logins: false positives);
contact with a deployed decoy -> decoy_touched; ping sweeps -> scan only when the
scenario's sensors detect sweeps. Every `WATCH_S` it also lists the processes in
each host's namespace (new_process), the host's files (file_change) and the TCP
ports listening there (service_down). Alerts go to the hub via `SensorLink`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections import defaultdict

import zmq

from cyberdial.range.emulation.netns import (
    all_pids,
    cmdline,
    listening_ports,
    netns_inode,
)
from cyberdial.range.emulation.programs.common import Program
from cyberdial.range.emulation.programs.payloads import LOGIN_FAILED, is_exploit
from cyberdial.range.hub import SensorLink
from cyberdial.range.model import AlertKind
from cyberdial.range.wire import Alert, StepDone, StepTick

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
WATCH_S = 0.3
# Between two looks at the hosts, at least this many times what the last look took.
WATCH_IDLE_FACTOR = 9.0
SCAN_PORTS_THRESHOLD = 5
SWEEP_HOSTS_THRESHOLD = 4
PACKETS_PER_ROUND = 4096
MAX_STEP_SYNS = 65536


class Sensor:
    def __init__(self, program: Program) -> None:
        self.program = program
        plan = self.plan = program.plan
        assert program.subnet is not None
        self.subnet = plan.subnet(program.subnet)
        self.hosts = plan.hosts_in(program.subnet)
        self.by_ip = {h.ip: h for h in self.hosts}
        scenario = json.loads((plan.root / "scenario.json").read_text(encoding="utf-8"))
        self.detect_sweeps = float(scenario["sensors"]["sweep_detect"]) > 0
        # Scans and sweeps are counted within a step of the bridge's clock (and, so that
        # memory stays bounded while nobody steps the range, within `window` seconds).
        self.window = max(2.0 * plan.step_period, 2.0)
        self.pending: list[Alert] = []
        self.syn_ports: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        self.echo_hosts: dict[str, dict[str, float]] = defaultdict(dict)
        # (host, kind, source) -> (steps closed then, time): one alert per step and key.
        self.last_alert: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.closed = 0
        # This step's connection attempts (dst ip, port, src): checked against the decoys
        # again when the step closes (a decoy deployed this step is learnt by `watch`).
        self.step_syns: set[tuple[str, int, str]] = set()
        # Host state baselines for the watchers.
        self.inode_host = {netns_inode(plan.host_pids[h.name]): h.name for h in self.hosts}
        # A host's own processes: its holder, and a container image's daemons.
        self.baseline_pids = {pid for h in self.hosts for pid in plan.baseline(h.name)}
        self.seen_pids: set[int] = set()
        self.files = {h.name: self.file_signature(h.name) for h in self.hosts}
        self.down: set[tuple[str, int]] = set()
        self.decoys: dict[str, int] = {}
        self._log_path = plan.root / "alerts" / f"{program.name}.jsonl"

    # ----------------------------------------------------------- alerts

    def alert(self, host: str, kind: AlertKind, evidence: str, source: str | None = None,
              dedupe_s: float | None = None) -> None:
        key = (host, kind.value, source or "")
        now = time.time()
        hold = self.window if dedupe_s is None else dedupe_s
        closed, at = self.last_alert.get(key, (-1, 0.0))
        if closed == self.closed and now - at < hold:
            return
        self.last_alert[key] = (self.closed, now)
        self.pending.append(Alert(host=host, kind=kind, observed_at=now, evidence=evidence[:500],
                                  source=source))

    def flush(self, link: SensorLink) -> None:
        if not self.pending:
            return
        link.alerts(self.pending)
        with open(self._log_path, "a", encoding="utf-8") as log:
            for alert in self.pending:
                log.write(alert.model_dump_json() + "\n")
        self.pending = []

    # --------------------------------------------------------- packets

    def open_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((self.subnet.bridge, 0))
        index = socket.if_nametoindex(self.subnet.bridge)
        # Promiscuous: the bridge then hands every frame it forwards up to us too.
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                        struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setblocking(False)
        return sock

    def packet(self, frame: bytes) -> None:
        if len(frame) < 34:
            return
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        offset = 14
        if ethertype == 0x8100:
            ethertype = struct.unpack_from("!H", frame, 16)[0]
            offset = 18
        if ethertype != 0x0800:
            return
        ip = frame[offset:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto = ip[9]
        src = socket.inet_ntoa(ip[12:16])
        dst = socket.inet_ntoa(ip[16:20])
        segment = ip[ihl:total]
        if proto == 6 and len(segment) >= 20:
            self.tcp(src, dst, segment)
        elif proto == 1 and len(segment) >= 1 and segment[0] == 8:
            self.echo(src, dst)

    def tcp(self, src: str, dst: str, segment: bytes) -> None:
        sport, dport = struct.unpack_from("!HH", segment, 0)
        flags = segment[13]
        payload = segment[(segment[12] >> 4) * 4 :]
        target = self.by_ip.get(dst)
        if target is not None:
            if flags & 0x02 and not flags & 0x10:  # SYN without ACK: a connection attempt
                if len(self.step_syns) < MAX_STEP_SYNS:
                    self.step_syns.add((dst, dport, src))
                if self.decoys.get(dst) == dport:
                    self.alert(target.name, AlertKind.DECOY_TOUCHED,
                               f"connection to decoy port {dport} from {src}", src, dedupe_s=1.0)
                self.syn(src, target.name, dst, dport)
            if payload and is_exploit(payload):
                self.alert(target.name, AlertKind.EXPLOIT,
                           f"exploit signature (NOP sled, /bin/sh) to port {dport} from {src}",
                           src, dedupe_s=1.0)
        server = self.by_ip.get(src)
        if server is not None and payload and LOGIN_FAILED in payload:
            self.alert(server.name, AlertKind.EXPLOIT, f"failed login on port {sport} by {dst}",
                       dst, dedupe_s=1.0)

    def syn(self, src: str, host: str, dst: str, port: int) -> None:
        now = time.time()
        ports = self.syn_ports[(src, dst)]
        ports[port] = now
        for old in [p for p, seen in ports.items() if now - seen > self.window]:
            del ports[old]
        if len(ports) >= SCAN_PORTS_THRESHOLD:
            self.alert(host, AlertKind.SCAN, f"SYN to {len(ports)} ports {sorted(ports)[:12]}"
                       f" from {src}", src)

    def echo(self, src: str, dst: str) -> None:
        target = self.by_ip.get(dst)
        if target is None or not self.detect_sweeps:
            return
        now = time.time()
        seen = self.echo_hosts[src]
        seen[dst] = now
        for old in [d for d, at in seen.items() if now - at > self.window]:
            del seen[old]
        if len(seen) >= SWEEP_HOSTS_THRESHOLD:
            self.alert(target.name, AlertKind.SCAN, f"ping sweep from {src} ({len(seen)} hosts)",
                       src)

    # -------------------------------------------------------- watchers

    def file_signature(self, host: str) -> dict[str, tuple[int, int]]:
        signature = {}
        root = self.plan.host_dir(host)
        for sub in ("srv", "run"):
            try:
                entries = list((root / sub).iterdir())
            except OSError:
                continue
            for entry in entries:
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                signature[f"{sub}/{entry.name}"] = (stat.st_mtime_ns, stat.st_size)
        return signature

    def watch(self) -> None:
        # Processes: anything in a host's namespace besides its shell is new.
        current: set[int] = set()
        for pid in all_pids():
            inode = netns_inode(pid)
            host = self.inode_host.get(inode) if inode is not None else None
            if host is None or pid in self.baseline_pids:
                continue
            current.add(pid)
            if pid not in self.seen_pids:
                self.alert(host, AlertKind.NEW_PROCESS, f"pid {pid}: {cmdline(pid)[:200]}",
                           dedupe_s=0.0)
        self.seen_pids = current
        for host in self.hosts:
            signature = self.file_signature(host.name)
            before = self.files[host.name]
            changed = sorted(k for k in set(signature) | set(before)
                             if signature.get(k) != before.get(k))
            if changed:
                self.alert(host.name, AlertKind.FILE_CHANGE, "changed: " + ", ".join(changed),
                           dedupe_s=0.0)
            self.files[host.name] = signature
            if host.services:
                ports = listening_ports(self.plan.host_pids[host.name])
                for service in host.services:
                    key = (host.name, service.port)
                    if service.port not in ports and key not in self.down:
                        self.down.add(key)
                        self.alert(host.name, AlertKind.SERVICE_DOWN,
                                   f"{service.name} not listening on port {service.port}",
                                   dedupe_s=0.0)
                    elif service.port in ports:
                        self.down.discard(key)
        # One listing of the run's decoy registry, not one failed open per host.
        self.decoys = {}
        names = {h.name: h for h in self.hosts}
        for entry in os.listdir(self.plan.root / "decoys"):
            host = names.get(entry)
            if host is None:
                continue
            try:
                self.decoys[host.ip] = int(self.plan.decoy_file(entry).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue

    # ------------------------------------------------------------- run

    def read_packets(self, sock: socket.socket, rounds: int = 1) -> None:
        for _ in range(rounds * PACKETS_PER_ROUND):
            try:
                frame = sock.recv(65535)
            except BlockingIOError:
                return
            self.packet(frame)

    def safe_watch(self) -> None:
        try:
            self.watch()
        except OSError as error:
            # A host's namespace vanished (its controller died, or a teardown
            # began): nothing left to watch there; `running()` sees why.
            if not self.program.controller_gone():
                self.program.log.warning("cannot watch the hosts (%s): skipping a round", error)

    def close_step(self, sock: socket.socket, link: SensorLink, tick: StepTick) -> None:
        """Everything up to now is this step's: every frame the kernel queued for us (red
        and green finished their moves, so their frames crossed the bridge already), one
        look at the hosts; then the alerts, then `StepDone` on the same socket."""
        self.read_packets(sock, rounds=64)
        self.safe_watch()
        for dst, port, src in sorted(self.step_syns):
            host = self.by_ip.get(dst)
            if host is not None and self.decoys.get(dst) == port:
                self.alert(host.name, AlertKind.DECOY_TOUCHED,
                           f"connection to decoy port {port} from {src}", src, dedupe_s=1.0)
        self.step_syns.clear()
        self.flush(link)
        link.send("step_done", StepDone(tick=tick.tick), step=max(tick.step, 0))
        # A new step: scans, sweeps and repeats are counted afresh.
        self.closed += 1
        self.syn_ports.clear()
        self.echo_hosts.clear()

    def run(self) -> None:
        (self.plan.root / "alerts").mkdir(exist_ok=True)
        sock = self.open_socket()
        sender = f"sensor-{self.subnet.name}"
        with SensorLink(self.plan.alert_endpoint, self.plan.run_id, sender,
                        key=self.program.key, hosts=[h.name for h in self.hosts],
                        subnet=self.subnet.name) as link, self.program.follower() as clock:
            poller = zmq.Poller()
            poller.register(sock.fileno(), zmq.POLLIN)
            poller.register(clock.socket, zmq.POLLIN)
            self.program.ready()
            next_watch = 0.0
            done = -1
            while self.program.running():
                events = dict(poller.poll(50))
                if events.get(sock.fileno()):
                    self.read_packets(sock)
                if events.get(clock.socket):
                    tick = clock.poll(0.0)
                    if tick is not None and tick.tick > done:
                        self.close_step(sock, link, tick)
                        done = tick.tick
                        next_watch = time.monotonic() + WATCH_S
                    elif tick is not None:
                        link.send("step_done", StepDone(tick=done), step=max(tick.step, 0))
                if time.monotonic() >= next_watch:
                    began = time.monotonic()
                    self.safe_watch()
                    # At most a tenth of the sensor's time on looks between closes: at 250
                    # hosts a look is ~0.1 s, and eight sensors looking every 0.3 s kept two
                    # cores busy, starving red and green (the close's look is always made).
                    took = time.monotonic() - began
                    next_watch = time.monotonic() + max(WATCH_S, WATCH_IDLE_FACTOR * took)
                self.flush(link)
                link.maybe_heartbeat()
        sock.close()


def main() -> int:
    program = Program("sensor", "sense one subnet: sniff its bridge, watch its hosts",
                      keyed=True)
    Sensor(program).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

