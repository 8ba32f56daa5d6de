"""Starts a range's programs by forking one interpreter that has imported them all.

Each program (services, sensor, actuator, green per subnet; red) is a Python process,
and most of a start is its imports (~0.9 s of CPU: numpy, pyzmq, pydantic, the
scenario and wire models). A 2,000-host range runs 33 programs: on two cores their
imports alone took over 15 s. The launcher imports them once and forks each program
from itself, so a start costs a fork, and the programs share the imported pages.

The controller writes one JSON line per program on the launcher's stdin (role, name,
arguments, log file, and for a keyed program its key line, which goes to the child
through a pipe of its own, as `keys.py` expects: never in a file) and reads back one
line per program with its PID. The launcher reaps its children and appends each exit
status to the program's log. It stays while its stdin is open: when the controller
closes it or dies, the launcher exits, and the programs, whose parent it is, see their
parent change and stop (`Program.controller_gone`), as they did when the controller
itself was their parent.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import sys
import time
import traceback
from importlib import import_module
from types import ModuleType
from typing import Any

ROLES = ("services", "sensor", "actuator", "green", "red")
MAX_LIFETIME_S = 24 * 3600.0
MAX_LINE = 1 << 16
_PR_SET_NAME = 15


def _set_name(name: str) -> None:
    """The process's name in ps/top (its comm, 15 bytes), since its argv is the launcher's."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _run_child(module: ModuleType, spec: dict[str, Any], key_fd: int | None) -> None:
    """In the forked child: become the program and never return."""
    code = 1
    try:
        os.setsid()
        log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        if key_fd is None:
            key_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(key_fd, 0)
        os.close(key_fd)
        _set_name(spec["name"])
        sys.argv = [module.__name__, *spec["args"]]
        code = module.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _start(modules: dict[str, ModuleType], spec: dict[str, Any]) -> int:
    key_fd: int | None = None
    if spec.get("key"):
        key_fd, writer = os.pipe()
        os.write(writer, spec["key"].encode())  # one short line: fits the pipe's buffer
        os.close(writer)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_child(modules[spec["role"]], spec, key_fd)
    if key_fd is not None:
        os.close(key_fd)
    return pid


def _reap(logs: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        log = logs.pop(pid, None)
        if log is not None:
            with open(log, "a", encoding="utf-8") as file:
                file.write(f"(launcher) pid {pid} exited with status"
                           f" {os.waitstatus_to_exitcode(status)}\n")


def main() -> int:
    modules = {role: import_module(f"cyberdial.range.emulation.programs.{role}") for role in ROLES}
    logs: dict[int, str] = {}
    buffer = b""
    deadline = time.monotonic() + MAX_LIFETIME_S
    while time.monotonic() < deadline:
        _reap(logs)
        if not select.select([0], [], [], 1.0)[0]:
            continue
        chunk = os.read(0, MAX_LINE)
        if not chunk:
            break  # the controller closed our pipe, or died
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            spec = json.loads(line)
            if spec.get("role") not in modules:
                print(f"unknown program role {spec.get('role')!r}", file=sys.stderr, flush=True)
                return 2
            pid = _start(modules, spec)
            logs[pid] = spec["log"]
            sys.stdout.write(json.dumps({"name": spec["name"], "pid": pid}) + "\n")
            sys.stdout.flush()
        if len(buffer) > MAX_LINE:
            print("a program line longer than the limit", file=sys.stderr, flush=True)
            return 2
    _reap(logs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
