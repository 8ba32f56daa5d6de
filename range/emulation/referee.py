"""Ground truth of an emulated run, read from the real hosts, scored by the game model.

The referee never asks red what it did: it looks at implant processes in each
host's network namespace, privileged markers owned by a live implant, mission
data against its golden copy, the router's blocked set, the green programs'
request outcomes and the actuators' restore log, and feeds them to
`GameModel.reward_terms`, the same function the simulator scores with.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cyberdial.range.emulation.netns import cmdline, netns_inode, processes_in
from cyberdial.range.emulation.plan import RangePlan
from cyberdial.range.model import Compromise, GameModel
from cyberdial.range.scenario import Scenario

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
    """Measures the run's true state each step; `measure()` returns it with reward terms."""

    def __init__(
        self, plan: RangePlan, scenario: Scenario,
        on_reset: Callable[[int | None], object] | None = None,
    ) -> None:
        self.plan = plan
        self.model = GameModel(scenario)
        self._green = _Tail(plan.root / "green")
        self._actions = _Tail(plan.root / "actions")
        self._red = _Tail(plan.root / "red")
        self._on_reset = on_reset
        self.measurements = 0

    def reset(self, seed: int | None = None) -> None:
        """A new episode: the range returns to step 0 (when this referee's range can do
        that, i.e. it runs in the range's controller), and earlier green outcomes and
        restores no longer count."""
        if self._on_reset is not None:
            self._on_reset(seed)
        self._green.read()
        self._actions.read()
        self._red.read()

    def measure(self, bits_sent: int = 0) -> dict[str, Any]:
        """Per-host compromise, impacted hosts, blocked subnets, green outcomes and restores
        since the last call, and `GameModel.reward_terms` over them."""
        plan, model = self.plan, self.model
        implants = implants_by_host(plan)
        compromise = np.zeros((1, model.n_hosts), dtype=np.int8)
        impacted = np.zeros((1, model.n_hosts), dtype=bool)
        states: dict[str, str] = {}
        for host in plan.hosts:
            level = host_compromise(plan, host.name, implants[host.name])
            compromise[0, host.index] = level
            states[host.name] = level.name.lower().replace("clean", "none")
            if host.mission and not data_intact(plan, host.name):
                impacted[0, host.index] = True
        green = self._green.read()
        successes = sum(1 for r in green if r.get("ok") is True)
        failures = sum(1 for r in green if r.get("ok") is False)
        restores = sum(1 for r in self._actions.read()
                       if r.get("action") == "restore" and r.get("ok"))
        # Red's own log says what it tried; only what sent traffic from a foothold (or
        # succeeded on one) counts, for comparing detection with the simulator's sensors.
        red_actions = [
            f"{r.get('action')} {r.get('target')}" for r in self._red.read()
            if r.get("source") or (r.get("ok") and r.get("action") in ("escalate", "impact"))
        ]
        terms = model.reward_terms(
            compromise, impacted, np.array([failures], dtype=np.int64),
            np.array([restores], dtype=np.int64), np.array([bits_sent], dtype=np.int64),
        )
        self.measurements += 1
        return {
            "time": time.time(),
            "compromise": states,
            "implants": {h: p for h, p in implants.items() if p},
            "impacted": [h.name for h in plan.hosts if impacted[0, h.index]],
            "blocked": blocked_subnets(plan),
            "green_successes": successes,
            "green_failures": failures,
            "restores": restores,
            "red_actions": red_actions,
            "reward_terms": {k: float(v[0]) for k, v in terms.items()},
            "reward": float(terms["total"][0]),
        }
