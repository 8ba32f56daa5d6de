"""How host-side keys travel: never through a file a host can open.

The controller makes the run's master secret (`HostKeys`) in memory. Each
sensor and actuator reads its own derived key from its stdin, a pipe the
controller writes once and closes (`read_program_key`). A bridge started later
(`cyberdial bridge RUN_ID`) asks the controller for the master secret over an
abstract unix socket (`KeyService`, `fetch_host_keys`; the rules of such sockets
are controller.py's): abstract sockets belong to a network namespace, so
processes in the range's hosts (red's implants, a container's image) cannot even
reach it, and the controller answers only a peer of its own user (SO_PEERCRED).
What this does not stop: a root process that leaves its host's namespaces (setns)
or reads another process's memory (ptrace); docs/protocol.md says so.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time
from collections.abc import Collection
from typing import BinaryIO

from cyberdial.range.emulation.controller import OwnUserService, connect_to_controller, read_line
from cyberdial.range.emulation.plan import RangePlan
from cyberdial.range.errors import CyberdialError
from cyberdial.range.wire import KEY_BYTES, Hello, HostKeys

logger = logging.getLogger(__name__)

KEY_LINE_PREFIX = b"cyberdial-key "
# A key line is short; never read more than this from a pipe or socket.
MAX_KEY_LINE = 256
FETCH_TIMEOUT_S = 5.0
# The programs that talk to the bridge, and so get a key: sensors and actuators, and
# red and green, which follow the bridge's step clock.
KEYED_ROLES = ("sensor", "actuator", "red", "green")


class HostKeysUnavailable(CyberdialError):
    """The run's host keys cannot be had (its controller is gone, or refuses us)."""


def expected_peers(plan: RangePlan, roles: Collection[str] = KEYED_ROLES) -> dict[str, Hello]:
    """Every keyed program a range of `plan` runs (of `roles`), as its hello says: a sensor
    and an actuator per subnet, green per subnet with users, one red."""
    peers: dict[str, Hello] = {}
    for subnet in plan.subnets:
        hosts = tuple(h.name for h in plan.hosts_in(subnet.name))
        for role in ("sensor", "actuator"):
            if role in roles:
                peers[f"{role}-{subnet.name}"] = Hello(role=role, subnet=subnet.name, hosts=hosts)
        if "green" in roles and any(plan.host(h).user for h in hosts):
            peers[f"green-{subnet.name}"] = Hello(role="green", subnet=subnet.name)
    if "red" in roles:
        peers["red"] = Hello(role="red")
    return peers


def key_socket_address(run_id: str) -> str:
    """The abstract unix socket of a run's key service (reachable only from the root netns)."""
    return f"\0cyberdial-keys-{run_id}"


def key_line(key: bytes) -> bytes:
    return KEY_LINE_PREFIX + key.hex().encode() + b"\n"


def parse_key_line(data: bytes) -> bytes:
    """The key in one `cyberdial-key HEX` line; ValueError if it is not one."""
    line = data.split(b"\n", 1)[0].strip()
    if not line.startswith(KEY_LINE_PREFIX):
        raise ValueError("not a key line")
    key = bytes.fromhex(line[len(KEY_LINE_PREFIX):].decode("ascii"))
    if len(key) < KEY_BYTES:
        raise ValueError("key too short")
    return key


def read_program_key(stream: BinaryIO | None = None, timeout_s: float = 10.0) -> bytes:
    """A program's own key from its stdin (the controller's pipe); one line, bounded."""
    stream = stream if stream is not None else sys.stdin.buffer
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data and len(data) < MAX_KEY_LINE:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, MAX_KEY_LINE - len(data))
        if not chunk:
            break
        data += chunk
    try:
        return parse_key_line(data)
    except ValueError:
        raise HostKeysUnavailable(
            "this program reads its key from stdin, as the range controller starts it:"
            " start the range with `cyberdial range up`") from None


class KeyService(OwnUserService):
    """The controller's side: hands the master secret to a bridge of the same user."""

    def __init__(self, keys: HostKeys) -> None:
        super().__init__(key_socket_address(keys.run_id), self._serve)
        self.keys = keys

    def _serve(self, conn: socket.socket) -> bool:
        conn.sendall(key_line(self.keys.master))
        return True


def fetch_host_keys(run_id: str, controller_pid: int | None = None,
                    timeout_s: float = FETCH_TIMEOUT_S) -> HostKeys:
    """Ask the run's controller for its master secret (the bridge does this at start).

    With `controller_pid`, the answering process must be that one (SO_PEERCRED):
    nobody else who bound the name first can hand us a key of their own.
    """
    with connect_to_controller(key_socket_address(run_id), run_id, controller_pid, timeout_s,
                               HostKeysUnavailable) as sock:
        try:
            data = read_line(sock, MAX_KEY_LINE)
        except OSError:
            data = b""
    try:
        return HostKeys(run_id, parse_key_line(data))
    except ValueError:
        raise HostKeysUnavailable(
            f"the controller of run {run_id} refused its host keys: run the bridge as the"
            " user that ran `cyberdial range up`") from None
