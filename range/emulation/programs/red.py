"""Red, for real: the scenario's kill chain with real packets, one process for the whole range.

Each step red checks its footholds (its implants answer on their host's
loopback), then, when idle, picks its next move with `GameModel.red_choose` —
the same rule the simulator uses — over what it has really learnt: hosts that
answered its scapy ping sweep, hosts whose ports its scapy SYN scan saw open,
subnets that stayed silent (believed blocked for a while). Exploits are real
requests to a vulnerable service; escalation and impact are commands to its
implant. Every packet leaves from a foothold's namespace. Actions take the
scenario's red durations in steps. Log: `red/red.jsonl` in the run directory.
"""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cyberdial.range.emulation.netns import in_netns
from cyberdial.range.emulation.plan import IMPLANT_PORT, HostPlan
from cyberdial.range.emulation.programs.common import Program
from cyberdial.range.emulation.programs.payloads import EXPLOIT_OFFSET, exploit_request
from cyberdial.range.emulation.state import record_pid
from cyberdial.range.hub import SensorLink
from cyberdial.range.model import Compromise, GameModel, RedActionKind
from cyberdial.range.scenario import Scenario
from cyberdial.range.wire import StepTick

IMPLANT_MODULE = "cyberdial.range.emulation.programs.implant"
IMPLANT_READY_S = 10.0
C2_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 0.5
# An exploit's whole exchange (a vulnerable service answers at once; a blocked path never).
EXPLOIT_TIMEOUT_S = 2.0
# Scapy warns about every interface it cannot resolve in the root namespace; quiet it.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


def episode_seed(path: Path, default: int) -> int:
    """The seed the controller wrote for this episode (`<time> <seed>`), else `default`."""
    try:
        words = path.read_text(encoding="utf-8").split()
    except OSError:
        return default
    return int(words[1]) if len(words) > 1 and words[1].lstrip("-").isdigit() else default


class Red:
    def __init__(self, program: Program, seed: int) -> None:
        self.program = program
        self.seed = seed
        plan = self.plan = program.plan
        self.scenario = Scenario.model_validate_json(
            (plan.root / "scenario.json").read_text(encoding="utf-8"))
        self.model = GameModel(self.scenario)
        self.children: list[subprocess.Popen[bytes]] = []
        self.episode: int | None = None  # the step clock's episode this red plays
        self.begin_episode(seed)
        red = self.scenario.red
        self.durations = {
            RedActionKind.SWEEP: red.durations.sweep, RedActionKind.SCAN: red.durations.scan,
            RedActionKind.EXPLOIT: red.durations.exploit,
            RedActionKind.ESCALATE: red.durations.escalate,
            RedActionKind.IMPACT: red.durations.impact,
        }
        # How long an unanswered probe is waited for: the range is one machine, so
        # answers take milliseconds; this is only paid on paths that drop (blocked).
        self.timeout = PROBE_TIMEOUT_S

    def begin_episode(self, seed: int) -> None:
        """Red at step 0: no foothold, nothing learnt, its random stream seeded afresh."""
        m = self.model
        self.rng = np.random.default_rng(seed)
        self.compromise = np.zeros(m.n_hosts, dtype=np.int8)
        self.impacted = np.zeros(m.n_hosts, dtype=bool)
        self.discovered = np.zeros(m.n_hosts, dtype=bool)
        self.scanned = np.zeros(m.n_hosts, dtype=bool)
        self.swept = np.zeros(m.n_subnets, dtype=bool)
        self.silent_until = np.zeros(m.n_subnets, dtype=np.int64)  # believed blocked
        self.implants: dict[int, int] = {}  # host index -> implant pid
        self.wait = self.scenario.red.start_delay
        if self.scenario.red.start_jitter:
            # As the simulator: an extra start delay drawn once per episode (run).
            self.wait += int(self.rng.integers(0, self.scenario.red.start_jitter + 1))
        # The action under way and the steps until it takes effect, as in the simulator:
        # chosen at step t, a d-step action acts at step t + d - 1.
        self.timer = 0
        self.pending: tuple[RedActionKind, int] | None = None
        self.step = 0

    # ---------------------------------------------------------- helpers

    def host(self, index: int) -> HostPlan:
        return self.plan.hosts[index]

    def pid_of(self, index: int) -> int:
        return self.plan.host_pids[self.host(index).name]

    def log(self, kind: str, target: str, ok: bool, detail: str = "", source: str = "") -> None:
        self.program.append_jsonl("red", {
            "time": time.time(), "step": self.step, "action": kind, "target": target,
            "source": source, "ok": ok, "detail": detail[:200],
        })
        self.program.log.info("step %d %s %s %s %s", self.step, kind, target,
                              "ok" if ok else "failed", detail[:120])

    def blocked_belief(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        return self.silent_until > self.step

    def source_for(self, subnet: int) -> int | None:
        """A foothold that can send to `subnet`: inside it, else one whose subnet flows to it."""
        footholds = [h for h in self.implants if self.compromise[h] > 0]
        for h in footholds:
            if self.model.host_subnet[h] == subnet:
                return h
        for h in footholds:
            if self.model.flows[self.model.host_subnet[h], subnet]:
                return h
        return None

    def c2(self, index: int, line: str) -> str:
        """One command to the implant on host `index`, over that host's loopback."""
        try:
            with in_netns(self.pid_of(index)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(C2_TIMEOUT_S)
                sock.connect(("127.0.0.1", IMPLANT_PORT))
                sock.sendall(line.encode() + b"\n")
                return sock.recv(1024).decode(errors="replace").strip()
        except OSError:
            return ""

    # ---------------------------------------------------------- footholds

    def refresh(self) -> None:
        for index in list(self.implants):
            reply = self.c2(index, "PING").split()
            if len(reply) == 3 and reply[0] == "PONG":
                level = Compromise.PRIVILEGED if reply[2] == "privileged" else Compromise.USER
                self.compromise[index] = level
            else:
                self.compromise[index] = Compromise.CLEAN
                del self.implants[index]
                self.log("lost", self.host(index).name, True, "implant gone")
        self.children = [c for c in self.children if c.poll() is None]

    def enter(self) -> None:
        """Phishing: the entry host's user runs red's implant."""
        entry = self.model.entry_host
        host = self.host(entry)
        child = subprocess.Popen(
            [*self.plan.exec_prefix(host.name), sys.executable, "-m", IMPLANT_MODULE,
             "--run-dir", str(self.plan.root), "--host", host.name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True,
        )
        record_pid(self.plan.root, "implants-red", child.pid, "implant", host.name)
        self.children.append(child)
        assert child.stdout is not None
        poller = select.poll()
        poller.register(child.stdout, select.POLLIN)
        line = child.stdout.readline() if poller.poll(int(IMPLANT_READY_S * 1000)) else b""
        child.stdout.close()
        if line.startswith(b"ready"):
            self.implants[entry] = child.pid
            self.compromise[entry] = Compromise.USER
            self.log("enter", host.name, True, f"implant {child.pid} (phishing)")
        else:
            self.log("enter", host.name, False, "implant did not start")

    # ------------------------------------------------------------ actions

    def sweep(self, subnet: int) -> None:
        from scapy.layers.inet import ICMP, IP
        from scapy.sendrecv import sndrcv
        from scapy.supersocket import L3RawSocket

        name = self.plan.subnets[subnet].name
        source = self.source_for(subnet)
        if source is None:
            self.log("sweep", name, False, "no foothold reaches it")
            return
        src = self.host(source)
        targets = [h for h in self.plan.hosts_in(name) if h.name != src.name]
        with in_netns(self.pid_of(source)):
            sock = L3RawSocket()
        try:
            answered, _ = sndrcv(sock, IP(src=src.ip, dst=[h.ip for h in targets]) / ICMP(),
                                 timeout=self.timeout, verbose=0, threaded=False)
        finally:
            sock.close()
        # Echo replies only (the router refuses a blocked path with an ICMP error).
        alive = {received[IP].src for _, received in answered
                 if received.haslayer(ICMP) and received[ICMP].type == 0}
        for h in targets:
            if h.ip in alive:
                self.discovered[h.index] = True
        self.swept[subnet] = bool(alive) or self.model.host_subnet[source] == subnet
        if not alive and self.model.host_subnet[source] != subnet:
            self.silent_until[subnet] = self.step + max(self.scenario.red.reentry_delay, 1)
        self.log("sweep", name, bool(alive), f"{len(alive)}/{len(targets)} hosts answered",
                 src.name)

    def scan(self, index: int) -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.sendrecv import sndrcv
        from scapy.supersocket import L3RawSocket

        target = self.host(index)
        subnet = int(self.model.host_subnet[index])
        source = self.source_for(subnet)
        if source is None:
            self.log("scan", target.name, False, "no foothold reaches it")
            return
        src = self.host(source)
        with in_netns(self.pid_of(source)):
            sock = L3RawSocket()
        try:
            probes = IP(src=src.ip, dst=target.ip) / TCP(
                sport=int(self.rng.integers(20000, 60000)), dport=list(self.plan.scan_ports),
                flags="S")
            answered, _ = sndrcv(sock, probes, timeout=self.timeout, verbose=0, threaded=False)
        finally:
            sock.close()
        # Only the target's own answers: the router refuses a blocked path with ICMP.
        replies = [(sent, received) for sent, received in answered
                   if received[IP].src == target.ip and received.haslayer(TCP)]
        open_ports = sorted(
            int(sent[TCP].dport) for sent, received in replies
            if int(received[TCP].flags) & 0x12 == 0x12
        )
        if replies:
            self.scanned[index] = True
        elif subnet != self.model.host_subnet[source]:
            self.silent_until[subnet] = self.step + max(self.scenario.red.reentry_delay, 1)
        self.log("scan", target.name, bool(replies), f"open ports {open_ports}", src.name)

    def exploit(self, index: int) -> None:
        target = self.host(index)
        subnet = int(self.model.host_subnet[index])
        source = self.source_for(subnet)
        ports = [s for s in target.services if s.vulnerable]
        if source is None or not ports:
            self.log("exploit", target.name, False, "no foothold reaches it or nothing to exploit")
            return
        service = ports[int(self.rng.integers(0, len(ports)))]
        reliable = self.rng.random() < self.scenario.red.exploit_success
        offset = EXPLOIT_OFFSET if reliable else EXPLOIT_OFFSET + 8
        reply = b""
        try:
            with in_netns(self.pid_of(source)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(EXPLOIT_TIMEOUT_S)
                sock.connect((target.ip, service.port))
                sock.sendall(exploit_request(service.protocol, offset))
                while len(reply) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as error:
            if subnet != self.model.host_subnet[source]:
                self.silent_until[subnet] = self.step + max(self.scenario.red.reentry_delay, 1)
            self.log("exploit", target.name, False, f"{service.name}: {error}",
                     self.host(source).name)
            return
        words = reply.split(b"OK implant ", 1)
        if len(words) == 2 and words[1].split()[:1] and words[1].split()[0].isdigit():
            self.implants[index] = int(words[1].split()[0])
            self.compromise[index] = Compromise.USER
            self.log("exploit", target.name, True,
                     f"{service.name}: implant {self.implants[index]}", self.host(source).name)
        else:
            self.log("exploit", target.name, False, f"{service.name}: no implant"
                     f" ({'misfired' if not reliable else 'refused'})", self.host(source).name)

    def escalate(self, index: int) -> None:
        reliable = self.rng.random() < self.scenario.red.escalate_success
        reply = self.c2(index, "ESCALATE " + ("ok" if reliable else "fail"))
        ok = reply.startswith("OK")
        if ok:
            self.compromise[index] = Compromise.PRIVILEGED
        self.log("escalate", self.host(index).name, ok, reply)

    def impact(self, index: int) -> None:
        reply = self.c2(index, "IMPACT")
        ok = reply.startswith("OK")
        if ok:
            self.impacted[index] = True
        self.log("impact", self.host(index).name, ok, reply)

    # ---------------------------------------------------------------- loop

    def act(self) -> None:
        self.refresh()
        if self.pending is not None:
            self.timer -= 1
            if self.timer > 0:
                return
            kind, target = self.pending
            self.pending = None
            self.carry_out(kind, target)
            return
        if not self.implants:
            if self.wait > 0:
                self.wait -= 1
                return
            self.enter()
            self.wait = self.scenario.red.reentry_delay
            if not self.implants:
                return
            # As the simulator (`SimBatch._red_step`): red lands and picks its first move
            # in the same step, so the kill chain keeps the simulator's phase.
        m = self.model
        noise = self.rng.random((1, 4 * m.n_hosts + m.n_subnets), dtype=np.float32)
        kinds, targets = m.red_choose(
            self.compromise[None], self.impacted[None], self.discovered[None],
            self.scanned[None], self.swept[None], self.blocked_belief()[None], noise)
        kind, target = RedActionKind(int(kinds[0])), int(targets[0])
        if kind == RedActionKind.NONE:
            return
        if self.durations[kind] <= 1:
            self.carry_out(kind, target)
        else:
            self.pending = (kind, target)
            self.timer = self.durations[kind] - 1

    def carry_out(self, kind: RedActionKind, target: int) -> None:
        """Do it now; each action checks again that it still can (as the simulator does)."""
        {
            RedActionKind.SWEEP: self.sweep, RedActionKind.SCAN: self.scan,
            RedActionKind.EXPLOIT: self.exploit, RedActionKind.ESCALATE: self.escalate,
            RedActionKind.IMPACT: self.impact,
        }[kind](target)

    def on_tick(self, tick: StepTick) -> None:
        """Red's move of one step of the bridge's clock."""
        if tick.step < 0:
            return
        if tick.episode != self.episode:
            # A new episode: the controller reset every host (our implants are gone);
            # it wrote the episode's seed (`RangePlan.episode_file`).
            self.begin_episode(episode_seed(self.plan.episode_file, self.seed))
            self.episode = tick.episode
        self.step = tick.step
        try:
            self.act()
        except Exception:
            if not self.program.controller_gone():
                raise
            # Its hosts vanished under the action: `running()` now stops us, quietly.

    def run(self) -> None:
        with SensorLink(self.plan.alert_endpoint, self.plan.run_id, self.program.name,
                        key=self.program.key, role="red") as link:
            self.program.follow_steps(link, self.on_tick)
        for child in self.children:
            child.poll()


def load_scapy(router_pid: int) -> None:
    """Import scapy before saying ready, inside the range's router namespace.

    Its first import reads every interface and route of the namespace it runs in and
    would otherwise stall red's first sweep, and with it that step of the episode. In
    the root namespace those are the range's veths, each one a port of a subnet bridge:
    with 4,000 of them (2,000 hosts) the import took 150 s and 0.6 GiB. The router has
    one interface per subnet. Red names every packet's source itself and sends from
    sockets made in its footholds' namespaces, so scapy's view of interfaces and routes
    is never used to send.
    """
    with in_netns(router_pid):
        import scapy.layers.inet
        import scapy.sendrecv
        import scapy.supersocket  # noqa: F401


def main() -> int:
    program = Program("red", "red's kill chain, for real", subnet=False,
                      extra=[("--seed", {"type": int, "default": 0})], keyed=True)
    load_scapy(program.plan.router_pid)
    Red(program, program.args.seed).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
