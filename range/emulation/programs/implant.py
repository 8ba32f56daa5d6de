"""The harmless marker "implant": red's foothold on a host, a real process in its namespace.

Started in a host's network namespace (by a vulnerable service's handler, or by
red's phishing on its entry host). It only listens on the host's loopback for
red's commands: PING (alive, and at which level), ESCALATE (write the host's
privileged marker naming this PID), IMPACT (overwrite the host's service data).
It touches nothing outside its host's directory in the run, and ends with its run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

# Same values as plan.py; repeated so the implant imports nothing of ours and starts fast.
IMPLANT_PORT = 4444
MAX_LIFETIME_S = 24 * 3600.0
IMPACT_TEXT = "IMPACTED by red implant {pid}\n"


def level(marker: Path) -> str:
    try:
        words = marker.read_text(encoding="utf-8").split()
    except OSError:
        return "user"
    return "privileged" if words[:2] == ["privileged", str(os.getpid())] else "user"


def handle(line: str, host_dir: Path) -> str:
    marker = host_dir / "run" / "privileged"
    words = line.split()
    if not words:
        return "ERROR empty"
    if words[0] == "PING":
        return f"PONG {os.getpid()} {level(marker)}"
    if words[0] == "ESCALATE":
        # Red's escalation exploit is reliable or not; it says which it sent.
        if words[1:2] != ["ok"]:
            return "FAILED escalation"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(f"privileged {os.getpid()}\n", encoding="utf-8")
        os.replace(tmp, marker)
        return "OK privileged"
    if words[0] == "IMPACT":
        if level(marker) != "privileged":
            return "FAILED not privileged"
        files = sorted((host_dir / "srv").glob("*.dat"))
        for file in files:
            file.write_text(IMPACT_TEXT.format(pid=os.getpid()), encoding="utf-8")
        return f"OK impacted {len(files)}"
    return "ERROR unknown command"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--host", required=True)
    args = parser.parse_args()
    host_dir: Path = args.run_dir / "hosts" / args.host
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("127.0.0.1", IMPLANT_PORT))
    except OSError:
        return 1  # another implant holds this host: the exploit reports failure
    server.listen(8)
    server.settimeout(1.0)
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    # Nobody reads further: detach from the pipe so a dead parent cannot block us.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    started = time.monotonic()
    while time.monotonic() - started < MAX_LIFETIME_S and (args.run_dir / "plan.json").exists():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(2.0)
            try:
                data = conn.recv(1024)
                conn.sendall((handle(data.decode(errors="replace"), host_dir) + "\n").encode())
            except OSError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
