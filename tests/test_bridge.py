"""The bridge and EmulatedRange on real sockets: encoding, masks, durations, faults, Curve."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from pettingzoo.test import parallel_api_test
from test_bridge_support import (
    HEARTBEAT,
    KEYS,
    RUN,
    bridge,
    endpoints,
    no_truth,
    simulated_range,
    wait_for,
)

from cyberdial.bridge.env import BridgeRefused, EmulatedRange
from cyberdial.bridge.protocol import (
    BRIDGE_REPLIES,
    ActionBatch,
    AgentHello,
    ObservationBatch,
    ResetRequest,
    decode,
    encode,
)
from cyberdial.bridge.service import CurveKeys
from cyberdial.range.errors import BridgeTimeout
from cyberdial.range.hub import ActuatorLink, SensorLink
from cyberdial.range.model import Activity, AlertKind, GameModel, Observed
from cyberdial.range.scenario import Scenario, load_scenario
from cyberdial.range.sim import SimRange
from cyberdial.range.wire import Command, CommandResult


@pytest.fixture(scope="module")
def tiny() -> Scenario:
    return load_scenario("tiny")


def variant(scenario: Scenario, **changes: Any) -> Scenario:
    """The scenario with some nested fields changed, re-validated (hash included)."""
    data = scenario.model_dump()
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split("__")
        for key in path:
            target = target[key]
        target[last] = value
    return Scenario.model_validate(data)


def slot(model: GameModel, agent: str, label: str) -> int:
    layout = model.agents[model.agent_names.index(agent)]
    return [action.label for action in layout.actions].index(label)


class ScriptedActuator:
    """An ActuatorLink in a thread that answers every command as told and logs it."""

    def __init__(self, endpoint: str, context: zmq.Context[Any], scenario: Scenario,
                 subnet: str, compromise: str | None = "privileged") -> None:
        self.log: list[Command] = []
        self.compromise = compromise
        self._stop = threading.Event()
        hosts = tuple(h.name for h in scenario.hosts_in(subnet))
        self._thread = threading.Thread(
            target=self._run, args=(endpoint, context, hosts, subnet), daemon=True)

    def __enter__(self) -> ScriptedActuator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _handle(self, command: Command) -> CommandResult:
        self.log.append(command)
        compromise = self.compromise if command.action == "analyse" else None
        return CommandResult(command_id=command.command_id, action=command.action, ok=True,
                             host=command.host, subnet=command.subnet,
                             compromise=compromise)

    def _run(self, endpoint: str, context: zmq.Context[Any], hosts: tuple[str, ...],
             subnet: str) -> None:
        with ActuatorLink(endpoint, RUN, f"act-{subnet}", hosts, subnet, self._handle,
                          key=KEYS.key(f"act-{subnet}"),
                          context=context, heartbeat_interval_s=HEARTBEAT) as link:
            link.serve(stop=self._stop, deadline=time.monotonic() + 60)


def stacked(env: EmulatedRange, observations: dict[str, Any]) -> np.ndarray:
    m = env.model
    out = np.zeros((1, m.n_agents, m.max_obs), dtype=np.float32)
    for layout in m.agents:
        out[0, layout.index, : layout.obs_size] = observations[layout.name]["observation"]
    return out


def stacked_masks(env: EmulatedRange, observations: dict[str, Any]) -> np.ndarray:
    m = env.model
    out = np.zeros((1, m.n_agents, m.max_actions), dtype=np.int8)
    for layout in m.agents:
        out[0, layout.index, : layout.n_actions] = observations[layout.name]["action_mask"]
    return out


# ------------------------------------------------------------------ spaces, API


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_spaces_identical_to_sim(name: str, context: zmq.Context[Any]) -> None:
    scenario = load_scenario(name)
    sim = SimRange(scenario)
    with endpoints() as ends, bridge(scenario, ends, context, no_truth(scenario), step_period_s=0):
        env = EmulatedRange(scenario, ends.agents, run_id=RUN, context=context)
        try:
            assert env.possible_agents == sim.possible_agents
            for agent in sim.possible_agents:
                assert env.observation_space(agent) == sim.observation_space(agent)
                assert env.action_space(agent) == sim.action_space(agent)
            observations, _ = env.reset(seed=0)
            sim_observations, _ = sim.reset(seed=0)
            for agent, item in sim_observations.items():
                assert observations[agent]["observation"].dtype == item["observation"].dtype
                assert observations[agent]["action_mask"].dtype == item["action_mask"].dtype
                # Before any alert both ranges show the same step-0 view.
                np.testing.assert_array_equal(observations[agent]["observation"],
                                              item["observation"])
                np.testing.assert_array_equal(observations[agent]["action_mask"],
                                              item["action_mask"])
            assert env.state().shape == sim.state().shape
        finally:
            env.close()


@pytest.mark.slow
def test_parallel_api_on_simulated_hosts(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with simulated_range(tiny, context, step_period_s=0.01) as (service, hosts, ends):
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
        try:
            parallel_api_test(env, num_cycles=100)
        finally:
            env.close()
        assert service.steps_served == 2 * tiny.episode_length  # two full episodes
        assert hosts.ticks > 0
        assert service.drops.total == 0 and service.hub.drops.total == 0


def test_scenario_mismatch_is_refused(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with endpoints() as ends, bridge(tiny, ends, context, no_truth(tiny), step_period_s=0):
        with pytest.raises(BridgeRefused, match="scenario"):
            EmulatedRange(load_scenario("small"), ends.agents, run_id=RUN, context=context)


def test_no_bridge_is_a_clear_timeout(tiny: Scenario, context: zmq.Context[Any]) -> None:
    with endpoints() as ends, pytest.raises(BridgeTimeout, match="cyberdial bridge"):
        EmulatedRange(tiny, ends.agents, run_id=RUN, context=context, timeout_s=0.1)


# ------------------------------------------------------- encoding, masks, durations


def test_alerts_and_results_encode_like_the_model(tiny: Scenario,
                                                  context: zmq.Context[Any]) -> None:
    model = GameModel(tiny)
    h = tiny.host_index
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0.15) as service, \
            ScriptedActuator(ends.commands, context, tiny, "user") as user_side, \
            ScriptedActuator(ends.commands, context, tiny, "operational") as ops_side, \
            SensorLink(ends.alerts, RUN, "sensor", key=KEYS.key("sensor"),
                       context=context) as sensor:
        wait_for(lambda: len(service.hub._host_route) == model.n_hosts)
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
        try:
            env.reset(seed=0)
            sensor.alert("user1", AlertKind.EXPLOIT)
            sensor.alert("user2", AlertKind.SCAN)
            sensor.alert("user0", AlertKind.NEW_PROCESS)  # evidence only: no activity bits
            sensor.alert("nosuchhost", AlertKind.SCAN)
            block_ops = slot(model, "blue_ops", "block operational")
            obs, rewards, _, _, infos = env.step({"blue_user": 0, "blue_ops": block_ops},
                                                 {"blue_user": [1]})
            activity = np.zeros((1, model.n_hosts), dtype=np.int8)
            activity[0, h["user1"]] = Activity.EXPLOIT
            activity[0, h["user2"]] = Activity.SCAN
            observed = np.zeros((1, model.n_hosts), dtype=np.int8)
            observed[0, h["user1"]] = Observed.UNKNOWN
            blocked = np.array([[False, True]])
            messages = np.array([[[1], [0]]], dtype=np.uint8)
            last = np.array([[0, block_ops]])
            expected = model.encode_observations(activity, observed, blocked, messages, last)
            np.testing.assert_array_equal(stacked(env, obs), expected)
            masks = model.action_masks(activity, observed, messages, np.zeros((1, 2), bool))
            np.testing.assert_array_equal(stacked_masks(env, obs), masks)
            assert rewards["blue_user"] == pytest.approx(-tiny.blue.comm_cost)
            assert infos["blue_user"]["alerts"] == 3 and infos["blue_ops"]["alerts"] == 0
            assert service.drops.counts["unknown_host"] == 1

            analyse = slot(model, "blue_user", "analyse user1")
            obs, rewards, _, _, infos = env.step({"blue_user": analyse, "blue_ops": 0})
            activity[:] = 0
            observed[0, h["user1"]] = Observed.PRIVILEGED  # what the actuator's Analyse found
            messages[:] = 0
            last = np.array([[analyse, 0]])
            expected = model.encode_observations(activity, observed, blocked, messages, last)
            np.testing.assert_array_equal(stacked(env, obs), expected)
            assert [c.action for c in user_side.log] == ["analyse"]
            assert [(c.action, c.subnet) for c in ops_side.log] == [("block", "operational")]
            assert infos["blue_user"]["executed"] == "analyse user1"
            assert rewards["blue_ops"] == 0.0
        finally:
            env.close()


def test_masked_action_is_a_no_op(tiny: Scenario, context: zmq.Context[Any]) -> None:
    model = GameModel(tiny)
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0) as service, \
            ScriptedActuator(ends.commands, context, tiny, "user") as user_side:
        wait_for(lambda: "act-user" in service.hub._peers)
        env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
        try:
            obs, _ = env.reset()
            restore = slot(model, "blue_user", "restore user0")
            assert obs["blue_user"]["action_mask"][restore] == 0  # SAU: no activity yet
            _, _, _, _, infos = env.step({"blue_user": restore, "blue_ops": 10_000})
            assert infos["blue_user"]["executed"] == "sleep"
            assert infos["blue_ops"]["executed"] == "sleep"
            assert user_side.log == []
        finally:
            env.close()


def test_multi_step_actions_follow_durations(tiny: Scenario, context: zmq.Context[Any]) -> None:
    slow = variant(tiny, blue__durations__analyse=2, blue__sau=False)
    model = GameModel(slow)
    with endpoints() as ends, \
            bridge(slow, ends, context, no_truth(slow), step_period_s=0) as service, \
            ScriptedActuator(ends.commands, context, slow, "user") as user_side:
        wait_for(lambda: "act-user" in service.hub._peers)
        env = EmulatedRange(slow, ends.agents, run_id=RUN, context=context)
        try:
            env.reset()
            analyse = slot(model, "blue_user", "analyse user0")
            obs, _, _, _, infos = env.step({"blue_user": analyse})
            assert infos["blue_user"]["busy"] and user_side.log == []
            busy_mask = [1] + [0] * (model.agents[0].n_actions - 1)  # only "continue"
            assert obs["blue_user"]["action_mask"].tolist() == busy_mask
            _, _, _, _, infos = env.step({"blue_user": 0})  # continues the analyse
            assert not infos["blue_user"]["busy"]
            assert infos["blue_user"]["executed"] == "analyse user0"
            assert [c.host for c in user_side.log] == ["user0"]
        finally:
            env.close()


def test_repeated_step_is_answered_from_cache(tiny: Scenario, context: zmq.Context[Any]) -> None:
    model = GameModel(tiny)
    with endpoints() as ends, \
            bridge(tiny, ends, context, no_truth(tiny), step_period_s=0) as service, \
            ScriptedActuator(ends.commands, context, tiny, "operational") as ops_side:
        wait_for(lambda: "act-operational" in service.hub._peers)
        client = context.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(ends.agents)
        seq = iter(range(1, 100))

        def ask(message_type: str, payload: Any) -> Any:
            client.send_multipart(encode(message_type, payload, run_id=RUN, sender="raw",
                                         seq=next(seq)))
            if not client.poll(2000):
                return None
            reply = decode(client.recv_multipart(), BRIDGE_REPLIES, run_id=RUN)
            return getattr(reply, "payload", reply)

        try:
            ask("agent_hello", AgentHello(client="raw"))
            assert ask("reset", ResetRequest(seed=3)).step == 0
            block = ActionBatch(step=0, actions={"blue_ops": slot(model, "blue_ops",
                                                                   "block operational")})
            first = ask("actions", block)
            again = ask("actions", block)
            assert isinstance(first, ObservationBatch) and first == again
            assert len(ops_side.log) == 1
            client.send_multipart(encode("actions", ActionBatch(step=7), run_id=RUN,
                                         sender="raw", seq=next(seq)))
            wait_for(lambda: service.drops.counts["stale_step"] == 1)
            assert not client.poll(100)  # a stale step gets no answer
        finally:
            client.close()


# --------------------------------------------------------------------- faults


def fp_tiny(tiny: Scenario, length: int) -> Scenario:
    """tiny with noisy green users, so the user subnet's sensor raises alerts every step."""
    return variant(tiny, green__fp_scan=0.9, episode_length=length)


@pytest.mark.slow
def test_killed_sensor_is_reported_and_resumes(tiny: Scenario,
                                               context: zmq.Context[Any]) -> None:
    noisy = fp_tiny(tiny, 60)
    with simulated_range(noisy, context, step_period_s=0.02) as (_, hosts, ends):
        env = EmulatedRange(noisy, ends.agents, run_id=RUN, context=context)
        try:
            env.reset(seed=1)
            history: list[tuple[tuple[str, ...], int]] = []
            step = 0
            while env.agents:
                if step == 10:
                    hosts.kill_sensor("user")
                if step == 35:
                    hosts.start_sensor("user")
                started = time.monotonic()
                _, _, _, _, infos = env.step({})
                assert time.monotonic() - started < 0.5  # the step completes on time
                history.append((infos["blue_user"]["dead_peers"],
                                infos["blue_user"]["alerts"]))
                step += 1
        finally:
            env.close()
    assert len(history) == noisy.episode_length
    assert all(not dead for dead, _ in history[:10])
    assert any("sensor-user" in dead for dead, _ in history[10:35])
    assert sum(alerts for _, alerts in history[20:35]) == 0  # no sensor, no alerts
    assert all(not dead for dead, _ in history[-5:])
    assert sum(alerts for _, alerts in history[-10:]) > 0


@pytest.mark.slow
def test_killed_actuator_fails_commands_not_steps(tiny: Scenario,
                                                  context: zmq.Context[Any]) -> None:
    open_tiny = variant(tiny, blue__sau=False, episode_length=30)
    model = GameModel(open_tiny)
    block = slot(model, "blue_ops", "block operational")
    with simulated_range(open_tiny, context, step_period_s=0.02) as (_, hosts, ends):
        env = EmulatedRange(open_tiny, ends.agents, run_id=RUN, context=context)
        try:
            env.reset()
            failures: list[tuple[str, ...]] = []
            dead: list[tuple[str, ...]] = []
            for step in range(open_tiny.episode_length):
                if step == 5:
                    hosts.kill_actuator("operational")
                started = time.monotonic()
                _, _, _, _, infos = env.step({"blue_ops": block})
                assert time.monotonic() - started < 1.0
                failures.append(infos["blue_ops"]["failed_commands"])
                dead.append(infos["blue_ops"]["dead_peers"])
        finally:
            env.close()
    assert not any(failures[:5])
    assert all(failures[12:])
    assert any("actuator-operational" in d for d in dead[12:])


# ----------------------------------------------------------------------- Curve


def test_curve_on_loopback(tiny: Scenario, context: zmq.Context[Any]) -> None:
    server, client, stranger = CurveKeys.generate(), CurveKeys.generate(), CurveKeys.generate()
    with endpoints() as ends:
        ends.agents = "tcp://127.0.0.1:*"
        with bridge(tiny, ends, context, no_truth(tiny), step_period_s=0, curve=server,
                    allowed_clients=[client.public]) as service:
            env = EmulatedRange(tiny, service.agent_endpoint, run_id=RUN, context=context,
                                server_key=server.public, curve=client)
            try:
                observations, _ = env.reset()
                assert set(observations) == set(env.possible_agents)
            finally:
                env.close()
            with pytest.raises(BridgeTimeout):
                EmulatedRange(tiny, service.agent_endpoint, run_id=RUN, context=context,
                              server_key=server.public, curve=stranger, timeout_s=0.2)
            with pytest.raises(BridgeTimeout):  # plain text against a Curve server
                EmulatedRange(tiny, service.agent_endpoint, run_id=RUN, context=context,
                              timeout_s=0.2)


# ----------------------------------------------------------------------- CLI


def test_cli_bridge_with_explicit_endpoints(tiny: Scenario, context: zmq.Context[Any],
                                           tmp_path: Path) -> None:
    from cyberdial.cli import main
    from cyberdial.range.emulation.keys import key_line

    key_file = tmp_path / "host.key"
    key_file.write_bytes(key_line(KEYS.master))
    key_file.chmod(0o644)
    argv_base = ["bridge", RUN, "--scenario", "tiny", "--no-referee", "--step-period", "0",
                 "--host-key-file", str(key_file)]
    with endpoints() as ends:
        # A key file others can read is refused, before anything binds.
        assert main([*argv_base, "--alerts", ends.alerts, "--commands", ends.commands,
                     "--agent-endpoint", ends.agents]) == 2
        key_file.chmod(0o600)
        codes: list[int] = []
        argv = [*argv_base, "--alerts", ends.alerts, "--commands", ends.commands,
                "--agent-endpoint", ends.agents, "--max-hours", str(1.5 / 3600)]
        thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
        thread.start()
        try:
            env = EmulatedRange(tiny, ends.agents, run_id=RUN, context=context)
            try:
                env.reset()
                _, rewards, _, _, _ = env.step({}, {"blue_user": [1]})
                assert rewards["blue_ops"] == pytest.approx(-tiny.blue.comm_cost)
            finally:
                env.close()
        finally:
            thread.join(10)
        assert codes == [0]


def test_cli_bridge_refuses_plain_tcp_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from cyberdial.cli import main

    code = main(["bridge", RUN, "--alerts", "tcp://127.0.0.1:1", "--commands",
                 "tcp://127.0.0.1:2", "--scenario", "tiny", "--no-referee",
                 "--agent-endpoint", "tcp://0.0.0.0:5555"])
    assert code == 2
    assert "--curve-secret" in capsys.readouterr().err


def test_cli_bridge_needs_a_referee_or_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from cyberdial.cli import main

    code = main(["bridge", RUN, "--alerts", "tcp://127.0.0.1:1", "--commands",
                 "tcp://127.0.0.1:2", "--scenario", "tiny", "--agent-endpoint",
                 "tcp://127.0.0.1:3"])
    assert code == 2
    assert "--no-referee" in capsys.readouterr().err


def test_attach_reads_the_run_directory(tiny: Scenario, context: zmq.Context[Any],
                                        tmp_path: Any) -> None:
    with pytest.raises(BridgeRefused, match="cyberdial bridge r9"):
        EmulatedRange.attach("r9", runs_root=tmp_path, context=context)
    with endpoints() as ends, bridge(tiny, ends, context, no_truth(tiny), step_period_s=0):
        run_dir = tmp_path / RUN
        run_dir.mkdir()
        (run_dir / "scenario.json").write_text(tiny.model_dump_json(), encoding="utf-8")
        (run_dir / "bridge.json").write_text(
            f'{{"agent_endpoint": "{ends.agents}", "server_key": null}}', encoding="utf-8")
        env = EmulatedRange.attach(RUN, runs_root=tmp_path, context=context)
        try:
            assert env.welcome.scenario_hash == tiny.scenario_hash
            assert env.ping() < 1.0
        finally:
            env.close()


def _client_process(endpoint: str, server_key: bytes, public: bytes, secret: bytes) -> None:
    """An agent in another process: plays a whole tiny episode over tcp with Curve."""
    scenario = load_scenario("tiny")
    env = EmulatedRange(scenario, endpoint, run_id=RUN, server_key=server_key,
                        curve=CurveKeys(public, secret))
    try:
        observations, _ = env.reset(seed=0)
        steps = 0
        while env.agents:
            actions = {a: int(np.flatnonzero(o["action_mask"])[-1])
                       for a, o in observations.items()}
            observations, _, _, _, _ = env.step(actions)
            steps += 1
    finally:
        env.close()
    raise SystemExit(0 if steps == scenario.episode_length else 3)


@pytest.mark.slow
def test_agent_in_another_process_over_curve(tiny: Scenario, context: zmq.Context[Any]) -> None:
    import multiprocessing

    server, client = CurveKeys.generate(), CurveKeys.generate()
    with endpoints() as ends:
        ends.agents = "tcp://127.0.0.1:*"
        with bridge(tiny, ends, context, no_truth(tiny), step_period_s=0, curve=server,
                    allowed_clients=[client.public]) as service:
            child = multiprocessing.get_context("spawn").Process(
                target=_client_process,
                args=(service.agent_endpoint, server.public, client.public, client.secret))
            child.start()
            child.join(60)
            assert child.exitcode == 0
            assert service.steps_served == tiny.episode_length
