"""The application-level traffic of the range: what services, green, red and sensors agree on.

Services speak a line protocol over TCP (`tcp`) or HTTP/1.0 (`http`). Green logs
in and reads data; red sends an exploit (a NOP sled and a shell path, the
signature a sensor matches) whose offset must be right for the vulnerable handler
to start an implant. A mistyped green login answers `LOGIN FAILED`, which a sensor
also flags: the false positives.
"""

from __future__ import annotations

import struct

NOP_SLED = b"\x90" * 24
SHELL_PATH = b"/bin/sh"
# The offset a vulnerable handler needs; red sends a wrong one when its exploit misfires.
EXPLOIT_OFFSET = 1337
LOGIN_FAILED = b"LOGIN FAILED"
GREEN_USER = "green"
MAX_REQUEST = 8192


def exploit_request(protocol: str, offset: int) -> bytes:
    body = NOP_SLED + SHELL_PATH + f";offset={offset}".encode()
    if protocol == "http":
        return b"GET /cgi-bin/status HTTP/1.0\r\nX-Debug: " + body + b"\r\n\r\n"
    return b"EXPLOIT " + body + b"\n"


def exploit_offset(request: bytes) -> int | None:
    """The offset of an exploit request, or None if it is not one."""
    at = request.find(NOP_SLED + SHELL_PATH + b";offset=")
    if at < 0:
        return None
    digits = request[at + len(NOP_SLED + SHELL_PATH + b";offset=") :].split(b"\r", 1)[0]
    digits = digits.split(b"\n", 1)[0].strip()
    return int(digits) if digits.isdigit() else None


def is_exploit(payload: bytes) -> bool:
    """The sensor's signature: a NOP sled followed (somewhere) by a shell path."""
    at = payload.find(NOP_SLED[:16])
    return at >= 0 and payload.find(SHELL_PATH, at) >= 0


def login_request(protocol: str, password: str) -> bytes:
    if protocol == "http":
        return (f"GET /data HTTP/1.0\r\nAuthorization: {GREEN_USER}:{password}\r\n\r\n").encode()
    return f"LOGIN {GREEN_USER} {password}\n".encode()


def login_ok(protocol: str, reply: bytes) -> bool:
    if protocol == "http":
        return reply.startswith(b"HTTP/1.0 200") and b"golden data" in reply
    return b"LOGIN OK" in reply and b"golden data" in reply


def icmp_echo_request(ident: int, seq: int, payload: bytes = b"cyberdial") -> bytes:
    """An ICMP echo request (header and payload) for a raw IPPROTO_ICMP socket."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident & 0xFFFF,
                       seq & 0xFFFF) + payload


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
