"""Container hosts: a scenario's `backend: docker` hosts as Docker containers on its bridges.

The emulator sees every host the same way, Mininet host or container: a name, the
PID of a process that holds the host's network namespace, and a veth whose root
end is a port of the subnet's bridge. For a container (as in Containernet) that
PID is the container's init; its veth is created here straight into the
container's namespace by that PID, so namespace and container hosts share one
bridge, one router and every program of the range. The image `cyberdial-host`
(`HOST_IMAGE`) is reserved: the range builds it per run (an empty root file
system with this machine's Python, venv and project bind-mounted read-only) and
removes it with the run; any other image is used as the engine has it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from cyberdial.range.emulation import docker_engine
from cyberdial.range.emulation.netns import mac_for, netns_inode, processes_in
from cyberdial.range.emulation.plan import HostPlan, RangePlan
from cyberdial.range.errors import HostCommandError

logger = logging.getLogger(__name__)

# `image: cyberdial-host` in a scenario: the range's own image, built for each run.
HOST_IMAGE = docker_engine.HOST_IMAGE_REPOSITORY
# Inside a container the host's end of its link has the name a Mininet host's has.
CONTAINER_INTERFACE = "eth0"


@dataclass(frozen=True)
class DockerHost:
    """One container host: like a Mininet host, a name and the PID holding its namespace."""

    name: str
    container_id: str
    container_name: str
    pid: int
    image: str


class DockerHosts:
    """This run's container hosts on one engine: images, containers, links, removal."""

    def __init__(self, run_id: str, client: Any, url: str) -> None:
        self.run_id = run_id
        self.client = client
        self.url = url
        self.built: str | None = None  # the tag of our host image, once built

    @classmethod
    def open(cls, run_id: str) -> DockerHosts:
        """Connect to the first reachable engine (`EngineUnavailable` names the fix)."""
        if shutil.which("nsenter") is None:
            # Programs enter container hosts with it (see RangePlan.exec_prefix).
            raise HostCommandError("nsenter is missing: install Debian's util-linux")
        client, url = docker_engine.connect_url()
        return cls(run_id, client, url)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ images

    def resolve_images(self, hosts: Sequence[HostPlan]) -> dict[str, tuple[str, bool]]:
        """Scenario image name -> (image to run, ours); builds our image once if asked for.

        Nothing is pulled: the range never reaches a registry. A user's image must
        already be on the engine (`docker pull` it first).
        """
        import docker.errors

        resolved: dict[str, tuple[str, bool]] = {}
        for image in sorted({h.image for h in hosts}):
            if image == HOST_IMAGE:
                if self.built is None:
                    self.built = docker_engine.build_host_image(self.client, self.run_id)
                resolved[image] = (self.built, True)
                continue
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                raise HostCommandError(
                    f"image {image!r} is not on the Docker engine at {self.url}: run"
                    f" `docker pull {image}` first (the range never pulls), or use"
                    f" `image: {HOST_IMAGE}` for the range's own host image") from None
            resolved[image] = (image, False)
        return resolved

    # -------------------------------------------------------- containers

    def start(self, hosts: Sequence[HostPlan], images: dict[str, tuple[str, bool]],
              on_started: Callable[[DockerHost], None] | None = None) -> list[DockerHost]:
        """Start one container per host (a few at a time) from `resolve_images`' answer;
        `on_started` runs in this thread after each, so the caller can record it before
        the next failure could strike."""
        started: list[DockerHost] = []

        def run(host: HostPlan) -> DockerHost:
            image, ours = images[host.image]
            container_id, pid = docker_engine.run_host_container(
                self.client, image, self.run_id, host.name, ours=ours)
            return DockerHost(host.name, container_id,
                              docker_engine.container_name(self.run_id, host.name),
                              pid, host.image)

        with ThreadPoolExecutor(max_workers=docker_engine.PARALLEL_REQUESTS) as pool:
            futures = [pool.submit(run, host) for host in hosts]
            failure: BaseException | None = None
            for future in as_completed(futures):
                try:
                    container = future.result()
                except Exception as error:  # keep recording the others, then raise the first
                    failure = failure or error
                    continue
                started.append(container)
                if on_started is not None:
                    on_started(container)
        if failure is not None:
            raise HostCommandError(
                f"starting container hosts failed: {failure}; the engine's log says more"
                f" (ours: {docker_engine.OWN_ENGINE_DIR / 'dockerd.log'})") from failure
        order = {h.name: i for i, h in enumerate(hosts)}
        return sorted(started, key=lambda c: order[c.name])

    def attach(self, plan: RangePlan, containers: Sequence[DockerHost]) -> None:
        """Give each container its link: a veth born with one end (eth0) in the
        container's namespace, the other a port of the subnet's bridge, as a namespace
        host's: the MAC the range chose for its address (`mac_for`, so the router knows
        it without ARP) and no IPv6 link-local address on the bridge's end. The bridges
        must exist (the emulator makes them first)."""
        lines = []
        for container in containers:
            host = plan.host(container.name)
            bridge = plan.subnets[host.subnet_index].bridge
            lines += [
                f"link add {host.veth} type veth peer name {CONTAINER_INTERFACE}"
                f" address {mac_for(host.ip)} netns {container.pid}",
                f"link set {host.veth} addrgenmode none",
                f"link set {host.veth} master {bridge}",
                f"link set {host.veth} up",
            ]
        if not lines:
            return
        out = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                             capture_output=True, check=False, timeout=60)
        if out.returncode != 0:
            raise HostCommandError(f"linking container hosts failed: {out.stderr.strip()[:300]}")

    def baselines(self, containers: Sequence[DockerHost]) -> dict[str, list[int]]:
        """Each container's own processes besides its init (a user image's daemons), taken
        before any program of the range runs there; our image's is empty (only `sleep`)."""
        inodes = {netns_inode(c.pid): c for c in containers}
        found = processes_in([i for i in inodes if i is not None])
        return {inodes[inode].name: sorted(p for p in pids if p != inodes[inode].pid)
                for inode, pids in found.items() if any(p != inodes[inode].pid for p in pids)}
