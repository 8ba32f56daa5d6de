"""Emulated episodes on N ranges at once, for `cyberdial validate --ranges N`.

Each range lives in a worker process of its own: its own run id, namespaces, bridges,
nft tables, bridge thread and copy of the policy (a lab holds ZeroMQ sockets and
Mininet state that must not be shared between threads). The parent names every range
before its worker builds it; once all are up it hands out episodes one at a time to
whichever range is free, and writes what they play into one recording in episode
(seed) order, whichever range played them. Ctrl-C, SIGTERM or an error takes every
range down; whatever a worker that died leaves behind, the parent removes by its run
id. `check_ranges` refuses, before anything is built, more ranges than the machine
can hold.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from cyberdial.agents.baselines import BatchPolicy
from cyberdial.agents.drill import EmulatedDrillRange, run_drill
from cyberdial.agents.recording import EpisodeEnd, Recorder, StepRecord
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario

logger = logging.getLogger(__name__)

MIB = 2**20
GIB = 2**30
# What one range holds besides its worker, rounded up from `bench/range_speed.py tiny
# small large` (PSS on the 2-core machine): 0.30-0.71 MiB per host (its shell and a
# share of the router's and the bridges' shells) and 36-39 MiB per host program (per
# subnet one services, sensor, actuator and, with users, green process; one red).
HOST_MIB = 0.75
PROGRAM_MIB = 40.0
# Memory left to everything else on the machine.
RESERVE_MIB = 1024
# A worker that sends nothing (no step, no episode end, not up) for this long is hung.
SILENT_WORKER_S = 300.0
# How long a worker may take to take its range down before it is killed.
STOP_WAIT_S = 120.0

# seed -> (policy, model); picklable (a module-level function or a partial of one).
PolicyFactory = Callable[[int], tuple[BatchPolicy, GameModel]]


# ------------------------------------------------------------------ capacity


def range_programs(scenario: Scenario) -> int:
    """Host programs a range of `scenario` runs (as `Range._start_programs` starts them):
    services, sensor and actuator per subnet, green per subnet with users, red, and the
    launcher that forks them."""
    with_users = {host.subnet for host in scenario.all_hosts if host.user}
    return 3 * len(scenario.subnets) + len(with_users) + 2


def _meminfo(key: str) -> int:
    with open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    return 0


def _own_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Capacity:
    """What one range of a scenario needs and what the machine has, in bytes and cores."""

    scenario: str
    hosts: int
    programs: int
    worker_bytes: int  # a worker: Python with the policy loaded (this process's RSS)
    available_bytes: int  # MemAvailable
    cpus: int  # cores this process may run on

    @property
    def range_bytes(self) -> int:
        return int(self.worker_bytes + self.hosts * HOST_MIB * MIB
                   + self.programs * PROGRAM_MIB * MIB)

    @property
    def usable_bytes(self) -> int:
        return max(0, self.available_bytes - RESERVE_MIB * MIB)

    @property
    def most_ranges(self) -> int:
        return min(self.cpus, self.usable_bytes // max(self.range_bytes, 1))


def measure_capacity(scenario: Scenario, worker_bytes: int | None = None) -> Capacity:
    """The machine now; call it with the policy loaded, so this process weighs as a worker."""
    return Capacity(
        scenario=scenario.name, hosts=len(scenario.all_hosts),
        programs=range_programs(scenario),
        worker_bytes=_own_rss() if worker_bytes is None else worker_bytes,
        available_bytes=_meminfo("MemAvailable"), cpus=len(os.sched_getaffinity(0)))


def check_ranges(ranges: int, episodes: int, capacity: Capacity) -> None:
    """Refuse, with what to do instead, `ranges` the episodes or the machine cannot use."""
    if ranges < 1:
        raise CyberdialError(f"--ranges {ranges}: at least one range is needed")
    if ranges > episodes:
        raise CyberdialError(
            f"--ranges {ranges} is more than --episodes {episodes}: every range plays at least"
            f" one episode; use --ranges {episodes} or more episodes")
    most = capacity.most_ranges
    fit = (f"use --ranges {most} or fewer" if most >= 1
           else "free memory or validate a smaller scenario")
    if ranges > capacity.cpus:
        # Each range steps as fast as its hosts allow; more ranges than cores only slow
        # every range's hosts (green's request timeouts, the sensors' step deadlines),
        # which changes the game being validated.
        raise CyberdialError(
            f"--ranges {ranges}: this machine gives {capacity.cpus} CPU cores to ranges that"
            f" each keep one busy; {fit}")
    need = ranges * capacity.range_bytes
    if need > capacity.usable_bytes:
        raise CyberdialError(
            f"--ranges {ranges}: {ranges} ranges of {capacity.scenario} need about"
            f" {need / GIB:.1f} GiB ({capacity.worker_bytes / MIB:.0f} MiB worker,"
            f" {capacity.hosts} hosts and {capacity.programs} programs each) but"
            f" {capacity.usable_bytes / GIB:.1f} GiB is free (MemAvailable less"
            f" {RESERVE_MIB} MiB kept for the rest of the machine); {fit}")


# -------------------------------------------------------------------- worker


class _PipeSink:
    """A worker's `RecordSink`: every step and episode end goes to the parent."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.closed = False  # once stopping, nothing more is sent: the parent no longer reads

    def step(self, record: StepRecord) -> None:
        if not self.closed:
            self.connection.send(("step", record.model_dump_json()))

    def episode_end(self, record: EpisodeEnd) -> None:
        if not self.closed:
            self.connection.send(("end", record.model_dump_json()))


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def range_worker(connection: Connection, make_policy: PolicyFactory, seed: int,
                 reseed: bool, workdir: Path, run_id: str) -> None:
    """One range's process: bring the range up, play the episodes the parent sends
    (None: no more), take the range down. SIGTERM takes it down at once."""
    sink = _PipeSink(connection)

    def stop(signum: int, frame: object) -> None:
        sink.closed = True
        # A second signal must not cut the teardown short.
        _ignore_stop_signals()
        raise KeyboardInterrupt

    # Ctrl-C is the parent's to take; it tells its workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop)
    try:
        policy, model = make_policy(seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            # N ranges share the cores; a policy's small forward passes gain nothing from
            # intra-op threads fighting the hosts' programs for them.
            torch.set_num_threads(1)
        with EmulatedDrillRange(model, workdir, step_period_s=0.0, run_id=run_id) as emulated:
            try:
                connection.send(("up", emulated.run_id))
                while (episode := connection.recv()) is not None:
                    if reseed:
                        policy, _ = make_policy(seed + episode)
                    run_drill(emulated, policy, 1, seed, sink, first_episode=episode)
            finally:
                _ignore_stop_signals()  # the range goes down now: nothing may interrupt that
        connection.send(("down", run_id))
    except KeyboardInterrupt:
        return
    except (EOFError, BrokenPipeError):
        return  # the parent is gone; the range is down already
    except CyberdialError as error:
        _send_error(connection, f"range {run_id}: {error}")
    except BaseException as error:
        # Not a user's mistake: keep the traceback in a file, give the parent one line.
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / "error.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        _send_error(connection, f"range {run_id} failed: {type(error).__name__}: {error}"
                                f" (traceback in {log})")


def _send_error(connection: Connection, text: str) -> None:
    with contextlib.suppress(OSError):
        connection.send(("error", text))


# -------------------------------------------------------------------- parent


@dataclass
class _Worker:
    index: int
    run_id: str
    process: BaseProcess
    connection: Connection
    heard: float
    episode: int | None = None
    up: bool = False
    done: bool = False  # told there is nothing more to play
    down: bool = False  # said its range is down


@dataclass
class _Episodes:
    """Episodes played out of order, held until every earlier one is written."""

    recorder: Recorder
    next_to_write: int
    steps: dict[int, list[StepRecord]] = field(default_factory=dict)
    ends: dict[int, EpisodeEnd] = field(default_factory=dict)
    written: int = 0

    def flush(self) -> None:
        while self.next_to_write in self.ends:
            for record in self.steps.pop(self.next_to_write, []):
                self.recorder.step(record)
            self.recorder.episode_end(self.ends.pop(self.next_to_write))
            self.next_to_write += 1
            self.written += 1


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while every range goes down (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = (signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def play_on_ranges(
    make_policy: PolicyFactory,
    *,
    ranges: int,
    episodes: int,
    seed: int,
    recorder: Recorder,
    workdir: Path,
    run_ids: list[str],
    reseed: bool = False,
    on_up: Callable[[str], None] | None = None,
    on_episode: Callable[[EpisodeEnd, str], None] | None = None,
) -> None:
    """Play episodes 0..episodes-1 (seed + episode each) on `ranges` emulated ranges at
    once, named by `run_ids`, into `recorder` in episode order. With `reseed` the policy
    is made afresh for each episode from its seed (`make_policy(seed + episode)`), so
    a random policy's draws do not depend on which range played the episode. Every
    range is down when this returns or raises."""
    if len(run_ids) != ranges or len(set(run_ids)) != ranges:
        raise ValueError("one distinct run id per range")
    context = multiprocessing.get_context("spawn")  # never fork a process holding torch
    workers: list[_Worker] = []
    episodes_state = _Episodes(recorder, next_to_write=0)
    try:
        for index, run_id in enumerate(run_ids):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=range_worker, name=f"range-{run_id}",
                args=(child_end, make_policy, seed, reseed, workdir / run_id, run_id))
            with _sigint_ignored():
                # The worker starts with Ctrl-C ignored (a terminal's reaches the whole
                # process group): the parent takes it and stops its workers itself.
                process.start()
            child_end.close()
            workers.append(_Worker(index, run_id, process, parent_end, time.monotonic()))
        _serve(workers, episodes_state, episodes, on_up, on_episode)
    finally:
        with _stop_signals_held():
            _stop_all(workers)


def _serve(workers: list[_Worker], played: _Episodes, episodes: int,
           on_up: Callable[[str], None] | None,
           on_episode: Callable[[EpisodeEnd, str], None] | None) -> None:
    handed = 0

    def hand_out(worker: _Worker) -> None:
        nonlocal handed
        if handed < episodes:
            worker.episode = handed
            worker.connection.send(handed)
            handed += 1
        else:
            worker.episode = None
            worker.done = True
            worker.connection.send(None)

    while not all(w.down for w in workers):
        live = [w for w in workers if not w.down]
        wait([w.connection for w in live] + [w.process.sentinel for w in live], timeout=1.0)
        now = time.monotonic()
        for worker in live:
            while not worker.down and worker.connection.poll():
                try:
                    kind, payload = worker.connection.recv()
                except EOFError:
                    break
                worker.heard = now
                if kind == "up":
                    worker.up = True
                    if on_up is not None:
                        on_up(worker.run_id)
                    # Episodes go out once every range is up, so each plays at least one
                    # (a range up early would otherwise take them all on a small run).
                    if all(w.up for w in workers):
                        for ready in workers:
                            hand_out(ready)
                elif kind == "step":
                    record = StepRecord.model_validate_json(payload)
                    played.steps.setdefault(record.episode, []).append(record)
                elif kind == "end":
                    end = EpisodeEnd.model_validate_json(payload)
                    played.ends[end.episode] = end
                    played.flush()
                    if on_episode is not None:
                        on_episode(end, worker.run_id)
                    hand_out(worker)
                elif kind == "down":
                    worker.down = True
                elif kind == "error":
                    raise CyberdialError(str(payload))
            if worker.down:
                continue
            if not worker.process.is_alive():
                raise CyberdialError(
                    f"the worker of range {worker.run_id} stopped (exit code"
                    f" {worker.process.exitcode}) before its range was down; it is taken down"
                    f" now (or run `cyberdial range down {worker.run_id}`)")
            if now - worker.heard > SILENT_WORKER_S:
                doing = (f"episode {worker.episode}" if worker.episode is not None
                         else "bringing its range up" if not worker.up else "going down")
                raise CyberdialError(
                    f"range {worker.run_id} said nothing for {SILENT_WORKER_S:.0f} s"
                    f" ({doing}); every range is taken down")
    if played.written != episodes:
        raise CyberdialError(f"only {played.written} of {episodes} emulated episodes came back")


def _stop_all(workers: list[_Worker]) -> None:
    """Every worker's range down: asked, then SIGTERM, then SIGKILL and teardown by run id."""
    from cyberdial.range.emulation.state import RUNS_ROOT, RunNotFound, teardown_run

    for worker in workers:
        if worker.process.is_alive() and not worker.done and worker.process.pid is not None:
            os.kill(worker.process.pid, signal.SIGTERM)  # our own child, by its PID
    deadline = time.monotonic() + STOP_WAIT_S
    for worker in workers:
        # Read what it still sends so a full pipe never holds it up.
        while worker.process.is_alive() and time.monotonic() < deadline:
            _drain(worker.connection)
            worker.process.join(0.2)
        if worker.process.is_alive():
            logger.warning("range %s did not go down in %.0f s: killing its worker",
                           worker.run_id, STOP_WAIT_S)
            worker.process.kill()
            worker.process.join(10)
        worker.connection.close()
    for worker in workers:
        if (RUNS_ROOT / worker.run_id).exists():
            logger.warning("range %s was left behind by its worker: taking it down",
                           worker.run_id)
            with contextlib.suppress(RunNotFound):
                teardown_run(worker.run_id)


def _drain(connection: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        while connection.poll():
            message: Any = connection.recv()
            del message
