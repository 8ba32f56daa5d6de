"""Shared test setup: marker-driven skips with reasons, and paths to data.

Markers (pyproject.toml): `root` needs root; `mininet` needs root and mnexec;
`docker` needs root and dockerd (the tests start their own engine when none
runs); `slow` runs anyway under `make test`.
A skipped test always says why (`-rs`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context for a test's real sockets, terminated after it."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = _is_root()
    mnexec = shutil.which("mnexec") is not None
    for item in items:
        if (item.get_closest_marker("root") or item.get_closest_marker("mininet")) and not root:
            item.add_marker(pytest.mark.skip(reason="needs root (run make test as root)"))
        elif item.get_closest_marker("mininet") and not mnexec:
            item.add_marker(pytest.mark.skip(reason="needs mnexec (Debian package mininet)"))
        elif item.get_closest_marker("docker") and not (root and shutil.which("dockerd")):
            item.add_marker(
                pytest.mark.skip(reason="needs root and dockerd (Debian package docker.io)")
            )


@pytest.fixture
def data_dir() -> Path:
    return DATA
