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
import time
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


def wait_for_own_namespaces(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every process in `pids` has a network namespace other than ours.

    A namespace holder (`mnexec -dn`) is a PID as soon as it is forked, but it makes its
    namespace a moment later: a link sent to `netns PID` before then lands in the root
    namespace (and fails there, `File exists`, on its eth0). Returns the PIDs that did
    not get one: exited, or still in ours after `timeout` seconds (empty: all did).
    """
    own = netns_inode(os.getpid())
    pending, failed = list(pids), []
    deadline = time.monotonic() + timeout
    while True:
        waiting = []
        for pid in pending:
            inode = netns_inode(pid)
            if inode is None or process_state(pid) in (None, "Z", "X"):
                failed.append(pid)  # exited (a zombie's namespace cannot be read)
            elif inode == own:
                waiting.append(pid)
        pending = waiting
        if not pending or time.monotonic() >= deadline:
            return failed + pending
        time.sleep(0.002)


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onward of /proc/PID/stat (state first), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, ...), None if gone."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of stat), None if gone.

    A (pid, start time) pair names a process for good: a recycled PID differs.
    """
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
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


# ------------------------------------------------------------ rtnetlink

_NETLINK_ROUTE = 0
_RTM_NEWLINK, _RTM_NEWADDR, _RTM_NEWROUTE, _RTM_NEWNEIGH = 16, 20, 24, 28
_NDA_DST, _NDA_LLADDR, _NUD_PERMANENT = 1, 2, 0x80
_NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x4, 0x200, 0x400
_IFF_UP = 0x1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_GATEWAY = 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 3, 0, 1
_LOOPBACK_INDEX = 1


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


class _Rtnetlink:
    """A NETLINK_ROUTE socket of the calling thread's namespace: what `ip` does, in-process.

    Each request asks for an acknowledgement; an error is raised as `OSError` with the
    kernel's errno. Configuring a host this way costs microseconds, where `ip -batch`
    costs a process (and `mnexec` a second) per host: at 2,000 hosts, seconds.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self.seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags,
                             self.seq, 0)
        self.sock.send(header + body)
        for _ in range(_MAX_NETLINK_READS):
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, answer, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                if answer == _NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, f"{what}: {os.strerror(-error)}")
                    return
                offset += (length + 3) & ~3
        raise OSError(f"{what}: no answer from rtnetlink")

    def link_up(self, index: int, what: str) -> None:
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, _IFF_UP, _IFF_UP)
        self.request(_RTM_NEWLINK, 0, body, what)

    def add_address(self, index: int, ip: str, prefix: int, what: str) -> None:
        packed = socket.inet_aton(ip)
        body = (struct.pack("=BBBBI", socket.AF_INET, prefix, 0, _RT_SCOPE_UNIVERSE, index)
                + _attribute(_IFA_LOCAL, packed) + _attribute(_IFA_ADDRESS, packed))
        self.request(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body, what)

    def add_neighbour(self, index: int, ip: str, mac: str, what: str) -> None:
        body = (struct.pack("=BxxxiHBB", socket.AF_INET, index, _NUD_PERMANENT, 0, 0)
                + _attribute(_NDA_DST, socket.inet_aton(ip))
                + _attribute(_NDA_LLADDR, bytes.fromhex(mac.replace(":", ""))))
        self.request(_RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_EXCL, body, what)

    def add_default_route(self, gateway: str, what: str) -> None:
        body = (struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT,
                            _RT_SCOPE_UNIVERSE, _RTN_UNICAST, 0)
                + _attribute(_RTA_GATEWAY, socket.inet_aton(gateway)))
        self.request(_RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body, what)


def mac_for(ip: str, kind: int = 0) -> str:
    """A locally administered MAC made from an IPv4 address (unique where the address is):
    kind 0 for a host's interface, 1 for the router's."""
    return ":".join(f"{b:02x}" for b in (0x02, kind, *socket.inet_aton(ip)))


def configure_namespace(pid: int, addresses: Iterable[tuple[str, str, int]],
                        gateway: str | None = None, *, forward: bool = False,
                        neighbours: Iterable[tuple[str, str, str]] = ()) -> None:
    """Give the network namespace of `pid` its addresses, as `ip -batch` would there.

    `addresses` are (interface, IPv4 address, prefix length): each interface gets its
    address and is brought up, after the loopback; then the default route via `gateway`
    (a host's) and, with `forward`, IPv4 forwarding (the router's). IPv6 is switched
    off: its router solicitations and duplicate-address probes would be noise for the
    sensors. `neighbours` are (interface, IPv4 address, MAC) entries made permanent: the
    router's own hosts and a host's gateway, whose MACs the range chose (`mac_for`), so
    no ARP broadcast is needed to reach them. Raises OSError naming the step that failed.
    """
    with in_netns(pid):
        # Sysctls under /proc/sys/net belong to the namespace of the thread that opens them.
        for key in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w", encoding="ascii") as f:
                f.write("1\n")
        if forward:
            with open("/proc/sys/net/ipv4/ip_forward", "w", encoding="ascii") as f:
                f.write("1\n")
        rtnl = _Rtnetlink()
        try:
            rtnl.link_up(_LOOPBACK_INDEX, "lo up")
            for interface, ip, prefix in addresses:
                index = socket.if_nametoindex(interface)
                rtnl.add_address(index, ip, prefix, f"address {ip}/{prefix} on {interface}")
                rtnl.link_up(index, f"{interface} up")
            if gateway is not None:
                rtnl.add_default_route(gateway, f"default route via {gateway}")
            indices: dict[str, int] = {}
            for interface, ip, mac in neighbours:
                index = indices.setdefault(interface, socket.if_nametoindex(interface))
                rtnl.add_neighbour(index, ip, mac, f"neighbour {ip} on {interface}")
        finally:
            rtnl.close()
