"""Ground truth of an emulated run, read from the real hosts, scored by the game model.

The referee never asks red what state it reached: it looks at implant processes in
each host's network namespace, privileged markers owned by a live implant, mission
data against its golden copy, the router's blocked set and the green programs'
request outcomes, and returns them as a typed `Measurement` (range/truth.py) in the
game model's own values (red's own log only says which moves it made, for
recordings). The bridge scores it with `GameModel.reward_terms`, the function the
simulator scores with.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from cyberdial.range.emulation.netns import cmdline, netns_inode, processes_in
from cyberdial.range.emulation.plan import RangePlan
from cyberdial.range.model import Compromise
from cyberdial.range.scenario import Scenario
from cyberdial.range.truth import Measurement, RedMove

logger = logging.getLogger(__name__)

IMPLANT_MODULE = "cyberdial.range.emulation.programs.implant"


def implants_by_host(plan: RangePlan) -> dict[str, list[int]]:
    """Live implant processes in every host's namespace (one /proc pass)."""
    inode_host = {}
    for host, pid in plan.host_pids.items():
        inode = netns_inode(pid)
        if inode is not None:
            inode_host[inode] = host
    found: dict[str, list[int]] = {host: [] for host in plan.host_pids}
    for inode, pids in processes_in(inode_host).items():
        found[inode_host[inode]] = [p for p in pids if IMPLANT_MODULE in cmdline(p)]
    return found


def marker_owner(plan: RangePlan, host: str) -> int | None:
    """The PID the host's privileged marker names, if the marker exists."""
    try:
        words = plan.privileged_marker(host).read_text(encoding="utf-8").split()
    except OSError:
        return None
    if len(words) >= 2 and words[0] == "privileged" and words[1].isdigit():
        return int(words[1])
    return None


def host_compromise(plan: RangePlan, host: str, implants: list[int]) -> Compromise:
    if not implants:
        return Compromise.CLEAN
    owner = marker_owner(plan, host)
    return Compromise.PRIVILEGED if owner in implants else Compromise.USER


def data_intact(plan: RangePlan, host: str) -> bool:
    for service in plan.host(host).services:
        try:
            live = plan.data_file(host, service.name).read_bytes()
            gold = (plan.golden_dir(host) / "srv" / f"{service.name}.dat").read_bytes()
        except OSError:
            return False
        if live != gold:
            return False
    return True


def blocked_subnets(plan: RangePlan) -> list[str]:
    """Subnets whose CIDR is in the router's nftables `blocked` set, read from the kernel."""
    out = subprocess.run(
        ["mnexec", "-a", str(plan.router_pid), "nft", "-j", "list", "set", "inet",
         plan.nft_table, "blocked"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        logger.warning("cannot read the router's blocked set: %s", out.stderr.strip())
        return []
    cidrs: set[str] = set()
    for item in json.loads(out.stdout).get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            prefix = element.get("prefix") if isinstance(element, dict) else None
            if prefix:
                cidrs.add(f"{prefix['addr']}/{prefix['len']}")
    return [s.name for s in plan.subnets if s.cidr in cidrs]


class _Tail:
    """New JSON lines appended to the files of one directory since the last read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[dict[str, Any]]:
        records = []
        for file in sorted(self.directory.glob("*.jsonl")):
            offset = self.offsets.get(file, 0)
            with open(file, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            # Only whole lines: a writer may be halfway through one.
            end = data.rfind(b"\n") + 1
            self.offsets[file] = offset + end
            for line in data[:end].splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records


class Referee:
    """Measures the run's true state each step (`measure()`); a `truth.Referee`.

    It only reads: resetting the range is the range's own capability
    (`Range.reset_episode`), which the bridge calls before `start_episode()` here.
    """

    def __init__(self, plan: RangePlan, scenario: Scenario) -> None:
        self.plan = plan
        self.scenario = scenario
        self._green = _Tail(plan.root / "green")
        self._red = _Tail(plan.root / "red")
        self.measurements = 0

    def start_episode(self) -> None:
        """A new episode: earlier green outcomes and red moves no longer count."""
        self._green.read()
        self._red.read()

    def measure(self) -> Measurement:
        """Per-host compromise, impacted hosts, the router's blocked set, green outcomes
        and red's moves since the last call."""
        plan = self.plan
        implants = implants_by_host(plan)
        n = len(plan.hosts)
        compromise = np.zeros(n, dtype=np.int8)
        impacted = np.zeros(n, dtype=bool)
        for host in plan.hosts:
            compromise[host.index] = host_compromise(plan, host.name, implants[host.name])
            if host.mission and not data_intact(plan, host.name):
                impacted[host.index] = True
        blocked = np.zeros(len(plan.subnets), dtype=bool)
        blocked[[self.scenario.subnet_index[name] for name in blocked_subnets(plan)]] = True
        green = self._green.read()
        self.measurements += 1
        # The referee sees no decoy or downtime state of its own: those read clear.
        return Measurement(
            compromise, impacted, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), blocked,
            green_failures=sum(1 for r in green if r.get("ok") is False),
            green_successes=sum(1 for r in green if r.get("ok") is True),
            red_moves=red_moves(self._red.read()),
            implants={h: tuple(p) for h, p in implants.items() if p},
        )


def red_moves(records: list[dict[str, Any]]) -> tuple[RedMove, ...]:
    """Red's log records that count as moves: only what sent traffic from a foothold (or
    succeeded on one), for comparing detection with the simulator's sensors."""
    moves = []
    for record in records:
        if not (record.get("source") or (record.get("ok")
                                          and record.get("action") in ("escalate", "impact"))):
            continue
        try:
            moves.append(RedMove.parse(str(record.get("action")), str(record.get("target", ""))))
        except ValueError:
            logger.warning("red's log holds a record that is no move: %.200r", record)
    return tuple(moves)
