"""The emulated range as data: every name, address and path a run will use.

Like Mininet's `Topo`, a `RangePlan` is pure data derived from a `Scenario` and a
run id, testable without root. The controller (`emulator.Range`) builds it and
the host programs read it back from the run directory's `plan.json`. Every
kernel-visible name carries the run id, so a run is removed by its id alone.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cyberdial.range.errors import CyberdialError
from cyberdial.range.scenario import Scenario

RUN_ID_RE = re.compile(r"^[0-9a-f]{6}$")
IFNAME_MAX = 15
# The implant's command channel: loopback inside the host it runs on.
IMPLANT_PORT = 4444
# A decoy listens on the first of these the host does not already use.
DECOY_PORTS = (21, 23, 25, 2121, 2323)
# What a port scan probes (red's scapy SYN scan and green admins' connect scans):
# common ports plus every service port of the scenario.
COMMON_PORTS = (21, 22, 23, 25, 53, 80, 110, 139, 443, 445, 3389, 8080)
GREEN_PASSWORD = "green-pass"


class PlanError(CyberdialError):
    """The scenario cannot be laid out as kernel objects (names too long, too many subnets)."""


def new_run_id() -> str:
    return secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise PlanError(
            f"{run_id!r} is not a run id (6 hex digits, as `cyberdial range status` shows)"
        )
    return run_id


@dataclass(frozen=True)
class ServicePlan:
    name: str
    port: int
    protocol: str
    vulnerable: bool


@dataclass(frozen=True)
class HostPlan:
    name: str
    index: int
    subnet: str
    subnet_index: int
    ip: str
    prefix: int
    gateway: str
    veth: str  # root-namespace end of the host's link, a port of the subnet's bridge
    services: tuple[ServicePlan, ...]
    mission: bool
    user: bool
    value: str
    decoy_port: int
    # "namespace" (a Mininet host) or "docker" (a container host, see docker_hosts.py);
    # `image` is the container's image, HOST_IMAGE for the range's own.
    backend: str = "namespace"
    image: str = ""

    @property
    def vulnerable_ports(self) -> tuple[int, ...]:
        return tuple(s.port for s in self.services if s.vulnerable)


@dataclass(frozen=True)
class SubnetPlan:
    name: str
    index: int
    cidr: str
    bridge: str
    router_ip: str
    router_intf: str  # inside the router namespace
    router_veth: str  # root-namespace end, a port of the bridge
    flows: tuple[str, ...]
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class RangePlan:
    run_id: str
    run_dir: str
    scenario_name: str
    router_node: str
    nft_table: str
    subnets: tuple[SubnetPlan, ...]
    hosts: tuple[HostPlan, ...]
    scan_ports: tuple[int, ...]
    step_period: float
    host_pids: dict[str, int] = field(default_factory=dict)
    router_pid: int = 0
    # Processes a container host's image runs besides its holder (a user image's own
    # daemons): part of the host, never "new" to the sensor, spared by Restore.
    baseline_pids: dict[str, list[int]] = field(default_factory=dict)

    # ----------------------------------------------------------- lookups

    def host(self, name: str) -> HostPlan:
        return self.hosts[self._host_index()[name]]

    def subnet(self, name: str) -> SubnetPlan:
        return next(s for s in self.subnets if s.name == name)

    def _host_index(self) -> dict[str, int]:
        return {h.name: i for i, h in enumerate(self.hosts)}

    def baseline(self, host: str) -> set[int]:
        """The processes that make up `host` itself: its namespace holder (a Mininet
        shell or a container's init) and a container image's own processes."""
        return {self.host_pids[host], *self.baseline_pids.get(host, ())}

    def exec_prefix(self, host: str) -> list[str]:
        """argv prefix that runs a program of this machine in `host`'s network namespace.

        `mnexec -a` also joins the holder's mount namespace: harmless for a Mininet
        host (it shares ours), but inside a container it would hide the run directory
        and our Python, so container hosts are entered for their network only.
        """
        pid = self.host_pids[host]
        if self.host(host).backend == "docker":
            return ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
        return ["mnexec", "-a", str(pid)]

    def hosts_in(self, subnet: str) -> tuple[HostPlan, ...]:
        return tuple(h for h in self.hosts if h.subnet == subnet)

    def subnet_of_ip(self, ip: str) -> str | None:
        address = ipaddress.IPv4Address(ip)
        for subnet in self.subnets:
            if address in ipaddress.IPv4Network(subnet.cidr):
                return subnet.name
        return None

    # ------------------------------------------------------------- paths

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    def host_dir(self, host: str) -> Path:
        return self.root / "hosts" / host

    def golden_dir(self, host: str) -> Path:
        return self.root / "golden" / host

    def data_file(self, host: str, service: str) -> Path:
        return self.host_dir(host) / "srv" / f"{service}.dat"

    def privileged_marker(self, host: str) -> Path:
        return self.host_dir(host) / "run" / "privileged"

    def decoy_file(self, host: str) -> Path:
        return self.root / "decoys" / host

    def restart_request(self, host: str) -> Path:
        return self.root / "ctl" / f"{host}.restart"

    @property
    def alert_endpoint(self) -> str:
        return f"ipc://{self.root / 'alerts.sock'}"

    @property
    def command_endpoint(self) -> str:
        return f"ipc://{self.root / 'commands.sock'}"

    @property
    def clock_endpoint(self) -> str:
        """The step clock (the bridge's PUB socket): red, green, sensors, actuators follow it."""
        return f"ipc://{self.root / 'clock.sock'}"

    @property
    def clock_file(self) -> Path:
        """Written when the range is up: the wall-clock time of step 0."""
        return self.root / "clock"

    @property
    def episode_file(self) -> Path:
        """Rewritten at each episode reset; actuators then drop their decoys."""
        return self.root / "ctl" / "episode"

    # ---------------------------------------------------- serialisation

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RangePlan:
        data: dict[str, Any] = json.loads(text)
        data["subnets"] = tuple(
            SubnetPlan(**{**s, "flows": tuple(s["flows"]), "hosts": tuple(s["hosts"])})
            for s in data["subnets"]
        )
        data["hosts"] = tuple(
            HostPlan(**{**h, "services": tuple(ServicePlan(**x) for x in h["services"])})
            for h in data["hosts"]
        )
        data["scan_ports"] = tuple(data["scan_ports"])
        return cls(**data)

    @classmethod
    def load(cls, run_dir: str | Path) -> RangePlan:
        return cls.from_json((Path(run_dir) / "plan.json").read_text(encoding="utf-8"))


def make_plan(scenario: Scenario, run_id: str, run_dir: str | Path) -> RangePlan:
    """Lay a scenario out as bridges, veths and addresses for one run."""
    check_run_id(run_id)
    subnets: list[SubnetPlan] = []
    hosts: list[HostPlan] = []
    for k, subnet in enumerate(scenario.subnets):
        bridge = f"c{run_id}s{k}"
        network = ipaddress.IPv4Network(subnet.cidr)
        addresses = network.hosts()
        router_ip = str(next(addresses))
        members = scenario.hosts_in(subnet.name)
        longest = f"{bridge}p{max(len(members) - 1, 0)}"
        if len(longest) > IFNAME_MAX:
            raise PlanError(
                f"interface name {longest!r} would exceed {IFNAME_MAX} bytes: the emulator supports"
                " at most 100 subnets; split the scenario"
            )
        for j, host in enumerate(members):
            used = {s.port for s in host.services}
            hosts.append(HostPlan(
                name=host.name, index=host.index, subnet=subnet.name, subnet_index=k,
                ip=str(next(addresses)), prefix=network.prefixlen, gateway=router_ip,
                veth=f"{bridge}p{j}",
                services=tuple(ServicePlan(s.name, s.port, s.protocol, s.vulnerable)
                               for s in host.services),
                mission=host.mission, user=host.user, value=host.value,
                decoy_port=next((p for p in DECOY_PORTS if p not in used and p != IMPLANT_PORT),
                                0),
                backend=host.backend, image=host.image or "",
            ))
        subnets.append(SubnetPlan(
            name=subnet.name, index=k, cidr=subnet.cidr, bridge=bridge, router_ip=router_ip,
            router_intf=f"eth{k}", router_veth=f"{bridge}r", flows=tuple(subnet.flows),
            hosts=tuple(h.name for h in members),
        ))
    hosts.sort(key=lambda h: h.index)
    service_ports = {s.port for h in scenario.all_hosts for s in h.services}
    return RangePlan(
        run_id=run_id, run_dir=str(run_dir), scenario_name=scenario.name,
        router_node=f"router-{run_id}", nft_table=f"cyberdial_{run_id}",
        subnets=tuple(subnets), hosts=tuple(hosts),
        scan_ports=tuple(sorted(set(COMMON_PORTS) | service_ports)),
        step_period=scenario.step_period,
    )


def nft_ruleset(plan: RangePlan) -> str:
    """The router's firewall: only the scenario's flows, and a set of blocked subnets.

    Block(subnet) adds its CIDR to `blocked`: traffic from outside into it is no
    longer forwarded, as the game says (docs/game.md: "stop traffic from outside into
    a subnet"; the simulator's `GameModel.red_reach` and green's cut-off rule). The
    check comes before established connections and looks at the connection's
    original direction, so a block also cuts live sessions that entered the subnet,
    while the subnet's own connections out (and their answers) go on: red on a
    foothold inside a blocked subnet still reaches the subnets its flows allow, and
    so do its users. Blocked traffic is refused at once (ICMP administratively
    prohibited), not left to time out: a firewall's usual answer, and a step then
    costs no timeout.
    """
    lines = [
        f"table inet {plan.nft_table} {{",
        "  set blocked { type ipv4_addr; flags interval; }",
        "  chain forward {",
        "    type filter hook forward priority 0; policy drop;",
        "    ip daddr @blocked ct direction original reject with icmpx type admin-prohibited",
        "    ct state established,related accept",
    ]
    by_name = {s.name: s for s in plan.subnets}
    for subnet in plan.subnets:
        for flow in subnet.flows:
            if flow != subnet.name:
                lines.append(f"    ip saddr {subnet.cidr} ip daddr {by_name[flow].cidr} accept")
    lines += ["  }", "}", ""]
    return "\n".join(lines)
