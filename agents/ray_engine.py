"""`cyberdial compare --engine ray`: every (scenario, algorithm, seed) run as one Ray task.

With no address the command starts a Ray of its own on this machine (`--workers` CPUs,
a temporary folder of its own) and stops it when the sweep ends, fails or is cut with
Ctrl-C; with `--address` it joins a running cluster and leaves it running.

Nothing assumes a shared filesystem. The driver sends each task the run's description
and the scenario's text as the driver read it; the task trains in a scratch folder on
its node and returns every file of the run (checkpoint, TensorBoard events, eval.csv,
the final JSON) as bytes; the driver writes them under `results/NAME/`, the final JSON
last, so a run counts as finished (and is never redone) only once all its files are
home. See docs/scale.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cyberdial.agents.compare import (
    CompareConfig,
    CompareError,
    Job,
    Outcome,
    describe_error,
    result_path,
    run_job,
)
from cyberdial.range.scenario import parse_scenario, resolve_scenario_path

logger = logging.getLogger(__name__)

RUN_CPUS = 1
"""CPUs a run asks Ray for: the learner runs on one torch thread, as the local workers do."""
RUN_RETRIES = 1
"""A run whose worker or node died is started once more elsewhere; an exception is not
retried (it would fail again)."""
POLL_SECONDS = 1.0
"""How long one wait for a finished run lasts, so Ctrl-C is seen promptly."""
CANCEL_GRACE_SECONDS = 10.0
"""How long cancelled runs get to stop by themselves before their workers are killed."""
CONNECT_SECONDS = 10.0
"""How long `--address` may take to answer a TCP connect before the command gives up."""
OBJECT_STORE_BYTES = 256 * 1024**2
"""The object store of the local Ray the command starts: results are a few MB per run."""


def run_on_node(job: Job, config: CompareConfig, scenario_text: str,
                scratch_root: str | None = None) -> dict[str, Any]:
    """One run on a Ray worker, in a scratch folder of its own: its record and its files.

    `config.results_dir` names the driver's folder, which may not exist here; the run
    writes under the scratch folder instead (in `scratch_root`, default the node's temporary
    folder) and sends everything back.
    """
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="cyberdial-run-", dir=scratch_root))
    try:
        local = replace(config, results_dir=str(scratch))
        scenario = parse_scenario(scenario_text, job.scenario)
        where = {"engine": "ray", "node": ray.get_runtime_context().get_node_id(),
                 "host": socket.gethostname(), "pid": os.getpid()}
        record = run_job(job, local, scenario=scenario, where=where)
        files = {path.relative_to(local.out_dir).as_posix(): path.read_bytes()
                 for path in sorted(local.out_dir.rglob("*")) if path.is_file()}
        return {"record": record, "files": files}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_back(config: CompareConfig, job: Job, files: dict[str, bytes]) -> None:
    """A finished run's files under the driver's results folder, the result file last."""
    out_dir = config.out_dir.resolve()
    final = result_path(config, job).resolve()
    ordered = sorted(files, key=lambda name: (out_dir / name).resolve() == final)
    for name in ordered:
        path = (out_dir / name).resolve()
        if not path.is_relative_to(out_dir):
            raise CompareError(f"run {job.key} sent a file outside its folder: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(files[name])
        partial.replace(path)  # whole or absent: resuming trusts the result file
    if not final.is_file():
        raise CompareError(f"run {job.key} came back without its result file")


def reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries for minutes)."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto", "ray://...": Ray resolves those
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise CompareError(f"cannot join the Ray cluster at {address}: nothing answers there"
                           f" ({error.strerror or error}); is `ray start --head` running?"
                           ) from None


def scenario_text(scenario: str) -> str:
    """The scenario as the driver reads it (validated before the sweep starts)."""
    return resolve_scenario_path(scenario).read_text(encoding="utf-8")


@dataclass
class RayEngine:
    """Runs as Ray tasks: a local Ray of `cpus` CPUs, or the cluster at `address`."""

    address: str | None = None
    cpus: int = 2

    def describe(self) -> str:
        if self.address:
            return f"the Ray cluster at {self.address}"
        return f"a local Ray with {self.cpus} CPUs"

    def run(self, jobs: Sequence[Job], config: CompareConfig) -> Generator[Outcome, None, None]:
        try:
            import ray
        except ImportError:
            raise CompareError("--engine ray needs Ray: pip install 'cyberdial[ray]'") from None
        temp_dir = self._start(ray)
        try:
            task = ray.remote(num_cpus=RUN_CPUS, max_retries=RUN_RETRIES)(run_on_node)
            texts = {name: ray.put(scenario_text(name)) for name in config.scenarios}
            config_ref = ray.put(config)
            # The local Ray's runs keep their scratch folders in its own folder, so a run
            # killed on Ctrl-C leaves nothing behind once that folder is removed.
            scratch_root = str(temp_dir) if temp_dir is not None else None
            refs = {task.remote(job, config_ref, texts[job.scenario], scratch_root): job
                    for job in jobs}
            remaining = list(refs)
            complete = False
            try:
                while remaining:
                    ready, remaining = ray.wait(remaining, num_returns=1, timeout=POLL_SECONDS)
                    for ref in ready:
                        job = refs.pop(ref)
                        yield self._collect(ray, ref, job, config)
                complete = True
            finally:
                if not complete:  # Ctrl-C, or the caller stopped listening
                    self._cancel(ray, remaining)
        finally:
            self._stop(ray, temp_dir)

    def _start(self, ray: Any) -> Path | None:
        """Connect to the cluster, or start a local Ray in a folder of its own."""
        common = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address:
            reachable(self.address)
            try:
                ray.init(address=self.address, **common)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError, ...
                raise CompareError(f"cannot join the Ray cluster at {self.address}:"
                                   f" {error}") from None
            return None
        # A short path: Ray's Unix sockets live under it (at most 107 bytes).
        temp_dir = Path(tempfile.mkdtemp(prefix="cyberdial-ray-", dir="/tmp"))
        try:
            # On loopback: a Ray of our own that no other machine can join or reach.
            ray.init(num_cpus=self.cpus, include_dashboard=False, _temp_dir=str(temp_dir),
                     _node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES,
                     **common)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return temp_dir

    @staticmethod
    def _collect(ray: Any, ref: Any, job: Job, config: CompareConfig) -> Outcome:
        try:
            result = ray.get(ref)
            write_back(config, job, result["files"])
            return Outcome(job, record=result["record"])
        except ray.exceptions.RayTaskError as error:  # the run raised: name its own error
            cause = error.cause if isinstance(error.cause, BaseException) else error
            return Outcome(job, error=describe_error(cause))
        except Exception as error:  # a lost worker or node, or the files could not be written
            return Outcome(job, error=describe_error(error))

    @staticmethod
    def _cancel(ray: Any, refs: Sequence[Any]) -> None:
        """Cancel runs: politely first (a running run gets KeyboardInterrupt and removes its
        scratch folder), then, after `CANCEL_GRACE_SECONDS`, by killing their workers."""
        if not refs:
            return
        for force in (False, True):
            for ref in refs:
                try:
                    ray.cancel(ref, force=force)
                except Exception as error:  # the cluster may be going down already
                    logger.debug("cancel failed: %s", error)
            if force:
                return
            try:
                _, refs = ray.wait(list(refs), num_returns=len(refs),
                                   timeout=CANCEL_GRACE_SECONDS)
            except Exception as error:
                logger.debug("waiting for cancelled runs failed: %s", error)
            if not refs:
                return

    @staticmethod
    def _stop(ray: Any, temp_dir: Path | None) -> None:
        """Disconnect; a local Ray started here is stopped (its processes end with it)."""
        try:
            ray.shutdown()
        finally:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
