"""The Docker engine, images and containers behind container hosts, all labelled by run id.

A container host is a host whose network namespace is found by its container's
PID (as in Containernet), so the emulator's links and host programs treat it
like any namespace host. This module finds a reachable engine (or, as root,
starts our own `dockerd` that never touches iptables and stops it by PID),
builds the host image locally (no registry is needed), and runs and removes
containers by the run id in their labels — never by name pattern.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyberdial.range.emulation.netns import process_start_time
from cyberdial.range.errors import CyberdialError, NotRootError

logger = logging.getLogger(__name__)

LABEL_RUN = "org.cyberdial.run"
LABEL_HOST = "org.cyberdial.host"
LABEL_MANAGED = "org.cyberdial.managed"
HOST_IMAGE_REPOSITORY = "cyberdial-host"
DEFAULT_SOCKETS = ("unix:///var/run/docker.sock",)
# Our own engine, when we start one: its socket, state and logs stay in our folders.
OWN_ENGINE_DIR = Path(os.environ.get("CYBERDIAL_DOCKER_DIR", "/run/cyberdial/docker"))
OWN_ENGINE_DATA = Path(os.environ.get("CYBERDIAL_DOCKER_DATA", "/var/lib/cyberdial/docker"))
ENGINE_START_S = 30.0
ENGINE_STOP_S = 15.0
PING_TIMEOUT_S = 3
# Containers are started and removed by a few threads at once: the engine does the
# work in parallel, and one at a time 50 containers would take ~10 s each way.
PARALLEL_REQUESTS = 8
# Folders bind-mounted read-only into the host image, so the venv's Python and the
# project run inside containers exactly as outside; the image itself is empty.
SYSTEM_MOUNTS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
IMAGE_DIRS = ("usr", "lib", "lib64", "bin", "sbin", "etc", "tmp", "proc", "sys", "dev", "root",
              "run", "var", "opt", "srv", "data")


class EngineUnavailable(CyberdialError):
    def __init__(self, tried: list[str]) -> None:
        super().__init__(
            f"no Docker engine reachable (tried {', '.join(tried)}): as root run"
            " 'make docker-engine' (installs Debian's docker.io and starts dockerd"
            " without iptables), start dockerd yourself, or set DOCKER_HOST"
        )


def own_engine_url() -> str:
    return f"unix://{OWN_ENGINE_DIR / 'docker.sock'}"


def _client(url: str) -> Any:
    import docker  # imported here: only container ranges need it

    return docker.DockerClient(base_url=url, version="auto", timeout=60)


def _answers(url: str) -> bool:
    """Whether the engine at a unix:// URL answers `GET /_ping`, asked over a plain socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PING_TIMEOUT_S)
            sock.connect(url.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def candidate_urls() -> list[str]:
    urls = []
    if os.environ.get("DOCKER_HOST"):
        urls.append(os.environ["DOCKER_HOST"])
    urls.append(own_engine_url())
    urls.extend(DEFAULT_SOCKETS)
    return list(dict.fromkeys(urls))


def connect() -> Any:
    """A client of the first engine that answers; `EngineUnavailable` names the fix."""
    return connect_url()[0]


def connect_url(urls: list[str] | None = None) -> tuple[Any, str]:
    """(client, URL) of the first engine that answers among `urls` (default: candidates).

    The URL is what a run records, so `range down` reaches the same engine later.
    """
    tried = []
    for url in urls if urls is not None else candidate_urls():
        tried.append(url)
        path = url.removeprefix("unix://")
        if url.startswith("unix://") and not Path(path).exists():
            continue
        if url.startswith("unix://") and not _answers(url):
            continue  # asked without a client: a failed client leaves its socket open
        client = None
        try:
            client = _client(url)
            client.ping()
            return client, url
        except Exception as error:  # the SDK raises several kinds; any means "not this one"
            logger.debug("engine at %s does not answer: %s", url, error)
            if client is not None:
                client.close()
    raise EngineUnavailable(tried)


def forward_policy() -> str | None:
    """The root namespace's iptables FORWARD policy (dockerd's default sets DROP)."""
    try:
        out = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return None


@dataclass
class OwnEngine:
    """A dockerd we started: `--iptables=false --ip-forward=false --bridge=none`, ours by PID."""

    pid: int
    start: int
    url: str
    # Kept so the child is waited for (and Python does not warn it is still running).
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start_engine(cls) -> OwnEngine:
        if os.geteuid() != 0:
            raise NotRootError("starting a Docker engine")
        dockerd = _which("dockerd")
        if dockerd is None:
            raise EngineUnavailable([own_engine_url(), "(dockerd is not installed)"])
        OWN_ENGINE_DIR.mkdir(parents=True, exist_ok=True)
        OWN_ENGINE_DATA.mkdir(parents=True, exist_ok=True)
        policy_before = forward_policy()
        log = (OWN_ENGINE_DIR / "dockerd.log").open("ab")
        process = subprocess.Popen(
            [
                dockerd, "--iptables=false", "--ip-forward=false", "--bridge=none",
                "--data-root", str(OWN_ENGINE_DATA), "--exec-root", str(OWN_ENGINE_DIR / "exec"),
                "--pidfile", str(OWN_ENGINE_DIR / "dockerd.pid"), "-H", own_engine_url(),
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        engine = cls(pid=process.pid, start=process_start_time(process.pid) or 0,
                     url=own_engine_url(), process=process)
        (OWN_ENGINE_DIR / "engine.pid").write_text(f"{engine.pid} {engine.start}\n")
        deadline = time.monotonic() + ENGINE_START_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log_path = OWN_ENGINE_DIR / "dockerd.log"
                raise CyberdialError(f"dockerd exited with {process.returncode}: see {log_path}")
            if _answers(engine.url):
                break
            time.sleep(0.2)
        else:
            engine.stop()
            raise CyberdialError(f"dockerd did not answer within {ENGINE_START_S:g} s")
        policy_after = forward_policy()
        if policy_before is not None and policy_after != policy_before:
            # Bridged traffic between our namespaces crosses FORWARD here.
            subprocess.run(["iptables", "-P", "FORWARD", policy_before], check=False, timeout=10)
            logger.warning("dockerd changed FORWARD to %s; set it back to %s",
                           policy_after, policy_before)
        return engine

    @classmethod
    def find(cls) -> OwnEngine | None:
        """The engine we started earlier, if it is still that very process."""
        try:
            pid_text, start_text = (OWN_ENGINE_DIR / "engine.pid").read_text().split()
            pid, start = int(pid_text), int(start_text)
        except (OSError, ValueError):
            return None
        if process_start_time(pid) != start:
            return None
        return cls(pid=pid, start=start, url=own_engine_url())

    def stop(self) -> None:
        if process_start_time(self.pid) != self.start:
            self._wait()
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_STOP_S
        while time.monotonic() < deadline and process_start_time(self.pid) == self.start:
            if self.process is not None and self.process.poll() is not None:
                break
            _reap(self.pid)
            time.sleep(0.1)
        if process_start_time(self.pid) == self.start:
            os.kill(self.pid, signal.SIGKILL)
            _reap(self.pid)
        self._wait()
        (OWN_ENGINE_DIR / "engine.pid").unlink(missing_ok=True)

    def _wait(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=ENGINE_STOP_S)
            except subprocess.TimeoutExpired:
                logger.warning("dockerd %d did not exit", self.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _which(name: str) -> str | None:
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"):
        path = Path(folder) / name
        if path.exists():
            return str(path)
    return None


def host_mounts() -> dict[str, dict[str, str]]:
    """Read-only bind mounts that make the venv's Python and the project work inside."""
    import cyberdial

    sources = [*SYSTEM_MOUNTS]
    python = Path(os.path.realpath(sys.executable))
    sources.append(str(python.parents[1]))  # the interpreter's prefix (e.g. pyenv's)
    sources.append(sys.prefix)  # the venv
    sources.append(str(Path(cyberdial.__file__).resolve().parents[1]))  # the project (editable)
    mounts: dict[str, dict[str, str]] = {}
    for source in sources:
        if Path(source).exists() and not any(
            source == m or source.startswith(m.rstrip("/") + "/") for m in mounts
        ):
            mounts[source] = {"bind": source, "mode": "ro"}
    return mounts


def _empty_rootfs_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in IMAGE_DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
    return buffer.getvalue()


def build_host_image(client: Any, run_id: str) -> str:
    """Import an empty root filesystem as this run's host image; returns its tag."""
    tag = f"{HOST_IMAGE_REPOSITORY}:{run_id}"
    client.api.import_image_from_data(
        _empty_rootfs_tar(), repository=HOST_IMAGE_REPOSITORY, tag=run_id,
        changes=[f'LABEL {LABEL_RUN}="{run_id}" {LABEL_MANAGED}="1"'],
    )
    return tag


def container_name(run_id: str, host: str) -> str:
    """A container's name carries the run id (removal still goes by label, never by name)."""
    return f"cd-{run_id}-{host}"


def run_host_container(client: Any, image: str, run_id: str, host: str, *,
                       ours: bool) -> tuple[str, int]:
    """Start one host's container with no network of Docker's; returns (id, PID).

    The emulator moves the host's veth into the namespace of that PID. Our image
    (`ours`) gets the read-only mounts and a `sleep` that holds the namespace; a
    user's image (`image:` in the scenario) runs its own long-running command.
    """
    container = client.containers.run(
        image,
        command=["/bin/sleep", "infinity"] if ours else None,
        name=container_name(run_id, host),
        hostname=host,
        labels={LABEL_RUN: run_id, LABEL_HOST: host, LABEL_MANAGED: "1"},
        network_mode="none",
        volumes=host_mounts() if ours else None,
        detach=True,
        init=False,
    )
    container.reload()
    pid = int(container.attrs["State"]["Pid"])
    if pid <= 0:
        raise CyberdialError(f"container for {host} did not start: {container.status}")
    return container.id, pid


@dataclass
class RemovalReport:
    containers: int = 0
    images: int = 0
    networks: int = 0


def run_objects(client: Any, run_id: str) -> dict[str, list[str]]:
    """This run's containers, images and networks on the engine (ids), by label."""
    selector = {"label": f"{LABEL_RUN}={run_id}"}
    return {
        "containers": [c.id for c in client.containers.list(all=True, filters=selector)],
        "images": [i.id for i in client.images.list(filters=selector)],
        "networks": [n.id for n in client.networks.list(filters=selector)],
    }


def remove_run(client: Any, run_id: str) -> RemovalReport:
    """Remove this run's containers, networks and the images it built, found by label only.

    The range makes no Docker networks (its containers have `network_mode: none` and
    join the range's own bridges), but any labelled with the run id go too.
    """
    report = RemovalReport()
    selector = {"label": f"{LABEL_RUN}={run_id}"}
    containers = client.containers.list(all=True, filters=selector)

    def remove(container: Any) -> None:
        container.remove(force=True)

    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        list(pool.map(remove, containers))  # list(): re-raise the first failure
    report.containers = len(containers)
    for network in client.networks.list(filters=selector):
        network.remove()
        report.networks += 1
    for image in client.images.list(filters=selector):
        client.images.remove(image.id, force=True)
        report.images += 1
    return report
