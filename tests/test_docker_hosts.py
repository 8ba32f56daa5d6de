"""Container hosts in the emulated range: tiny with its operational subnet in Docker.

Red's kill chain, the sensors, every blue action and `range down` after a crash
must behave on container hosts as on namespace hosts, and a namespace host and a
container host on one bridge must pass real packets both ways. Every range is torn
down in a `finally`; each test then checks that nothing of the run is left: no
container, image or network with its label, no link, namespace or process, and
the root namespace's FORWARD policy is what it was. The engine is the machine's,
or our own dockerd started for this module (`--iptables=false`) and stopped after.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_emulation import (  # the namespace range's own helpers: same checks, same bar
    Footprint,
    Records,
    assert_nothing_left,
    c2,
    can_connect,
    exploit,
    first,
    guests,
    records_of,
    wait_for,
    wait_for_alert,
)

from cyberdial.range.emulation import docker_engine
from cyberdial.range.emulation.docker_engine import (
    LABEL_MANAGED,
    LABEL_RUN,
    EngineUnavailable,
    OwnEngine,
    connect,
    forward_policy,
    remove_run,
    run_objects,
)
from cyberdial.range.emulation.docker_hosts import HOST_IMAGE
from cyberdial.range.emulation.emulator import Range
from cyberdial.range.emulation.netns import all_pids, listening_ports, mac_for
from cyberdial.range.emulation.plan import RangePlan, check_run_id, make_plan
from cyberdial.range.emulation.state import RUNS_ROOT, ProcessRecord, RunState, teardown
from cyberdial.range.errors import HostCommandError
from cyberdial.range.model import AlertKind, Compromise, GameModel
from cyberdial.range.scenario import Scenario, load_scenario, resolve_scenario_path
from cyberdial.range.wire import Command, CommandResult

REPO = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "cyberdial"]
CONTAINER_HOSTS = ("opserver0", "ophost0", "defender")
_BRIDGE_NF = [Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}tables") for t in ("ip", "ip6", "arp")]


def fast_docker(text_edits: dict[str, str] | None = None, tmp: Path | None = None,
                period: float = 0.5) -> Scenario:
    """tiny_docker with a shorter step; `text_edits` rewrite its YAML first (into `tmp`)."""
    if not text_edits:
        return load_scenario("tiny_docker").model_copy(update={"step_period": period})
    assert tmp is not None
    text = resolve_scenario_path("tiny_docker").read_text(encoding="utf-8")
    for old, new in text_edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path).model_copy(update={"step_period": period})


def group_of(host: str) -> str:
    """The YAML lines of one container host group of tiny_docker."""
    return (f"  - name: {host}\n    subnet: operational\n    backend: docker\n"
            f"    image: {HOST_IMAGE}\n")


# ------------------------------------------------------------------ plan (no root)


def test_plan_marks_container_hosts_and_enters_them_by_network_only() -> None:
    plan = make_plan(load_scenario("tiny_docker"), "a1b2c3", "/tmp/x")
    assert {h.name for h in plan.hosts if h.backend == "docker"} == set(CONTAINER_HOSTS)
    assert all(plan.host(h).image == HOST_IMAGE for h in CONTAINER_HOSTS)
    assert plan.host("user0").backend == "namespace" and plan.host("user0").image == ""
    plan.host_pids.update({"user0": 11, "opserver0": 22})
    plan.baseline_pids["opserver0"] = [23]
    # mnexec -a would also join the container's mount namespace, where our run is not.
    assert plan.exec_prefix("opserver0") == ["nsenter", "--net=/proc/22/ns/net", "--"]
    assert plan.exec_prefix("user0") == ["mnexec", "-a", "11"]
    assert plan.baseline("opserver0") == {22, 23} and plan.baseline("user0") == {11}
    assert RangePlan.from_json(plan.to_json()) == plan


# ------------------------------------------------------------------ engine and checks


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """A reachable engine: the machine's, or our own dockerd for this module."""
    started: OwnEngine | None = None
    try:
        client = connect()
    except EngineUnavailable:
        started = OwnEngine.start_engine()
        client = connect()
    try:
        yield client
    finally:
        client.close()
        if started is not None:
            started.stop()


@pytest.fixture
def footprint() -> Footprint:
    return Footprint.take()


@pytest.fixture
def forward() -> Iterator[None]:
    """The root namespace's FORWARD policy (dockerd's default sets DROP) must not change."""
    before = forward_policy()
    yield
    assert forward_policy() == before


def assert_no_docker_left(client: Any, records: Records) -> None:
    left = run_objects(client, records.run_id)
    assert left == {"containers": [], "images": [], "networks": []}, left


def assert_bridged_frames_skip_iptables() -> None:
    for knob in _BRIDGE_NF:
        if knob.exists():
            assert knob.read_text().strip() == "0", knob


def same_engine_objects(client: Any, emulated: Range) -> None:
    """The container hosts are real containers of this run, held by the recorded PIDs."""
    plan = emulated.plan
    containers = client.containers.list(filters={"label": f"{LABEL_RUN}={emulated.run_id}"})
    by_host = {c.labels["org.cyberdial.host"]: c for c in containers}
    assert set(by_host) == set(CONTAINER_HOSTS)
    for host, container in by_host.items():
        assert container.name == f"cd-{emulated.run_id}-{host}"
        assert container.attrs["State"]["Pid"] == plan.host_pids[host]
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    images = client.images.list(filters={"label": f"{LABEL_RUN}={emulated.run_id}"})
    assert [t for i in images for t in i.tags] == [f"{HOST_IMAGE}:{emulated.run_id}"]


def bridge_of(veth: str) -> str:
    return Path(f"/sys/class/net/{veth}/master").resolve().name


root = pytest.mark.root
mininet = pytest.mark.mininet
docker = pytest.mark.docker


# ------------------------------------------------------------------ acceptance


@root
@mininet
@docker
@pytest.mark.timeout(120)
def test_red_kill_chain_reaches_a_container_host_with_alerts_in_order(
    engine: Any, footprint: Footprint, forward: None, tmp_path: Path
) -> None:
    emulated = Range(fast_docker(), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        same_engine_objects(engine, emulated)
        assert_bridged_frames_skip_iptables()
        alerts = []
        scenario = emulated.scenario
        truth = None
        for _ in range(60):
            emulated.wait_step()
            alerts += emulated.alerts()
            assert emulated.referee is not None
            truth = emulated.referee.measure()
            if truth.level(scenario, "opserver0") == Compromise.PRIVILEGED:
                break
        assert truth is not None
        assert truth.level(scenario, "opserver0") == Compromise.PRIVILEGED, truth.compromise
        assert truth.reward_terms(GameModel(scenario))["privileged"] >= 10.0
        time.sleep(1.0)  # the marker's file_change is seen on the sensor's next watch
        alerts += emulated.alerts(timeout_s=0.5)
        scan = first(alerts, "opserver0", AlertKind.SCAN)
        attack = first(alerts, "opserver0", AlertKind.EXPLOIT)
        implant = first(alerts, "opserver0", AlertKind.NEW_PROCESS)
        marker = first(alerts, "opserver0", AlertKind.FILE_CHANGE)
        assert scan < attack < implant <= marker
        # The implant is a process in the container's network namespace, not its init.
        assert list(truth.implants["opserver0"]) == guests(emulated.plan, "opserver0")
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)


@root
@mininet
@docker
@pytest.mark.timeout(150)
def test_blue_actions_change_real_container_hosts(
    engine: Any, footprint: Footprint, forward: None, tmp_path: Path
) -> None:
    emulated = Range(fast_docker(), programs=("services", "sensor", "actuator"),
                     logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        plan = emulated.plan

        def run(action: str, host: str | None = None, subnet: str | None = None
                ) -> CommandResult:
            result = emulated.execute(Command(command_id=f"{action}-{host or subnet}-{time.time()}",
                                              action=action, host=host, subnet=subnet))
            assert result.ok, result
            return result

        # Analyse: a real exploit from a namespace host starts an implant in a container.
        pid = exploit(plan, "user0", "ophost0")
        assert pid in guests(plan, "ophost0")
        result = run("analyse", host="ophost0")
        assert result.compromise == "user" and result.implants == (pid,)
        assert c2(plan, "ophost0", "ESCALATE ok").startswith("OK privileged")
        assert run("analyse", host="ophost0").compromise == "privileged"
        # Remove kills user-level implants only: the privileged one survives it.
        run("remove", host="ophost0")
        assert pid in guests(plan, "ophost0")
        # Container to container, and the implant on the user-level host is removed.
        user_pid = exploit(plan, "ophost0", "opserver0")
        run("remove", host="opserver0")
        wait_for(lambda: not guests(plan, "opserver0"), 5, "no process left in opserver0")
        assert not ProcessRecord.of(user_pid, "").alive()
        # Restore: the container stays (same init, same namespace), everything else goes.
        init = plan.host_pids["ophost0"]
        plan.data_file("ophost0", "ssh").write_text("tampered\n")
        run("restore", host="ophost0")
        assert not guests(plan, "ophost0")
        assert ProcessRecord.of(init, "").alive() and init in all_pids()
        assert engine.containers.get(f"cd-{emulated.run_id}-ophost0").status == "running"
        assert plan.data_file("ophost0", "ssh").read_text() == (
            plan.golden_dir("ophost0") / "srv" / "ssh.dat").read_text()
        assert not plan.privileged_marker("ophost0").exists()
        wait_for(lambda: 22 in listening_ports(init), 5, "ssh back")
        # Its link comes back after the scenario's downtime, in steps of the range's clock.
        for _ in range(emulated.scenario.blue.restore_downtime):
            emulated.wait_step(pace=False)
        wait_for(lambda: can_connect(plan, "defender", plan.host("ophost0").ip, 22), 5,
                 "ophost0 reachable after its downtime")
        assert emulated.referee is not None
        truth = emulated.referee.measure()
        assert truth.level(emulated.scenario, "ophost0") == Compromise.CLEAN
        # Block the containers' subnet: the namespace users cannot reach it; Unblock.
        web = plan.host("opserver0")
        assert can_connect(plan, "user0", web.ip, 80)
        run("block", subnet="operational")
        assert emulated.referee.measure().blocked_names(emulated.scenario) == ["operational"]
        emulated.alerts()
        assert not can_connect(plan, "user0", web.ip, 80)
        time.sleep(0.5)
        assert not [a for a in emulated.alerts() if a.host == "opserver0"]
        run("unblock", subnet="operational")
        assert can_connect(plan, "user0", web.ip, 80)
        assert emulated.referee.measure().blocked_names(emulated.scenario) == []
        # Decoy: a listener in the container; contact with it raises decoy_touched.
        run("decoy", host="defender")
        decoy = plan.host("defender").decoy_port
        assert decoy in listening_ports(plan.host_pids["defender"])
        time.sleep(0.5)  # the sensor learns about decoys on its next watch
        assert can_connect(plan, "user1", plan.host("defender").ip, decoy)
        wait_for_alert(emulated, lambda a: a.kind == AlertKind.DECOY_TOUCHED
                       and a.host == "defender", 5, "decoy_touched on defender")
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)


@root
@mininet
@docker
@pytest.mark.timeout(120)
def test_namespace_and_container_hosts_on_one_bridge_pass_traffic_both_ways(
    engine: Any, footprint: Footprint, forward: None, tmp_path: Path
) -> None:
    # ophost0 becomes a namespace host between the containers opserver0 and defender.
    scenario = fast_docker({group_of("ophost0"): "  - name: ophost0\n    subnet: operational\n"},
                           tmp_path)
    emulated = Range(scenario, programs=("services",), logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        plan = emulated.plan
        assert plan.host("ophost0").backend == "namespace"
        assert plan.host("opserver0").backend == "docker"
        bridge = plan.subnet("operational").bridge
        assert {bridge_of(plan.host(h).veth) for h in CONTAINER_HOSTS} == {bridge}
        for name in CONTAINER_HOSTS:
            # A container's link is a namespace host's: the range's MAC, which the router
            # knows (a permanent neighbour), and no IPv6 address on the bridge's end.
            host = plan.host(name)
            link = emulated.run_in(name, ["ip", "-o", "link", "show", "eth0"]).stdout
            assert mac_for(host.ip) in link, link
            neighbour = subprocess.run(
                ["mnexec", "-a", str(plan.router_pid), "ip", "neigh", "show", host.ip],
                capture_output=True, text=True, check=True, timeout=10).stdout
            assert mac_for(host.ip) in neighbour and "PERMANENT" in neighbour, neighbour
            root_end = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", host.veth],
                                      capture_output=True, text=True, check=True, timeout=10)
            assert root_end.stdout.strip() == "", root_end.stdout
        for source, target in (("ophost0", "opserver0"), ("opserver0", "ophost0"),
                               ("defender", "opserver0")):
            out = emulated.run_in(source, ["ping", "-c", "2", "-W", "2", plan.host(target).ip])
            assert out.returncode == 0 and "2 received" in out.stdout, (source, out.stdout)
        # TCP both ways, to the services' real listening sockets.
        assert can_connect(plan, "ophost0", plan.host("opserver0").ip, 80)
        assert can_connect(plan, "opserver0", plan.host("ophost0").ip, 22)
        # And through the router, from a namespace subnet to the containers and back.
        assert can_connect(plan, "user1", plan.host("defender").ip, 22)
        assert can_connect(plan, "defender", plan.host("user1").ip, 22)
        assert_bridged_frames_skip_iptables()
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)


# ------------------------------------------------------------------ a user's image


def _file_entry(tar: tarfile.TarFile, source: str, name: str) -> None:
    data = Path(os.path.realpath(source)).read_bytes()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o755
    tar.addfile(info, io.BytesIO(data))


def user_image(client: Any, tag: str, label: str) -> None:
    """A minimal image of the kind a user brings: its own files and its own long-running
    command (which forks a daemon), no bind mounts. Built locally: no registry here."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "lib", "lib/x86_64-linux-gnu", "lib64", "proc", "dev", "tmp"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        _file_entry(tar, "/bin/sh", "bin/sh")
        _file_entry(tar, "/bin/sleep", "bin/sleep")
        _file_entry(tar, "/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6")
        _file_entry(tar, "/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")
    repository, version = tag.split(":")
    client.api.import_image_from_data(
        buffer.getvalue(), repository=repository, tag=version,
        changes=[f'LABEL {LABEL_RUN}="{label}" {LABEL_MANAGED}="1"',
                 'CMD ["/bin/sh", "-c", "/bin/sleep infinity & exec /bin/sleep infinity"]'])


@root
@mininet
@docker
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists(),
                    reason="builds its test image from x86-64 Debian's libc")
def test_a_user_image_holds_its_host_with_its_own_command(
    engine: Any, footprint: Footprint, forward: None, tmp_path: Path
) -> None:
    label = f"u{os.getpid() % 100000:05d}"
    tag = f"cyberdial-test-user:{label}"
    emulated: Range | None = None
    records = None
    try:
        user_image(engine, tag, label)
        scenario = fast_docker({group_of("defender"): group_of("defender").replace(
            HOST_IMAGE, tag)}, tmp_path)
        emulated = Range(scenario, programs=("services", "sensor", "actuator"),
                         logs_dir=tmp_path)
        emulated.up()
        records = records_of(emulated.run_id)
        plan = emulated.plan
        # The image's own daemon is part of the host: no new_process, spared by Restore.
        daemon = plan.baseline_pids["defender"]
        assert len(daemon) == 1 and "sleep" in Path(f"/proc/{daemon[0]}/cmdline").read_text()
        time.sleep(1.0)  # three sensor watches
        assert not [a for a in emulated.alerts() if a.host == "defender"
                    and a.kind == AlertKind.NEW_PROCESS]
        result = emulated.execute(Command(command_id="r1", action="restore", host="defender"))
        assert result.ok and result.implants == (), result
        assert ProcessRecord.of(daemon[0], "").alive()
        for _ in range(emulated.scenario.blue.restore_downtime):
            emulated.wait_step(pace=False)  # the downtime is counted in steps
        wait_for(lambda: can_connect(plan, "opserver0", plan.host("defender").ip, 22), 5,
                 "defender's ssh from the range's services")
        records = records_of(emulated.run_id)
    finally:
        if emulated is not None:
            emulated.down()
        remove_run(engine, label)
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)
    # The range removes only what it built: the user's image was the test's to remove.
    assert not engine.images.list(name="cyberdial-test-user")


@root
@mininet
@docker
@pytest.mark.timeout(60)
def test_an_image_not_on_the_engine_says_pull_it(
    engine: Any, footprint: Footprint, tmp_path: Path
) -> None:
    scenario = fast_docker({group_of("defender"): group_of("defender").replace(
        HOST_IMAGE, "cyberdial-test-absent:none")}, tmp_path)
    emulated = Range(scenario, logs_dir=tmp_path)
    with pytest.raises(HostCommandError, match="docker pull cyberdial-test-absent:none"):
        emulated.up()
    assert not (RUNS_ROOT / emulated.run_id).exists()
    assert not run_objects(engine, emulated.run_id)["images"]


@root
@mininet
@pytest.mark.timeout(60)
def test_no_engine_is_one_clear_error_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, footprint: Footprint, tmp_path: Path
) -> None:
    missing = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setattr(docker_engine, "candidate_urls", lambda: [missing])
    emulated = Range(fast_docker(), logs_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match="make docker-engine") as caught:
        emulated.up()
    assert missing in str(caught.value) and "\n" not in str(caught.value)
    assert not (RUNS_ROOT / emulated.run_id).exists()
    assert not [n for n in Footprint.take().links - footprint.links if emulated.run_id in n]


# ------------------------------------------------------------------ after a crash


CRASHING_CONTROLLER = """
import time
from cyberdial.range.emulation.emulator import Range
from cyberdial.range.scenario import load_scenario
scenario = load_scenario("tiny_docker").model_copy(update={"step_period": 0.5})
emulated = Range(scenario, hub=False, programs=("services", "sensor", "actuator"))
emulated.up()
print(emulated.run_id, flush=True)
time.sleep(600)
"""


@root
@mininet
@docker
@pytest.mark.timeout(120)
def test_range_down_removes_containers_after_a_killed_controller(
    engine: Any, footprint: Footprint, forward: None
) -> None:
    controller = subprocess.Popen([sys.executable, "-c", CRASHING_CONTROLLER],
                                  stdout=subprocess.PIPE, text=True, cwd=REPO)
    run_id = ""
    records = None
    try:
        assert controller.stdout is not None
        run_id = controller.stdout.readline().strip()
        check_run_id(run_id)
        state = RunState.load(run_id)
        # What `range down` needs once the controller is gone: the engine and the containers.
        assert state.engine_url in docker_engine.candidate_urls()
        assert sorted(state.containers) == sorted(f"cd-{run_id}-{h}" for h in CONTAINER_HOSTS)
        assert sorted(r.name for r in state.shells if r.role == "container") == sorted(
            CONTAINER_HOSTS)
        plan = RangePlan.load(state.run_dir)
        # `range shell` works in a container host (our image has the machine's tools).
        ping = subprocess.run([*CLI, "range", "shell", run_id, "defender", "--", "ping", "-c",
                               "1", "-W", "2", plan.host("user1").ip], capture_output=True,
                              text=True, timeout=30, cwd=REPO)
        assert ping.returncode == 0 and "1 received" in ping.stdout, ping.stdout + ping.stderr
        # A process started inside a container host, left behind by the crash.
        implant = exploit(plan, "user0", "ophost0")
        records = records_of(run_id)
        assert any(r.pid == implant for r in records.processes)
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=10)
        assert len(run_objects(engine, run_id)["containers"]) == len(CONTAINER_HOSTS)
        down = subprocess.run([*CLI, "range", "down", run_id], capture_output=True, text=True,
                              timeout=90, cwd=REPO)
        assert down.returncode == 0, down.stderr
        assert "is down" in down.stdout
        assert not ProcessRecord.of(implant, "implant").alive()
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(timeout=10)
        if controller.stdout is not None:
            controller.stdout.close()
        if run_id and (RUNS_ROOT / run_id).exists():
            subprocess.run([*CLI, "range", "down", run_id], capture_output=True, timeout=90,
                           cwd=REPO, check=False)
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)


def test_teardown_keeps_the_run_while_its_engine_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No engine answers: the containers are reported and state.json stays for a retry."""
    monkeypatch.setattr(docker_engine, "candidate_urls", lambda: [])
    run_dir = tmp_path / "a1b2c3"
    run_dir.mkdir()
    state = RunState(
        run_id="a1b2c3", scenario="tiny_docker", run_dir=str(run_dir), logs_dir=str(tmp_path),
        created=time.time(), controller=ProcessRecord(pid=os.getpid(), start=0, role="controller"),
        engine_url=f"unix://{tmp_path}/gone.sock", containers={"cd-a1b2c3-opserver0": "f00d"},
    )
    state.save()
    report = teardown(RunState.load("a1b2c3", tmp_path))
    assert report.containers_left == ["cd-a1b2c3-opserver0"]
    assert (run_dir / "state.json").exists()
    assert RunState.load("a1b2c3", tmp_path).containers == state.containers


# ------------------------------------------------------------------ the bridge


@root
@mininet
@docker
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_bridge_plays_an_episode_on_container_hosts(
    engine: Any, footprint: Footprint, forward: None, tmp_path: Path
) -> None:
    """EmulatedRange over tiny_docker, as test_bridge_emulated does over tiny: the react
    baseline's commands reach the containers' actuator, their alerts reach the agents."""
    import numpy as np
    from test_bridge_support import wait_for as wait_until

    from cyberdial.agents.baselines import ReactPolicy
    from cyberdial.bridge.env import EmulatedRange
    from cyberdial.bridge.service import BridgeService, BridgeThread

    scenario = fast_docker().model_copy(update={"episode_length": 16})
    emulated = Range(scenario, hub=False, logs_dir=tmp_path)
    records = None
    try:
        emulated.up()
        records = records_of(emulated.run_id)
        assert emulated.referee is not None
        hub = emulated.new_hub()
        service = BridgeService(scenario, hub, emulated.referee, f"ipc://{tmp_path / 'agents'}",
                                range_reset=emulated)
        with BridgeThread(service):
            wait_until(lambda: sum(s.heard for s in hub._peers.values())
                       >= 2 * len(scenario.subnets), timeout_s=10)
            env = EmulatedRange(scenario, f"ipc://{tmp_path / 'agents'}", run_id=emulated.run_id)
            policy = ReactPolicy(env.model)
            m = env.model
            try:
                observations, _ = env.reset(seed=0)
                steps, alerts, failures, ops_actions = 0, 0, [], 0
                while env.agents:
                    obs = np.zeros((1, m.n_agents, m.max_obs), dtype=np.float32)
                    masks = np.zeros((1, m.n_agents, m.max_actions), dtype=np.int8)
                    for a in m.agents:
                        obs[0, a.index, : a.obs_size] = observations[a.name]["observation"]
                        masks[0, a.index, : a.n_actions] = observations[a.name]["action_mask"]
                    chosen, bits = policy.act(obs, masks)
                    actions = {a.name: int(chosen[0, a.index]) for a in m.agents}
                    ops_actions += actions["blue_ops"] != 0
                    observations, rewards, _, _, infos = env.step(
                        actions, {a.name: bits[0, a.index] for a in m.agents})
                    steps += 1
                    for info in infos.values():
                        alerts += info["alerts"]
                        failures.extend(info["failed_commands"])
                    assert set(rewards) == set(m.agent_names)
                dead = infos[m.agent_names[0]]["dead_peers"]
            finally:
                env.close()
        assert steps == scenario.episode_length
        assert alerts > 0, "red made no alert on real hosts in a whole episode"
        # The operational defender, whose hosts are all containers, acted on them.
        assert ops_actions > 0
        assert failures == [], failures
        assert dead == ()
        assert service.drops.total == 0 and hub.drops.total == 0
        records = records_of(emulated.run_id)
    finally:
        emulated.down()
    assert records is not None
    assert_nothing_left(footprint, records)
    assert_no_docker_left(engine, records)
