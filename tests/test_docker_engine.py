"""The Docker engine behind container hosts: our own dockerd, a local image, cleanup by label."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyberdial.range.emulation import docker_engine
from cyberdial.range.emulation.docker_engine import (
    LABEL_RUN,
    EngineUnavailable,
    OwnEngine,
    build_host_image,
    connect,
    forward_policy,
    remove_run,
    run_host_container,
)

EngineFixture = tuple[Any, str | None, str | None]


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineFixture]:
    """A reachable engine: the machine's, or our own dockerd for this module."""
    before = forward_policy()
    started: OwnEngine | None = None
    try:
        client = connect()
    except EngineUnavailable:
        started = OwnEngine.start_engine()
        client = connect()
    try:
        yield client, before, forward_policy()
    finally:
        client.close()
        if started is not None:
            started.stop()


@pytest.mark.docker
@pytest.mark.root
def test_engine_leaves_forward_policy_alone(engine: EngineFixture) -> None:
    _, before, after = engine
    assert before == after
    assert after != "DROP"


@pytest.mark.docker
@pytest.mark.root
def test_container_host_runs_our_python_and_is_removed_by_label(engine: EngineFixture) -> None:
    client, _, _ = engine
    run_id = f"t{os.getpid() % 100000:05d}"
    try:
        image = build_host_image(client, run_id)
        container_id, pid = run_host_container(client, image, run_id, "pc0", ours=True)
        _, other_pid = run_host_container(client, image, run_id, "pc1", ours=True)
        own_ns = os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/net") != own_ns
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink(f"/proc/{other_pid}/ns/net")
        container = client.containers.get(container_id)
        code = "import cyberdial.range.sim, socket; print(socket.gethostname())"
        exit_code, output = container.exec_run([sys.executable, "-c", code])
        assert exit_code == 0, output
        assert output.decode().strip() == "pc0"
        assert container.labels[LABEL_RUN] == run_id
    finally:
        report = remove_run(client, run_id)
    assert (report.containers, report.images) == (2, 1)
    assert not client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
    assert not client.images.list(filters={"label": f"{LABEL_RUN}={run_id}"})


def test_no_engine_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/nothing.sock"
    monkeypatch.setattr(docker_engine, "candidate_urls", lambda: [missing])
    with pytest.raises(EngineUnavailable, match="make docker-engine") as caught:
        connect()
    assert missing in str(caught.value)
    assert "\n" not in str(caught.value)
