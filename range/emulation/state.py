"""What a run made, on disk, and how to remove exactly that: by run id and PID.

Every run has a directory `RUNS_ROOT/<run_id>/` holding `state.json` (bridges,
veths, namespaces' holder processes, program PIDs, each PID with its start time
so a recycled PID is never killed) and `pids/*.pids` (processes host programs
started, e.g. implants). `teardown_run` reads them back, so `cyberdial range down
RUN_ID` works after the controller died. Container hosts are recorded with the
engine's URL and removed through it by the run's label. Nothing is ever matched
by pattern.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cyberdial.range.emulation.netns import netns_inode, process_start_time, processes_in
from cyberdial.range.emulation.plan import check_run_id
from cyberdial.range.errors import CyberdialError

logger = logging.getLogger(__name__)

RUNS_ROOT = Path(os.environ.get("CYBERDIAL_RUNS", "/run/cyberdial"))
STATE_FILE = "state.json"
KILL_WAIT_S = 5.0
LINK_WAIT_S = 30.0
# Processes that hold a namespace of their own (a bridge's shell runs in the root
# namespace): Mininet shells, and the init of each container host.
NAMESPACE_ROLES = ("host", "router", "container")


class RunNotFound(CyberdialError):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"no run {run_id} on this machine: `cyberdial range status` lists the runs"
        )


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start: int
    role: str
    name: str = ""

    @classmethod
    def of(cls, pid: int, role: str, name: str = "") -> ProcessRecord:
        return cls(pid=pid, start=process_start_time(pid) or 0, role=role, name=name)

    def alive(self) -> bool:
        """Still this very process (same start time), and not a zombie."""
        return _alive(self.pid, self.start)


def _alive(pid: int, start: int) -> bool:
    if process_start_time(pid) != start:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"
    except OSError:
        return False


@dataclass
class RunState:
    run_id: str
    scenario: str
    run_dir: str
    logs_dir: str
    created: float
    controller: ProcessRecord
    status: str = "starting"  # starting | up | stopping
    bridges: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)
    shells: list[ProcessRecord] = field(default_factory=list)  # Mininet node shells
    programs: list[ProcessRecord] = field(default_factory=list)
    netns: dict[str, int] = field(default_factory=dict)  # host -> netns inode
    endpoints: dict[str, str] = field(default_factory=dict)
    hosts: int = 0
    # Container hosts: the engine they run on, and container name -> id. Their inits
    # are in `shells` (role "container"), so a dead engine still cannot keep them.
    engine_url: str = ""
    containers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / STATE_FILE

    def save(self) -> None:
        """Atomic write: a crash mid-save leaves the previous complete state."""
        data = asdict(self)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, run_id: str, runs_root: Path | None = None) -> RunState:
        check_run_id(run_id)
        path = (runs_root or RUNS_ROOT) / run_id / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunNotFound(run_id) from None
        data["controller"] = ProcessRecord(**data["controller"])
        data["shells"] = [ProcessRecord(**p) for p in data["shells"]]
        data["programs"] = [ProcessRecord(**p) for p in data["programs"]]
        return cls(**data)


def record_pid(run_dir: str | Path, file: str, pid: int, role: str, name: str = "") -> None:
    """Append a process a host program started (an implant) to the run's PID records."""
    line = json.dumps(asdict(ProcessRecord.of(pid, role, name)))
    directory = Path(run_dir) / "pids"
    directory.mkdir(parents=True, exist_ok=True)
    # One write of a short line with O_APPEND: concurrent writers never interleave.
    fd = os.open(directory / f"{file}.pids", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def recorded_pids(run_dir: str | Path) -> list[ProcessRecord]:
    records: list[ProcessRecord] = []
    directory = Path(run_dir) / "pids"
    if not directory.is_dir():
        return records
    for file in sorted(directory.glob("*.pids")):
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(ProcessRecord(**json.loads(line)))
            except (ValueError, TypeError):
                logger.warning("ignoring a damaged PID record in %s", file)
    return records


def list_runs(runs_root: Path | None = None) -> list[RunState]:
    root = runs_root or RUNS_ROOT
    runs = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if (entry / STATE_FILE).exists():
                try:
                    runs.append(RunState.load(entry.name, root))
                except (CyberdialError, ValueError, TypeError, KeyError):
                    logger.warning("unreadable run state in %s", entry)
    return runs


def kill_all(records: list[ProcessRecord], wait_s: float = KILL_WAIT_S) -> int:
    """SIGKILL each recorded process that is still itself; wait until all are gone."""
    targets = [r for r in records if r.alive() and r.pid != os.getpid()]
    for record in targets:
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(r.alive() for r in targets):
        time.sleep(0.02)
    left = [r for r in targets if r.alive()]
    if left:
        logger.warning("processes still alive after SIGKILL: %s", [r.pid for r in left])
    return len(targets)


def existing_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    names = set()
    for line in out.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def delete_links(names: list[str]) -> None:
    """Delete root-namespace links by exact name, in one `ip -batch`."""
    if not names:
        return
    batch = "".join(f"link del {name}\n" for name in names)
    subprocess.run(["ip", "-force", "-batch", "-"], input=batch, text=True, capture_output=True,
                   check=False)


@dataclass
class TeardownReport:
    run_id: str
    killed: int = 0
    links_deleted: int = 0
    links_left: list[str] = field(default_factory=list)
    containers_removed: int = 0
    containers_left: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


def teardown(state: RunState, *, keep_controller: bool = True) -> TeardownReport:
    """Remove everything `state` lists: processes, namespaces, links, bridges, run dir."""
    started = time.monotonic()
    report = TeardownReport(state.run_id)
    state.status = "stopping"
    try:
        state.save()
    except OSError:
        pass
    if not keep_controller and state.controller.pid != os.getpid():
        report.killed += kill_all([state.controller])
    # Processes inside our namespaces, counted only while the namespace's holder
    # (our shell, same PID and start time) is alive: then the inode is surely ours.
    # Never the namespace we or init live in: a bridge's shell, for one, sits in the
    # root namespace, and sweeping that would kill the machine's own processes.
    outside = {netns_inode(os.getpid()), netns_inode(1)}
    live_inodes = {
        inode for shell in state.shells if shell.role in NAMESPACE_ROLES and shell.alive()
        for inode in [netns_inode(shell.pid)] if inode is not None and inode not in outside
    }
    shell_pids = {shell.pid for shell in state.shells}
    inside = [
        ProcessRecord.of(pid, "in-namespace")
        for pids in processes_in(live_inodes).values() for pid in pids if pid not in shell_pids
    ]
    report.killed += kill_all(state.programs + recorded_pids(state.run_dir) + inside)
    report.phases["processes_s"] = time.monotonic() - started
    if state.engine_url:
        _remove_containers(state, report)
        report.phases["containers_s"] = time.monotonic() - started
    report.killed += kill_all(state.shells)
    report.phases["shells_s"] = time.monotonic() - started
    links = existing_links()
    ours = [name for name in [*state.veths, *state.bridges] if name in links]
    delete_links(ours)
    report.links_deleted = len(ours)
    report.phases["links_s"] = time.monotonic() - started
    # Namespaces die asynchronously after their last process: wait for their veths.
    prefix = f"c{state.run_id}"
    deadline = time.monotonic() + LINK_WAIT_S
    while True:
        report.links_left = sorted(n for n in existing_links() if n.startswith(prefix))
        if not report.links_left or time.monotonic() > deadline:
            break
        delete_links(report.links_left)
        time.sleep(0.1)
    report.phases["links_gone_s"] = time.monotonic() - started
    if report.links_left:
        logger.warning("links left after teardown of %s: %s", state.run_id, report.links_left)
    elif report.containers_left:
        # Keep state.json: it is how `range down RUN_ID` finds the engine next time.
        logger.warning("containers of %s left on %s (engine unreachable?): %s; run"
                       " `cyberdial range down %s` again once the engine answers",
                       state.run_id, state.engine_url, report.containers_left, state.run_id)
    else:
        shutil.rmtree(state.run_dir, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _remove_containers(state: RunState, report: TeardownReport) -> None:
    """Remove the run's containers, networks and built images by its label, on the engine
    the run recorded (or, if that one moved, the first that answers)."""
    from cyberdial.range.emulation import docker_engine  # only container runs need the SDK

    try:
        urls = list(dict.fromkeys([state.engine_url, *docker_engine.candidate_urls()]))
        client, url = docker_engine.connect_url(urls)
    except CyberdialError as error:
        report.containers_left = sorted(state.containers)
        logger.warning("cannot reach the engine of run %s: %s", state.run_id, error)
        return
    try:
        removal = docker_engine.remove_run(client, state.run_id)
        report.containers_removed = removal.containers
        left = docker_engine.run_objects(client, state.run_id)
        report.containers_left = sorted(left["containers"] + left["images"] + left["networks"])
    except Exception as error:  # the SDK raises several kinds: report, keep the state
        report.containers_left = sorted(state.containers)
        logger.warning("removing the containers of %s on %s failed: %s", state.run_id, url,
                       error)
    finally:
        client.close()


def teardown_run(run_id: str, runs_root: Path | None = None) -> TeardownReport:
    """`cyberdial range down RUN_ID`: works whether or not the controller still lives."""
    state = RunState.load(run_id, runs_root)
    return teardown(state, keep_controller=False)
