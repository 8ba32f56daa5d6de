"""What a range's controller serves to a bridge in another process: its keys and its reset.

`cyberdial range up` leaves the range with a controller process (daemon.py); a
bridge attached later with `cyberdial bridge RUN_ID` runs elsewhere and reaches the
controller over abstract unix sockets. Abstract sockets belong to a network
namespace, so processes in the range's hosts (red's implants, a container's image)
cannot even reach them; the controller answers only a peer of its own user
(SO_PEERCRED), and the bridge checks that the peer is the run's controller PID.
`OwnUserService` and `connect_to_controller` are those rules, once; the key service
(keys.py) and the reset service here use them.

The reset service makes resetting a capability of a detached range: `DetachedRange`
is the bridge's `truth.EpisodeReset`, and the controller runs `Range.reset_episode`.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from types import TracebackType

from cyberdial.range.errors import CyberdialError

logger = logging.getLogger(__name__)

# Requests and answers are one short line; never read more than this.
MAX_LINE = 512
# A reset waits for every service to listen again (`READY_TIMEOUT_S` in the emulator).
RESET_TIMEOUT_S = 180.0
_CREDENTIALS = struct.calcsize("3i")


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _CREDENTIALS))
    return pid, uid, gid


def read_line(conn: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One line (without its newline), at most `limit` bytes; b"" if the peer sent none."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


class OwnUserService:
    """An abstract unix socket of the controller that answers peers of its own user only.

    `answer(conn)` serves one accepted connection; others are refused and counted.
    """

    def __init__(self, address: str, answer: Callable[[socket.socket], bool]) -> None:
        self.address = address
        self._answer = answer
        self._sock: socket.socket | None = None
        self.served = 0
        self.refused = 0

    def __enter__(self) -> OwnUserService:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.address)
        except OSError:
            sock.close()
            raise
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def serve_once(self, timeout_s: float) -> int:
        """Answer the peers that are waiting (at most 8), after waiting up to `timeout_s`."""
        if self._sock is None:
            time.sleep(timeout_s)
            return 0
        if not select.select([self._sock], [], [], max(timeout_s, 0.0))[0]:
            return 0
        answered = 0
        for _ in range(8):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, OSError):
                break
            with conn:
                _, uid, _ = peer_credentials(conn)
                if uid != os.getuid():
                    self.refused += 1
                    logger.warning("refused uid %d on %r", uid, self.address)
                    continue
                conn.setblocking(True)
                conn.settimeout(1.0)
                try:
                    done = self._answer(conn)
                except OSError:
                    continue
                if done:
                    self.served += 1
                    answered += 1
        return answered


def connect_to_controller(
    address: str, run_id: str, controller_pid: int | None, timeout_s: float,
    error: type[CyberdialError],
) -> socket.socket:
    """A connection to the run's controller at `address`; with `controller_pid`, the peer
    must be that process (nobody who bound the name first can answer for it). Raises
    `error` saying what to do."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(address)
        pid, _, _ = peer_credentials(sock)
    except OSError as failure:
        sock.close()
        raise error(
            f"the controller of run {run_id} does not answer ({failure.strerror or failure}):"
            f" is the range up (`cyberdial range status`)? If its controller is gone, run"
            f" `cyberdial range down {run_id}` and bring it up again") from None
    if controller_pid is not None and pid != controller_pid:
        sock.close()
        raise error(f"the socket of run {run_id} is held by pid {pid}, not its controller"
                    f" {controller_pid}: run `cyberdial range down {run_id}`")
    return sock


# --------------------------------------------------------------------- reset


class RangeResetFailed(CyberdialError):
    """The range's controller could not (or would not) put the range back at step 0."""


def reset_socket_address(run_id: str) -> str:
    """The abstract unix socket of a run's reset service (reachable only from the root netns)."""
    return f"\0cyberdial-reset-{run_id}"


def reset_request(seed: int | None) -> bytes:
    return f"reset {'-' if seed is None else seed}\n".encode()


def parse_reset_request(line: bytes) -> int | None:
    """The seed of a `reset SEED` / `reset -` line; ValueError if it is not one."""
    words = line.decode("ascii").split()
    if len(words) != 2 or words[0] != "reset":
        raise ValueError("not a reset request")
    if words[1] == "-":
        return None
    seed = int(words[1])
    if not 0 <= seed < 2**63:
        raise ValueError("seed out of range")
    return seed


class ResetService(OwnUserService):
    """The controller's side: runs `reset(seed)` (`Range.reset_episode`) for its bridge."""

    def __init__(self, run_id: str, reset: Callable[[int | None], object]) -> None:
        super().__init__(reset_socket_address(run_id), self._serve)
        self._reset = reset

    def _serve(self, conn: socket.socket) -> bool:
        try:
            seed = parse_reset_request(read_line(conn))
        except (ValueError, UnicodeDecodeError, OSError):
            conn.sendall(b"error send one line: reset SEED (or reset -)\n")
            return False
        started = time.monotonic()
        try:
            self._reset(seed)
        except Exception as failure:  # e.g. services that do not come back: the controller,
            # which holds the range, lives on and says so to the bridge.
            logger.exception("reset for a bridge failed")
            message = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
            conn.sendall(f"error {message}"[: MAX_LINE - 1].encode() + b"\n")
            return False
        conn.sendall(f"ok {time.monotonic() - started:.3f}\n".encode())
        return True


class DetachedRange:
    """A range run by another process's controller (`cyberdial range up`), as a bridge
    attached with `cyberdial bridge RUN_ID` resets it: a `truth.EpisodeReset`."""

    def __init__(self, run_id: str, controller_pid: int | None,
                 timeout_s: float = RESET_TIMEOUT_S) -> None:
        self.run_id = run_id
        self.controller_pid = controller_pid
        self.timeout_s = timeout_s

    def reset_episode(self, seed: int | None = None) -> float:
        """Ask the controller to reset the range; the seconds it took (RangeResetFailed)."""
        with connect_to_controller(reset_socket_address(self.run_id), self.run_id,
                                   self.controller_pid, self.timeout_s, RangeResetFailed) as sock:
            try:
                sock.sendall(reset_request(seed))
                answer = read_line(sock).decode("utf-8", errors="replace")
            except OSError as failure:
                raise RangeResetFailed(
                    f"the controller of run {self.run_id} did not answer the reset in"
                    f" {self.timeout_s:.0f} s ({failure}): see its controller.log") from None
        status, _, detail = answer.partition(" ")
        if status == "ok":
            try:
                return float(detail)
            except ValueError:
                return 0.0
        raise RangeResetFailed(f"the controller of run {self.run_id} could not reset the"
                               f" range: {detail or 'no answer'}")
