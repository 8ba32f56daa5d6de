"""Scenario language: frozen, validated data that describes one range.

A `Scenario` is pure data (like Mininet's `Topo`): subnets, hosts, red, green,
sensors, blue agents, reward. The game model, the simulator and the emulator all
read it; none of them changes it. `load_scenario` reports every problem with
file:line:column and the field path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from cyberdial.range.errors import Problem, ScenarioError
from cyberdial.range.yamlpos import PositionedData, YamlSyntaxError, load_positioned

# Names become parts of Linux interface, namespace and nftables names: at most
# 15 bytes (IFNAMSIZ - 1), letters, digits, '-' and '_', starting with a letter.
NAME_MAX_BYTES = 15
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_PATTERN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_{}-]*$")
# A Linux bridge holds at most 1023 ports; one is the subnet's router.
BRIDGE_MAX_PORTS = 1023
# Scenario addresses live only inside the range's own namespaces; private ranges
# keep a mistaken scenario from ever naming somebody else's network.
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
HOST_VALUES: dict[str, float] = {"none": 0.0, "low": 0.1, "medium": 1.0, "high": 10.0}


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value) or len(value.encode()) > NAME_MAX_BYTES:
        raise ValueError(
            f"{value!r} is not a valid name: use 1-{NAME_MAX_BYTES} letters, digits, '-' or '_',"
            " starting with a letter (names become Linux interface names)"
        )
    return value


def _check_pattern(value: str) -> str:
    if not _PATTERN_RE.match(value) or value.replace("{i}", "").count("{") + value.replace(
        "{i}", ""
    ).count("}"):
        raise ValueError(
            f"{value!r} is not a valid host name or pattern: letters, digits, '-', '_' and"
            " '{i}' (the index within the group), starting with a letter"
        )
    return value


def _check_cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"{value!r} is not an IPv4 network in CIDR form ({error})") from None
    if network.version != 4:
        raise ValueError(f"{value!r} is not IPv4: the range uses IPv4 subnets")
    if not any(network.subnet_of(private) for private in _PRIVATE_NETWORKS):  # type: ignore[arg-type]
        raise ValueError(
            f"{value!r} is not a private network: use 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Steps = Annotated[int, Field(ge=1, le=1000)]
HostValue = Literal["none", "low", "medium", "high"]
Backend = Literal["namespace", "docker"]
BlueActionName = Literal["analyse", "remove", "restore", "block", "unblock", "decoy"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Service(_Frozen):
    """A listening service on a host; a vulnerable one is red's way in."""

    name: Name
    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "http"] = "tcp"
    vulnerable: bool = False


class Subnet(_Frozen):
    name: Name
    cidr: Annotated[str, AfterValidator(_check_cidr)]
    flows: tuple[Name, ...] = Field(
        default=(), description="subnets this subnet's hosts may open connections to"
    )

    @cached_property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


class HostGroup(_Frozen):
    """One host, or `count` alike hosts named by a pattern such as `user{i}`."""

    name: Annotated[str, AfterValidator(_check_pattern)]
    count: Annotated[int, Field(ge=1, le=5000)] = 1
    start: Annotated[int, Field(ge=0)] = 0
    subnet: Name
    value: HostValue = "none"
    mission: bool = Field(default=False, description="mission-critical: red can impact it")
    user: bool = Field(default=False, description="a green user works from this host")
    services: tuple[Service, ...] = ()
    backend: Backend | None = None
    image: str | None = None


class Host(_Frozen):
    """One concrete host, expanded from a `HostGroup`."""

    name: str
    index: int
    subnet: str
    value: HostValue
    mission: bool
    user: bool
    services: tuple[Service, ...]
    backend: Backend
    image: str | None
    group: int

    @property
    def vulnerable(self) -> bool:
        return any(service.vulnerable for service in self.services)


class RedDurations(_Frozen):
    sweep: Steps = 1
    scan: Steps = 1
    exploit: Steps = 1
    escalate: Steps = 1
    impact: Steps = 1


class Red(_Frozen):
    """The scripted attacker: kill chain from `entry` towards `targets`."""

    entry: Name
    targets: tuple[Name, ...] = Field(min_length=1)
    strategy: Literal["bline", "meander"] = "bline"
    start_delay: Annotated[int, Field(ge=0, le=1000)] = 0
    start_jitter: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=0,
        description="extra start delay drawn each episode uniformly from 0..start_jitter,"
        " so defenders cannot time red's arrival by the clock",
    )
    reentry_delay: Annotated[int, Field(ge=0, le=1000)] = 3
    exploit_success: Probability = 0.9
    escalate_success: Probability = 0.9
    durations: RedDurations = RedDurations()


class Green(_Frozen):
    """Users doing real work; admins' sweeps and mistyped logins are the false positives."""

    work_rate: Probability = 0.5
    servers: tuple[Name, ...] = ()
    fp_scan: Probability = 0.0
    fp_exploit: Probability = 0.0


class Sensors(_Frozen):
    """How often a host sensor notices red's activity."""

    sweep_detect: Probability = 0.0
    scan_detect: Probability = 0.95
    exploit_detect: Probability = 0.95


class BlueDurations(_Frozen):
    sleep: Steps = 1
    analyse: Steps = 1
    remove: Steps = 1
    restore: Steps = 1
    block: Steps = 1
    unblock: Steps = 1
    decoy: Steps = 1


class BlueAgent(_Frozen):
    name: Name
    subnets: tuple[Name, ...] = Field(min_length=1)


class Blue(_Frozen):
    agents: tuple[BlueAgent, ...] = Field(min_length=1, max_length=64)
    actions: tuple[BlueActionName, ...] = ("analyse", "remove", "restore", "block", "unblock")
    message_bits: Annotated[int, Field(ge=0, le=8)] = 1
    comm_cost: Annotated[float, Field(ge=0.0)] = 0.1
    sau: bool = Field(default=True, description="strategic action unmasking")
    limit_analyse: bool = Field(default=True, description="Analyse needs activity or a peer's 1")
    restore_downtime: Annotated[int, Field(ge=0, le=100)] = 1
    durations: BlueDurations = BlueDurations()


class ActionCosts(_Frozen):
    """What a blue action costs when it was wasted, as the authors' CybORG charges.

    Each is charged when the action finishes without effect: Analyse that reveals
    no compromise blue did not know, Remove that finds no user-level foothold,
    Block while no peer's Analyse of this step finds red privileged, Unblock of a
    subnet that was not blocked. All 0 by default (free actions).
    """

    analyse: Annotated[float, Field(ge=0.0)] = 0.0
    remove: Annotated[float, Field(ge=0.0)] = 0.0
    block: Annotated[float, Field(ge=0.0)] = 0.0
    unblock: Annotated[float, Field(ge=0.0)] = 0.0


class Reward(_Frozen):
    """Costs subtracted from the team reward each step (all non-negative)."""

    values: dict[HostValue, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: dict(HOST_VALUES)  # type: ignore[arg-type]
    )
    impact: Annotated[float, Field(ge=0.0)] = 10.0
    green_failure: Annotated[float, Field(ge=0.0)] = 0.1
    restore: Annotated[float, Field(ge=0.0)] = 1.0
    actions: ActionCosts = ActionCosts()


class Calibration(_Frozen):
    """Where a calibrated scenario's sensor model came from (`cyberdial calibrate`).

    A checkpoint trained on the base scenario plays on its calibration: the game's
    layout is the same, only the simulator's sensor rates differ.
    """

    base: Name
    base_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    policy: str = ""
    episodes: Annotated[int, Field(ge=0)] = 0
    seed: int = 0


class Scenario(_Frozen):
    name: Name
    description: str = ""
    seed: int = 0
    episode_length: Annotated[int, Field(ge=1, le=100_000)] = 30
    step_period: Annotated[float, Field(ge=0.05, le=60.0)] = 1.0
    backend: Backend = "namespace"
    subnets: tuple[Subnet, ...] = Field(min_length=1)
    hosts: tuple[HostGroup, ...] = Field(min_length=1)
    red: Red
    green: Green = Green()
    sensors: Sensors = Sensors()
    blue: Blue
    reward: Reward = Reward()
    calibration: Calibration | None = None

    @model_validator(mode="after")
    def _check_references(self) -> Scenario:
        problems = _reference_problems(self)
        if problems:
            # Not a ValueError: pydantic lets it through with its paths intact, so the
            # loader can place each problem in the file.
            raise ScenarioError(problems)
        return self

    @cached_property
    def all_hosts(self) -> tuple[Host, ...]:
        return tuple(_expand_hosts(self))

    @cached_property
    def host_index(self) -> dict[str, int]:
        return {host.name: host.index for host in self.all_hosts}

    @cached_property
    def subnet_index(self) -> dict[str, int]:
        return {subnet.name: index for index, subnet in enumerate(self.subnets)}

    def host(self, name: str) -> Host:
        return self.all_hosts[self.host_index[name]]

    def hosts_in(self, subnet: str) -> tuple[Host, ...]:
        return tuple(host for host in self.all_hosts if host.subnet == subnet)

    @cached_property
    def scenario_hash(self) -> str:
        """Stable digest of the scenario's content (not its file or formatting).

        Settings added to the language later (`reward.actions`, `calibration`) are left out while at
        their defaults, so a scenario that does not use them keeps its digest and the
        checkpoints trained on it stay valid.
        """
        exclude: dict[str, Any] = {}
        if self.reward.actions == ActionCosts():
            exclude = {"reward": {"actions"}}
        if self.calibration is None:
            exclude["calibration"] = True
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]


def _group_names(group: HostGroup) -> list[str]:
    if group.count == 1 and "{i}" not in group.name:
        return [group.name]
    return [group.name.replace("{i}", str(group.start + i)) for i in range(group.count)]


def _expand_hosts(scenario: Scenario) -> list[Host]:
    hosts: list[Host] = []
    for group_index, group in enumerate(scenario.hosts):
        for name in _group_names(group):
            hosts.append(
                Host(
                    name=name,
                    index=len(hosts),
                    subnet=group.subnet,
                    value=group.value,
                    mission=group.mission,
                    user=group.user,
                    services=group.services,
                    backend=group.backend or scenario.backend,
                    image=group.image,
                    group=group_index,
                )
            )
    return hosts


def _duplicates(names: list[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def _reference_problems(s: Scenario) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: tuple[str | int, ...], message: str) -> None:
        problems.append(Problem(path=path, message=message))

    subnet_names = [subnet.name for subnet in s.subnets]
    for name in sorted(_duplicates(subnet_names)):
        index = len(subnet_names) - 1 - subnet_names[::-1].index(name)
        add(("subnets", index, "name"), f"duplicate subnet name {name!r}")
    known_subnets = set(subnet_names)
    for i, subnet in enumerate(s.subnets):
        for j, flow in enumerate(subnet.flows):
            if flow not in known_subnets:
                add(("subnets", i, "flows", j), f"unknown subnet {flow!r}")
        for k in range(i):
            if subnet.network.overlaps(s.subnets[k].network):
                add(("subnets", i, "cidr"), f"{subnet.cidr} overlaps {s.subnets[k].cidr}")

    host_names: dict[str, int] = {}
    hosts_per_subnet: Counter[str] = Counter()
    for g, group in enumerate(s.hosts):
        if group.count > 1 and "{i}" not in group.name:
            add(("hosts", g, "name"), f"a group of {group.count} hosts needs '{{i}}' in its name")
            host_names.setdefault(group.name, g)  # so later references do not cascade
            hosts_per_subnet[group.subnet] += group.count
            continue
        if group.subnet not in known_subnets:
            add(("hosts", g, "subnet"), f"unknown subnet {group.subnet!r}")
        backend = group.backend or s.backend
        if group.image is not None and backend != "docker":
            add(("hosts", g, "image"), "an image needs backend: docker")
        if backend == "docker" and group.image is None:
            add(("hosts", g, "image"), "docker hosts need an image")
        for service_name in sorted(_duplicates([x.name for x in group.services])):
            add(("hosts", g, "services"), f"duplicate service name {service_name!r}")
        for port in sorted(_duplicates([str(x.port) for x in group.services])):
            add(("hosts", g, "services"), f"duplicate service port {port}")
        if group.mission and not group.services:
            add(("hosts", g, "mission"), "a mission-critical host needs a service to impact")
        too_long = False
        reported_duplicate = False
        for name in _group_names(group):
            if len(name.encode()) > NAME_MAX_BYTES and not too_long:
                too_long = True
                add(
                    ("hosts", g, "name"),
                    f"host name {name!r} is {len(name.encode())} bytes; Linux interface"
                    f" names allow {NAME_MAX_BYTES}",
                )
            if name in host_names and not reported_duplicate:
                reported_duplicate = True
                add(("hosts", g, "name"), f"duplicate host name {name!r}")
            host_names.setdefault(name, g)
        hosts_per_subnet[group.subnet] += group.count
    for i, subnet in enumerate(s.subnets):
        count = hosts_per_subnet.get(subnet.name, 0)
        if count + 1 > BRIDGE_MAX_PORTS:
            add(
                ("subnets", i, "name"),
                f"subnet {subnet.name!r} has {count} hosts; one Linux bridge holds"
                f" {BRIDGE_MAX_PORTS} ports (hosts + router): split it into more subnets",
            )
        elif count + 1 > subnet.network.num_addresses - 2:
            add(
                ("subnets", i, "cidr"),
                f"{subnet.cidr} has room for {max(subnet.network.num_addresses - 3, 0)} hosts"
                f" besides its router, but {count} are placed in it",
            )
        if count == 0:
            add(("subnets", i, "name"), f"subnet {subnet.name!r} has no hosts")

    if s.red.entry not in host_names:
        add(("red", "entry"), f"unknown host {s.red.entry!r}")
    for j, target in enumerate(s.red.targets):
        if target not in host_names:
            add(("red", "targets", j), f"unknown host {target!r}")
    for j, server in enumerate(s.green.servers):
        if server not in host_names:
            add(("green", "servers", j), f"unknown host {server!r}")
        elif not s.hosts[host_names[server]].services:
            add(("green", "servers", j), f"host {server!r} runs no service for users to use")

    agent_names = [agent.name for agent in s.blue.agents]
    for duplicate in sorted(_duplicates(agent_names)):
        add(
            ("blue", "agents", agent_names.index(duplicate), "name"),
            f"duplicate agent {duplicate!r}",
        )
    defended: dict[str, str] = {}
    for a, agent in enumerate(s.blue.agents):
        for j, subnet_name in enumerate(agent.subnets):
            if subnet_name not in known_subnets:
                add(("blue", "agents", a, "subnets", j), f"unknown subnet {subnet_name!r}")
            elif subnet_name in defended:
                add(
                    ("blue", "agents", a, "subnets", j),
                    f"subnet {subnet_name!r} is already defended by {defended[subnet_name]!r}",
                )
            else:
                defended[subnet_name] = agent.name
    for duplicate in sorted(_duplicates(list(s.blue.actions))):
        add(("blue", "actions"), f"action {duplicate!r} listed twice")
    return problems


# --------------------------------------------------------------------------- loading


def _place(problem: Problem, source: str, positioned: PositionedData) -> Problem:
    line, column = positioned.position(problem.path)
    return Problem(problem.path, problem.message, source, line, column)


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    errors = error.errors(include_url=False)
    for item in errors:
        path = tuple(item["loc"])
        # Pydantic adds "too short" for a tuple whose items all failed: noise beside
        # the items' own errors.
        if item["type"] == "too_short" and any(
            len(other["loc"]) > len(path) and tuple(other["loc"][: len(path)]) == path
            for other in errors
        ):
            continue
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        if "input" in item and item["type"] not in ("extra_forbidden", "missing"):
            shown = repr(item["input"])
            if len(shown) <= 40 and shown not in message:
                message += f" (got {shown})"
        problems.append(Problem(path=path, message=message))
    return problems


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Validate scenario YAML text; every problem is placed at file:line:column."""
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError([Problem((), f"over {MAX_SCENARIO_BYTES} characters: too big for"
                                     " a scenario", source, 1, 1)])
    try:
        positioned = load_positioned(text)
    except YamlSyntaxError as error:
        raise ScenarioError(
            [Problem((), error.message, source, error.line, error.column)]
        ) from None
    if positioned.data is None:
        raise ScenarioError(
            [
                Problem(
                    (),
                    "file is empty: a scenario needs name, subnets, hosts, red and blue",
                    source,
                    1,
                    1,
                )
            ]
        )
    if not isinstance(positioned.data, dict):
        raise ScenarioError(
            [Problem((), "a scenario is a mapping of keys (name:, subnets:, ...)", source, 1, 1)]
        )
    try:
        return Scenario.model_validate(positioned.data)
    except ValidationError as error:
        problems = _pydantic_problems(error)
    except ScenarioError as error:
        problems = error.problems
    raise ScenarioError([_place(p, source, positioned) for p in problems]) from None


# Far above any real scenario (the shipped large one is 2 KiB): read no more than this.
MAX_SCENARIO_BYTES = 1 << 20


def read_bounded_text(file: Path, limit: int, what: str) -> str:
    """A regular file's UTF-8 text, refused beyond `limit` bytes before it is all read."""
    import stat

    with file.open("rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError(f"not a regular file: a {what} is a text file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"over {limit} bytes: too big for a {what}")
    return data.decode("utf-8")


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file, or a shipped scenario by name (`tiny`, `small`, `large`)."""
    file = resolve_scenario_path(path)
    try:
        text = read_bounded_text(file, MAX_SCENARIO_BYTES, "scenario")
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        message = ("not a text file (UTF-8 expected)" if isinstance(error, UnicodeDecodeError)
                   else str(error))
        raise ScenarioError([Problem((), message, str(path), 1, 1)]) from None
    except OSError as error:
        raise ScenarioError([Problem((), f"cannot read: {error.strerror}", str(path))]) from None
    return parse_scenario(text, str(path))


def shipped_scenarios_dir() -> Path:
    import cyberdial.scenarios

    return Path(next(iter(cyberdial.scenarios.__path__)))


def resolve_scenario_path(path: str | Path) -> Path:
    file = Path(path)
    if not file.exists() and file.suffix == "" and file.parent == Path("."):
        shipped = shipped_scenarios_dir() / f"{file.name}.yaml"
        if shipped.exists():
            return shipped
    return file


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """Build a scenario from Python data (tests, generated scenarios); raises ScenarioError."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        raise ScenarioError(_pydantic_problems(error)) from None
