"""The emulated range's controller: builds a scenario as namespaces and runs its programs.

`Range(scenario)` is a context manager. `up()` builds one host per scenario host
(a network and mount namespace held by a shell, as a Mininet host is) or, for
`backend: docker` hosts, one Docker container (see docker_hosts.py), one Linux
bridge per subnet (no controller: Open vSwitch cannot run here), and a router namespace
whose nftables enforce the scenario's flows; then starts per subnet one services,
one sensor, one actuator and one green process, plus one red process, and
returns only when every host answers and every service listens. `down()` removes
exactly what this run made (see `state.teardown`). The bridge talks to the range
through `alert_endpoint` / `command_endpoint` (or `Range.hub` when the range runs
its own `HostHub`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cyberdial.range.emulation import state as run_state
from cyberdial.range.emulation.capture import BridgeCapture, CaptureLimits
from cyberdial.range.emulation.docker_hosts import DockerHost, DockerHosts
from cyberdial.range.emulation.keys import KEYED_ROLES, expected_peers, key_line
from cyberdial.range.emulation.netns import (
    configure_namespace,
    in_netns,
    listening_ports,
    mac_for,
    netns_inode,
    processes_in,
    wait_for_own_namespaces,
)
from cyberdial.range.emulation.plan import (
    RangePlan,
    check_run_id,
    make_plan,
    new_run_id,
    nft_ruleset,
)
from cyberdial.range.emulation.programs.payloads import icmp_echo_request
from cyberdial.range.emulation.referee import Referee
from cyberdial.range.emulation.state import ProcessRecord, RunState, kill_all, teardown
from cyberdial.range.errors import HostCommandError, NotRootError
from cyberdial.range.hub import HostHub
from cyberdial.range.scenario import Scenario
from cyberdial.range.wire import Alert, Command, CommandResult, Hello, HostKeys

logger = logging.getLogger(__name__)

LOGS_ROOT = Path(os.environ.get("CYBERDIAL_LOGS", "/var/tmp/cyberdial"))
READY_TIMEOUT_S = 120.0
# The readiness ping's socket buffers, per host (an echo reply's skb is ~1 KiB).
PING_BUFFER_PER_HOST = 2048
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # socket.h; Python names neither
SAVE_EVERY = 64
# Seconds for every namespace holder of a bring-up to have made its namespace (they take
# milliseconds; a loaded machine, 2,000 of them, far more).
HOLDER_START_TIMEOUT = 60.0
PROGRAM_ROLES = ("services", "sensor", "actuator", "green", "red")
# The range filters in its router namespace only, never bridged frames in the root one.
_BRIDGE_NF = tuple(Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}tables") for t in ("ip", "ip6",
                                                                                    "arp"))


def require_root(what: str = "the emulated range") -> None:
    if os.geteuid() != 0:
        raise NotRootError(what)
    if shutil.which("mnexec") is None:
        raise HostCommandError(
            "mnexec is missing: install Debian's mininet package (`sudo make setup`)"
        )


class Range:
    """One emulated run of a scenario; use `with Range(scenario) as rng:`.

    It can start a new episode (`reset_episode`, a `truth.EpisodeReset`) for its
    container hosts as for its namespace hosts; `referee` measures its ground truth.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        hub: bool = True,
        programs: Sequence[str] = PROGRAM_ROLES,
        runs_root: Path | None = None,
        logs_dir: Path | None = None,
        seed: int | None = None,
        capture_dir: Path | None = None,
        capture_limits: CaptureLimits | None = None,
        run_id: str | None = None,
    ) -> None:
        unknown = set(programs) - set(PROGRAM_ROLES)
        if unknown:
            raise ValueError(f"unknown programs {sorted(unknown)}; choose from {PROGRAM_ROLES}")
        self.scenario = scenario
        # Given by a caller that must be able to take the run down whatever becomes of this
        # object (`validate --ranges N` names each range before its worker builds it).
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        self.runs_root = runs_root or run_state.RUNS_ROOT
        self.run_dir = self.runs_root / self.run_id
        self.logs_dir = logs_dir or LOGS_ROOT / self.run_id
        self.plan: RangePlan = make_plan(scenario, self.run_id, self.run_dir)
        self.seed = scenario.seed if seed is None else seed
        self._want_hub = hub
        self._roles = tuple(programs)
        self.hub: HostHub | None = None
        self.referee: Referee | None = None
        self.state: RunState | None = None
        # The namespace holders' lifeline (see _spawn_holders) and the holders.
        self._lifeline: int | None = None
        self._holders: list[subprocess.Popen[bytes]] = []
        self.docker: DockerHosts | None = None  # the engine of the container hosts, if any
        # The programs' launcher (programs/launcher.py) and the programs it started.
        self._launcher: subprocess.Popen[bytes] | None = None
        self._program_names: list[str] = []
        # The host side's master secret: in memory only; each program gets its own key.
        self.host_keys = HostKeys.generate(self.run_id)
        self.t0 = 0.0
        self.step = 0
        self.episode = 0
        # The programs that missed the last `wait_step`'s deadline (named, never hidden).
        self.last_late: tuple[str, ...] = ()
        self.timings: dict[str, float] = {}
        # Packet captures of every subnet bridge (pcapng rings), when asked for.
        self.capture_dir = capture_dir
        self.capture_limits = capture_limits or CaptureLimits()
        self.capture: BridgeCapture | None = None

    # ---------------------------------------------------------- endpoints

    @property
    def alert_endpoint(self) -> str:
        return self.plan.alert_endpoint

    @property
    def command_endpoint(self) -> str:
        return self.plan.command_endpoint

    def host_pid(self, host: str) -> int:
        """PID that holds `host`'s network namespace: its holder shell or container's init."""
        return self.plan.host_pids[host]

    @property
    def router_pid(self) -> int:
        return self.plan.router_pid

    # ---------------------------------------------------------- lifecycle

    def __enter__(self) -> Range:
        self.up()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Range:
        """Build and start everything; returns when every host answers and service listens."""
        require_root()
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=False)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.state = RunState(
            run_id=self.run_id, scenario=self.scenario.name, run_dir=str(self.run_dir),
            logs_dir=str(self.logs_dir), created=time.time(),
            controller=ProcessRecord.of(os.getpid(), "controller"),
            endpoints={"alerts": self.alert_endpoint, "commands": self.command_endpoint},
            hosts=len(self.plan.hosts),
        )
        self.state.save()
        try:
            self._disable_bridge_netfilter()
            self._build_network()
            self.timings["network_s"] = time.monotonic() - started
            if self.capture_dir is not None:
                # Before any program starts, so the capture holds the whole run.
                self.capture = BridgeCapture(
                    self.plan, self.capture_dir, self.logs_dir, self.capture_limits
                )
                self.capture.start(self.state)
            t = time.monotonic()
            self._write_files()
            self.timings["files_s"] = time.monotonic() - t
            if self._want_hub:
                self.hub = self.new_hub()
                self.hub.open()
            t = time.monotonic()
            self._start_programs()
            self.timings["launch_s"] = time.monotonic() - t
            self._wait_ready()
            t = time.monotonic()
            self.referee = Referee(self.plan, self.scenario)
            self.timings["referee_s"] = time.monotonic() - t
            self.t0 = time.time()
            self.plan.clock_file.write_text(f"{self.t0!r}\n", encoding="utf-8")
            self.state.status = "up"
            self.state.save()
        except BaseException:
            logger.exception("range %s failed to come up; tearing it down", self.run_id)
            self.down()
            raise
        self.timings["up_s"] = time.monotonic() - started
        logger.info("range %s up in %.1f s", self.run_id, self.timings["up_s"])
        return self

    def down(self) -> None:
        """Remove exactly what this run made; safe to call twice."""
        if self.state is None:
            return
        started = time.monotonic()
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        engine_url = self.state.engine_url
        if self.capture is not None:
            self.capture.stop()  # gently, so the files end cleanly; teardown kills leftovers
            self.capture = None
        report = teardown(self.state)
        self.timings.update({f"down_{k}": v for k, v in report.phases.items()})
        # Reap our own children so no zombie or ResourceWarning is left behind.
        if self._launcher is not None:
            assert self._launcher.stdin is not None and self._launcher.stdout is not None
            try:
                self._launcher.stdin.close()
            except BrokenPipeError:
                pass
            self._launcher.stdout.close()
            self._launcher.wait(timeout=10)
            self._launcher = None
        self.timings["down_reaped_s"] = time.monotonic() - started
        self._release_holders()
        if self.docker is not None:
            self.docker.close()
            self.docker = None
        self.state = None
        self.timings["down_s"] = time.monotonic() - started
        if report.links_left:
            raise HostCommandError(
                f"links left after down of {self.run_id}: {report.links_left}; run"
                f" `cyberdial range down {self.run_id}` again"
            )
        if report.containers_left:
            raise HostCommandError(
                f"containers of {self.run_id} left on {engine_url}:"
                f" {report.containers_left[:3]}; once the engine answers, run"
                f" `cyberdial range down {self.run_id}` again")

    # ------------------------------------------------------------- API

    def execute(self, command: Command, timeout_s: float = 10.0) -> CommandResult:
        """Run one blue action for real through the subnet's actuator."""
        return self._require_hub().execute(command, timeout_s)

    def execute_many(self, commands: Sequence[Command], timeout_s: float = 10.0
                     ) -> list[CommandResult]:
        return self._require_hub().execute_many(commands, timeout_s)

    def alerts(self, timeout_s: float = 0.0) -> list[Alert]:
        """Alerts raised since the last call (drained)."""
        return self._require_hub().poll_alerts(timeout_s)

    def wait_step(self, pace: bool = True) -> int:
        """Play one step of the range's clock through its own hub; returns the new step.

        Red and green make their move of the current step, then every sensor reports
        what it saw and closes the step (`HostHub.run_phase`). With `pace`, the step
        lasts at least the scenario's `step_period` (a watched range); without, it
        lasts what the hosts take; `last_late` names the programs that missed its
        deadline. A range without its own hub is stepped by its
        bridge instead.
        """
        if not self.t0:
            raise RuntimeError("the range is not up")
        hub = self._require_hub()
        started = time.monotonic()
        acted = hub.run_phase("act", episode=self.episode, step=self.step)
        closed = hub.run_phase("close", episode=self.episode, step=self.step)
        self.last_late = tuple(sorted({*acted.late, *closed.late}))
        if pace:
            while (left := started + self.plan.step_period - time.monotonic()) > 0:
                hub.pump(min(left, 0.05))
        self.step += 1
        hub.step = self.step
        return self.step

    def current_step(self) -> int:
        """Steps played since the range came up or was last reset."""
        return self.step

    def run_in(self, host: str, argv: Sequence[str], timeout_s: float = 60.0
               ) -> subprocess.CompletedProcess[str]:
        """Run a program inside `host`'s namespace to completion (drills, tests: nmap, ping)."""
        return subprocess.run([*self.plan.exec_prefix(host), *argv],
                              capture_output=True, text=True, timeout=timeout_s, check=False)

    def expected_peers(self) -> dict[str, Hello]:
        """The sensors and actuators this range starts, as their hellos will say."""
        return expected_peers(self.plan, self._roles)

    def new_hub(self, **options: Any) -> HostHub:
        """A hub for this range's host programs (the bridge's, or the range's own)."""
        return HostHub(self.run_id, self.alert_endpoint, self.command_endpoint,
                       keys=self.host_keys, expected=self.expected_peers(),
                       clock_endpoint=self.plan.clock_endpoint, **options)

    def _require_hub(self) -> HostHub:
        if self.hub is None:
            raise RuntimeError("this range runs without a hub (hub=False): use the bridge's")
        return self.hub

    # ------------------------------------------------------------ build

    def _disable_bridge_netfilter(self) -> None:
        # Bridged frames would otherwise traverse the root namespace's iptables
        # (a FORWARD DROP policy there silently cuts every subnet).
        for knob in _BRIDGE_NF:
            if knob.exists() and knob.read_text().strip() != "0":
                knob.write_text("0\n")

    def _save(self) -> None:
        assert self.state is not None
        self.state.save()

    def _build_network(self) -> None:
        """Hosts, bridges, links and addresses, each kind in one batch.

        What Mininet builds for a host, made the way Mininet makes it (`mnexec -dn`: a
        network and mount namespace with its own /sys, held by a shell), but without
        its per-node pty shell and one `ip` command per link: at 2,000 hosts those
        one-by-one steps were most of the bring-up.
        """
        assert self.state is not None
        plan, state = self.plan, self.state
        t = time.monotonic()
        # Names first, so a crash halfway still leaves a complete list to remove.
        state.bridges = [s.bridge for s in plan.subnets]
        state.veths = [h.veth for h in plan.hosts] + [s.router_veth for s in plan.subnets]
        self._save()
        namespace_hosts = [h for h in plan.hosts if h.backend != "docker"]
        # The node name shows in the holder's argv (`cyberdial:user0.a1b2c3`): ps tells
        # runs apart.
        holders = self._spawn_holders(
            [(plan.router_node, "router", plan.router_node)]
            + [(f"{h.name}.{self.run_id}", "host", h.name) for h in namespace_hosts])
        self.timings["hosts_s"] = time.monotonic() - t
        t = time.monotonic()
        containers = self._start_containers()
        self.timings["containers_s"] = time.monotonic() - t
        t = time.monotonic()
        router_pid = holders[plan.router_node]
        # The root namespace's ends (bridges, bridge ports) get no IPv6 link-local address:
        # else each of them runs duplicate-address detection and router solicitation, and
        # the bridge floods those frames to every host of the subnet.
        lines = [f"link add {s.bridge} type bridge stp_state 0" for s in plan.subnets]
        lines += [f"link set {s.bridge} addrgenmode none" for s in plan.subnets]
        for host in namespace_hosts:
            lines += [f"link add {host.veth} type veth peer name eth0 address {mac_for(host.ip)}"
                      f" netns {holders[host.name]}",
                      f"link set {host.veth} addrgenmode none",
                      f"link set {host.veth} master {plan.subnets[host.subnet_index].bridge}",
                      f"link set {host.veth} up"]
        for subnet in plan.subnets:
            lines += [f"link add {subnet.router_veth} type veth peer name {subnet.router_intf}"
                      f" address {mac_for(subnet.router_ip, 1)} netns {router_pid}",
                      f"link set {subnet.router_veth} addrgenmode none",
                      f"link set {subnet.router_veth} master {subnet.bridge}",
                      f"link set {subnet.router_veth} up",
                      f"link set {subnet.bridge} up"]
        out = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                             capture_output=True, check=False, timeout=120)
        if out.returncode != 0:
            raise HostCommandError(f"linking the hosts failed: {out.stderr.strip()[:300]}")
        if self.docker is not None:
            self.docker.attach(plan, containers)
        self.timings["links_s"] = time.monotonic() - t
        t = time.monotonic()
        plan.host_pids.update({h.name: holders[h.name] for h in namespace_hosts})
        plan.host_pids.update({c.name: c.pid for c in containers})
        object.__setattr__(plan, "router_pid", router_pid)
        state.netns = {name: netns_inode(pid) or 0 for name, pid in plan.host_pids.items()}
        self._save()
        self._configure_addresses()
        self._configure_router()
        if self.docker is not None:
            plan.baseline_pids.update(self.docker.baselines(containers))
            # An engine with default settings loads br_netfilter and switches bridged
            # frames through the root namespace's iptables (whose FORWARD it sets to
            # DROP): turn that off again now that the containers exist.
            self._disable_bridge_netfilter()
        self.timings["config_s"] = time.monotonic() - t

    def _spawn_holders(self, nodes: Sequence[tuple[str, str, str]]) -> dict[str, int]:
        """Start one namespace holder per (node name, role, host name); their PIDs by host.

        A holder is `sh -c 'read _'` under `mnexec -dn`, reading the controller's end of
        one pipe: it lives until the controller closes that pipe (`down()`) or dies, so
        a killed controller takes its hosts with it, as Mininet's pty shells did. Each
        is recorded as it starts. Not `mnexec -c`: it closes every descriptor up to the
        limit one by one (3 ms a host at a limit of 2^20); `Popen` closes them already.
        """
        assert self.state is not None
        state = self.state
        if self._lifeline is not None:
            raise RuntimeError("the hosts of this range are already started")
        read_end, self._lifeline = os.pipe()
        pids: dict[str, int] = {}
        try:
            for count, (node_name, role, host) in enumerate(nodes, 1):
                popen = subprocess.Popen(
                    ["mnexec", "-dn", "sh", "-c", "read _", f"cyberdial:{node_name}"],
                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self._holders.append(popen)
                pids[host] = popen.pid
                state.shells.append(ProcessRecord.of(popen.pid, role, host))
                if count % SAVE_EVERY == 0:
                    self._save()
        finally:
            os.close(read_end)
            self._save()
        # Links go to `netns PID` next: each holder must have made its namespace first.
        late = wait_for_own_namespaces(pids.values(), HOLDER_START_TIMEOUT)
        if late:
            names = [host for host, pid in pids.items() if pid in late]
            raise HostCommandError(
                f"{len(late)} host namespace(s) were not made within {HOLDER_START_TIMEOUT:.0f}"
                f" s ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): is mnexec"
                " installed and are we root? The range is torn down; try again")
        return pids

    def _start_containers(self) -> list[DockerHost]:
        """Start the container hosts, each recorded (engine, id, init PID) as it starts."""
        assert self.state is not None
        wanted = [h for h in self.plan.hosts if h.backend == "docker"]
        if not wanted:
            return []
        state = self.state
        self.docker = DockerHosts.open(self.run_id)
        # The engine first: a crash from here on still lets `range down` remove by label.
        state.engine_url = self.docker.url
        self._save()

        def record(container: DockerHost) -> None:
            state.containers[container.container_name] = container.container_id
            state.shells.append(ProcessRecord.of(container.pid, "container", container.name))
            if len(state.containers) % SAVE_EVERY == 0:
                self._save()

        try:
            t = time.monotonic()
            images = self.docker.resolve_images(wanted)
            self.timings["image_s"] = time.monotonic() - t
            return self.docker.start(wanted, images, on_started=record)
        finally:
            self._save()

    def _configure_addresses(self) -> None:
        """Every host's address and default route, and the router's, over rtnetlink from
        here (`netns.configure_namespace`): no process per host."""
        plan = self.plan
        failures: list[str] = []
        for host in plan.hosts:
            gateway_mac = mac_for(host.gateway, 1)
            try:
                configure_namespace(plan.host_pids[host.name], [("eth0", host.ip, host.prefix)],
                                    host.gateway, neighbours=[("eth0", host.gateway, gateway_mac)])
            except OSError as error:
                failures.append(f"{host.name}: {error}")
                if len(failures) >= 3:
                    break
        # The router knows its hosts' MACs (it chose them, containers' too): reaching a
        # host needs no ARP broadcast, which a bridge copies to every port (with 250
        # ports, ~10 ms per host).
        known = [(plan.subnets[h.subnet_index].router_intf, h.ip, mac_for(h.ip))
                 for h in plan.hosts]
        try:
            configure_namespace(plan.router_pid, [
                (s.router_intf, s.router_ip, ipaddress_prefix(s.cidr)) for s in plan.subnets],
                forward=True, neighbours=known)
        except OSError as error:
            failures.append(f"router: {error}")
        if failures:
            raise HostCommandError(f"configuring addresses failed: {failures[:3]}")

    def _configure_router(self) -> None:
        rules = self.run_dir / "router.nft"
        rules.write_text(nft_ruleset(self.plan), encoding="utf-8")
        out = subprocess.run(["mnexec", "-a", str(self.plan.router_pid), "nft", "-f", str(rules)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise HostCommandError(f"router firewall rejected: {out.stderr.strip()}")

    def _write_files(self) -> None:
        """Each host's files (service data) and their golden copy; the plan for programs."""
        plan = self.plan
        for directory in ("ctl", "decoys", "pids", "ready", "green", "actions", "red", "alerts"):
            (self.run_dir / directory).mkdir()
        for host in plan.hosts:
            for sub in ("srv", "run"):
                (plan.host_dir(host.name) / sub).mkdir(parents=True)
            for service in host.services:
                plan.data_file(host.name, service.name).write_text(
                    service_data(host.name, service.name), encoding="utf-8")
            shutil.copytree(plan.host_dir(host.name), plan.golden_dir(host.name))
        (self.run_dir / "plan.json").write_text(plan.to_json(), encoding="utf-8")
        (self.run_dir / "scenario.json").write_text(self.scenario.model_dump_json(),
                                                   encoding="utf-8")

    # ---------------------------------------------------------- programs

    def _start_programs(self) -> None:
        """Every program of the range, forked by one launcher (programs/launcher.py)."""
        assert self.state is not None
        specs: list[tuple[str, str, list[str]]] = []
        users = {h.subnet for h in self.plan.hosts if h.user}
        for subnet in self.plan.subnets:
            for role in ("services", "sensor", "actuator", "green"):
                if role not in self._roles or (role == "green" and subnet.name not in users):
                    continue
                specs.append((role, f"{role}-{subnet.name}", ["--subnet", subnet.name]))
        if "red" in self._roles:
            specs.append(("red", "red", ["--seed", str(self.seed)]))
        if not specs:
            return
        log = open(self.logs_dir / "launcher.log", "ab")
        try:
            # One BLAS thread: a process that forks must not hold threads.
            launcher = subprocess.Popen(
                [sys.executable, "-m", "cyberdial.range.emulation.programs.launcher"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, close_fds=True,
                env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        finally:
            log.close()
        self._launcher = launcher
        self.state.programs.append(ProcessRecord.of(launcher.pid, "launcher", "launcher"))
        self._save()
        assert launcher.stdin is not None and launcher.stdout is not None
        lines = []
        for role, name, extra in specs:
            # Keys go through the launcher's pipe, which only it holds; never in a file.
            key = key_line(self.host_keys.key(name)).decode() if role in KEYED_ROLES else ""
            lines.append(json.dumps({
                "role": role, "name": name, "log": str(self.logs_dir / f"{name}.log"),
                "args": ["--run-dir", str(self.run_dir), *extra], "key": key}) + "\n")
        try:
            launcher.stdin.write("".join(lines).encode())
            launcher.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once: reading its answers says so
        roles = {name: role for role, name, _ in specs}
        deadline = time.monotonic() + READY_TIMEOUT_S
        answers = b""
        started: dict[str, int] = {}
        fd = launcher.stdout.fileno()
        while len(started) < len(specs):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise HostCommandError(
                    f"the program launcher started {len(started)} of {len(specs)} programs"
                    f" in {READY_TIMEOUT_S:.0f} s: see {self.logs_dir / 'launcher.log'}")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise HostCommandError(
                    f"the program launcher exited with status {launcher.wait(10)}: see"
                    f" {self.logs_dir / 'launcher.log'}")
            answers += chunk
            while b"\n" in answers:
                line, answers = answers.split(b"\n", 1)
                answer = json.loads(line)
                started[answer["name"]] = answer["pid"]
                self.state.programs.append(
                    ProcessRecord.of(answer["pid"], roles[answer["name"]], answer["name"]))
                self._program_names.append(answer["name"])
        self._save()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        t = time.monotonic()
        missing = self._unanswered_hosts(deadline)
        if missing:
            raise HostCommandError(f"hosts do not answer ping: {missing[:5]}")
        self.timings["ping_s"] = time.monotonic() - t
        t = time.monotonic()
        ready = self.run_dir / "ready"
        while True:
            for record in self.state.programs if self.state is not None else ():
                if record.name in self._program_names and not record.alive():
                    raise HostCommandError(
                        f"program {record.name} exited: see"
                        f" {self.logs_dir / (record.name + '.log')}")
            waiting = [n for n in self._program_names if not (ready / n).exists()]
            deaf = self._services_not_listening() if not waiting else []
            if not waiting and not deaf:
                break
            if time.monotonic() > deadline:
                raise HostCommandError(
                    f"range not ready after {READY_TIMEOUT_S:.0f} s: programs {waiting[:5]},"
                    f" services {deaf[:5]}; logs in {self.logs_dir}")
            if self.hub is not None:
                self.hub.pump(0.05)
            else:
                time.sleep(0.05)
        self.timings["programs_s"] = time.monotonic() - t

    def _services_not_listening(self) -> list[str]:
        if "services" not in self._roles:
            return []
        deaf = []
        for host in self.plan.hosts:
            ports = listening_ports(self.plan.host_pids[host.name])
            deaf += [f"{host.name}:{s.port}" for s in host.services if s.port not in ports]
        return deaf

    def _unanswered_hosts(self, deadline: float) -> list[str]:
        """Ping every host from the router (one raw socket, resent until all answer)."""
        targets = {h.ip: h.name for h in self.plan.hosts}
        with in_netns(self.plan.router_pid):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        # Every host answers at once: a default buffer holds ~256 replies and drops the
        # rest, and a probe waiting for its ARP answer holds send buffer (a blocking send
        # then waits on ARP). Room for all; a send that would still block waits a round.
        room = PING_BUFFER_PER_HOST * len(targets)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, room)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, room)
        sock.setblocking(False)
        ident = os.getpid() & 0xFFFF
        answered: set[str] = set()
        # poll, not select: a large range's descriptors can pass select's 1024.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            rounds = 0
            while len(answered) < len(targets) and time.monotonic() < deadline and rounds < 200:
                rounds += 1
                probe = icmp_echo_request(ident, rounds, b"cyberdial-ready")
                for ip in targets:
                    if ip not in answered:
                        try:
                            sock.sendto(probe, (ip, 0))
                        except BlockingIOError:
                            break
                        except OSError as error:
                            if error.errno not in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                                raise
                until = time.monotonic() + 0.25
                while time.monotonic() < until:
                    if not poller.poll(50):
                        continue
                    try:
                        data, (source, _port) = sock.recvfrom(2048)
                    except BlockingIOError:
                        continue
                    header = (data[0] & 0x0F) * 4
                    if data[header] == 0 and struct.unpack("!H", data[header + 4:header + 6])[0] \
                            == ident:
                        answered.add(source)
                logger.debug("ping round %d: %d of %d hosts answered", rounds, len(answered),
                             len(targets))
        finally:
            sock.close()
        return sorted(targets[ip] for ip in targets if ip not in answered)

    # ---------------------------------------------------------- episodes

    def reset_episode(self, seed: int | None = None) -> float:
        """Put the range back at step 0 for a new episode; returns the seconds it took.

        Every host goes back to its golden state: its guest processes are killed
        (red's implants, and any shell a person opened there), its files reset, its
        services restarted and its link up; the router's blocked set is emptied and
        the actuators drop their decoys. The episode's seed goes to the episode file:
        red (the same process: no second start of Python and scapy) begins the kill
        chain again from its entry host, seeded with it, at its first tick of the new
        episode. Returns once every service listens again, like `up()`.
        """
        if self.state is None or not self.t0:
            raise RuntimeError("the range is not up")
        started = time.monotonic()
        self._restore_all_hosts()
        # Red (like every program) starts the new episode at its first tick of it, with
        # this seed; its implants died with the hosts' guest processes.
        episode_seed = self.seed if seed is None else seed
        self.plan.episode_file.write_text(f"{time.time()!r} {episode_seed}\n", encoding="utf-8")
        self._wait_services(time.monotonic() + READY_TIMEOUT_S)
        self.t0 = time.time()
        self.step = 0
        self.episode += 1
        self.plan.clock_file.write_text(f"{self.t0!r}\n", encoding="utf-8")
        took = time.monotonic() - started
        logger.info("range %s reset for a new episode in %.1f s", self.run_id, took)
        return took

    def _restore_all_hosts(self) -> None:
        # A host's own processes (its namespace holder; a container image's daemons) stay.
        host_of = {netns_inode(self.plan.host_pids[h.name]): h.name for h in self.plan.hosts}
        guests = [
            pid
            for inode, pids in processes_in([i for i in host_of if i is not None]).items()
            for pid in pids
            if pid not in self.plan.baseline(host_of[inode])
        ]
        kill_all([ProcessRecord.of(pid, "guest") for pid in guests])
        for host in self.plan.hosts:
            shutil.rmtree(self.plan.host_dir(host.name), ignore_errors=True)
            shutil.copytree(self.plan.golden_dir(host.name), self.plan.host_dir(host.name))
            self.plan.restart_request(host.name).write_text("reset\n", encoding="utf-8")
        batch = "".join(f"link set {host.veth} up\n" for host in self.plan.hosts)
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True,
                       capture_output=True, timeout=60)
        subprocess.run(
            ["mnexec", "-a", str(self.plan.router_pid), "nft", "flush", "set", "inet",
             self.plan.nft_table, "blocked"],
            check=True, capture_output=True, timeout=30,
        )

    def _wait_services(self, deadline: float) -> None:
        while deaf := self._services_not_listening():
            if time.monotonic() > deadline:
                raise HostCommandError(f"services did not come back after the reset: {deaf[:5]}")
            time.sleep(0.05)

    def _release_holders(self) -> None:
        """Close the holders' pipe (any holder still alive ends) and reap them."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        for holder in self._holders:
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("namespace holder %s did not exit", holder.pid)
        self._holders.clear()


def ipaddress_prefix(cidr: str) -> int:
    return int(cidr.split("/", 1)[1])


def service_data(host: str, service: str) -> str:
    """A service's data file in its golden state (what green reads, what impact destroys)."""
    return f"{host} {service} golden data\n" + "record\n" * 32
