"""Network-namespace plumbing shared by the range controller and the host programs.

One process serves many hosts: it enters a host's network namespace with
`setns` only to create a socket there (a socket stays in the namespace it was
made in) and then returns to its own. Also: which processes live in which
namespace, and which TCP ports a namespace listens on, read from /proc. Stdlib
only, so host programs that import it start fast.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_STATE_LISTEN = 10
_MAX_NETLINK_READS = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_home_fd: int | None = None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns failed: {os.strerror(error)} (needs root)")


def _home() -> int:
    """The namespace this process started in; opened once, before any switch."""
    global _home_fd
    with _lock:
        if _home_fd is None:
            _home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return _home_fd


@contextmanager
def in_netns(pid: int) -> Iterator[None]:
    """Run the block inside the network namespace of `pid` (this thread only)."""
    home = _home()
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(fd)


def socket_in(pid: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A new socket that lives in the network namespace of `pid`."""
    with in_netns(pid):
        return socket.socket(family, kind, proto)


def netns_inode(pid: int) -> int | None:
    """The inode that names the network namespace of `pid`, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of stat), None if gone.

    A (pid, start time) pair names a process for good: a recycled PID differs.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def processes_in(inodes: Iterable[int]) -> dict[int, list[int]]:
    """PIDs living in each of the given network namespaces (by inode)."""
    wanted = set(inodes)
    found: dict[int, list[int]] = {inode: [] for inode in wanted}
    for pid in all_pids():
        inode = netns_inode(pid)
        if inode in wanted:
            found[inode].append(pid)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def listening_ports(pid: int) -> set[int]:
    """IPv4 TCP ports listening in the network namespace of `pid`.

    Asked of the kernel over NETLINK_SOCK_DIAG (as `ss` does), from a socket made in
    that namespace: reading /proc/PID/net/tcp instead walks the machine-wide
    connection table and costs tens of milliseconds per host.
    """
    with in_netns(pid):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    ports: set[int] = set()
    with sock:
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0,
                              1 << _TCP_STATE_LISTEN) + bytes(48)
        header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                             _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        sock.send(header + request)
        for _ in range(_MAX_NETLINK_READS):
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return ports
                if kind == _NLMSG_ERROR:
                    raise OSError("sock_diag refused the listening-socket query")
                # inet_diag_msg: family, state, timer, retrans, then sport (big endian).
                ports.add(struct.unpack_from("!H", data, offset + 16 + 4)[0])
                offset += (length + 3) & ~3
            if not data:
                break
    return ports


def raise_fd_limit() -> None:
    """One process holds sockets for hundreds of hosts: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
