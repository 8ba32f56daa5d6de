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
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"

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
    """TCP ports listening in the network namespace of `pid` (from /proc/PID/net/tcp*)."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as file:
                next(file, None)
                for line in file:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def raise_fd_limit() -> None:
    """One process holds sockets for hundreds of hosts: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
