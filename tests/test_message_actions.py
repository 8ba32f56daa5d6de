"""`MessageActions`: message bits in the action for any PettingZoo consumer, and RLlib's PPO
trained through it on tiny (the example in examples/rllib_ppo.py, as a user runs it)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from pettingzoo.test import parallel_api_test
from test_bridge_support import RUN, simulated_range

from cyberdial.bridge.env import EmulatedRange
from cyberdial.range.message_actions import MessageActions
from cyberdial.range.scenario import load_scenario
from cyberdial.range.sim import SimRange

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rllib_ppo.py"


@pytest.mark.parametrize(("action", "observation"), [
    ("multidiscrete", "dict"), ("dict", "dict"), ("multidiscrete", "flat"), ("dict", "flat")])
def test_wrapped_range_passes_the_parallel_api_test(action: str, observation: str) -> None:
    parallel_api_test(MessageActions(SimRange("tiny", seed=0), action=action,
                                     observation=observation), num_cycles=40)


def test_bits_in_the_action_are_the_bits_the_range_gets() -> None:
    """The same episode played with `step(actions, messages=)` and through the wrapper with
    the bits in the action: identical observations, rewards and bits sent, in every
    observation and action format."""
    rng = np.random.default_rng(3)
    plain = SimRange("tiny", seed=5)
    agents = plain.possible_agents
    plays = []
    observations, _ = plain.reset(seed=5)
    for _ in range(30):
        actions = {a: int(rng.choice(np.flatnonzero(observations[a]["action_mask"])))
                   for a in agents}
        bits = {a: rng.integers(0, 2, size=1) for a in agents}
        plays.append((actions, bits))
        observations, *_ = plain.step(actions, messages=bits)
    for action, observation in [("multidiscrete", "dict"), ("dict", "dict"),
                                ("multidiscrete", "rllib-masking"), ("multidiscrete", "flat")]:
        reference = SimRange("tiny", seed=5)
        wrapped = MessageActions(SimRange("tiny", seed=5), action=action,
                                 observation=observation)
        reference_obs, _ = reference.reset(seed=5)
        wrapped_obs, _ = wrapped.reset(seed=5)
        sent = 0
        for actions, bits in plays:
            joint = {a: ({"action": actions[a], "message": bits[a]} if action == "dict"
                         else np.array([actions[a], *bits[a]])) for a in agents}
            for a in agents:
                assert wrapped.action_space(a).contains(joint[a])
                assert wrapped.observation_space(a).contains(wrapped_obs[a])
            reference_obs, reward, _, truncated, info = reference.step(actions, messages=bits)
            wrapped_obs, wrapped_reward, _, wrapped_truncated, wrapped_info = wrapped.step(joint)
            assert wrapped_reward == reward and wrapped_truncated == truncated
            assert wrapped_info == info
            sent += info[agents[0]]["bits_sent"]
            for a in agents:
                got = wrapped_obs[a]
                inner = (got["observations"] if observation == "rllib-masking" else
                         got[:reference_obs[a]["observation"].size] if observation == "flat"
                         else got["observation"])
                np.testing.assert_array_equal(inner, reference_obs[a]["observation"])
        assert sent == sum(int(b[0]) for _, bits in plays for b in bits.values()) > 0
    # The message entries of RLlib's mask are always free; the action's are the range's.
    masked = MessageActions(SimRange("tiny", seed=5), observation="rllib-masking")
    first, _ = masked.reset(seed=5)
    for a in agents:
        n = masked.action_space(a).nvec[0]
        assert first[a]["action_mask"].dtype == np.float32
        np.testing.assert_array_equal(first[a]["action_mask"][n:], [1.0, 1.0])
        np.testing.assert_array_equal(first[a]["action_mask"][:n],
                                      SimRange("tiny", seed=5).reset(seed=5)[0][a]["action_mask"])


@pytest.mark.slow
def test_wrapped_emulated_range_client_passes_the_api_test_and_sends_the_bits(
    context: zmq.Context[Any],
) -> None:
    """The same wrapper over `EmulatedRange` (the bridge's client, real ZeroMQ sockets, hosts
    simulated behind the bridge): PettingZoo's API test, and bits in the action are the
    bits the bridge counts."""
    tiny = load_scenario("tiny")
    with simulated_range(tiny, context, step_period_s=0.01) as (_, _, ends):
        env = MessageActions(EmulatedRange(tiny, ends.agents, run_id=RUN, context=context))
        try:
            parallel_api_test(env, num_cycles=40)
            env.reset(seed=0)
            sent = [env.step({a: np.array([0, bit]) for a in env.possible_agents})[4]
                    for bit in (1, 0, 1)]
            assert [info[env.possible_agents[0]]["bits_sent"] for info in sent] == [2, 0, 2]
        finally:
            env.close()


def test_bad_formats_and_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="action must be one of"):
        MessageActions(SimRange("tiny"), action="box")
    with pytest.raises(ValueError, match="use action='multidiscrete'"):
        MessageActions(SimRange("tiny"), action="dict", observation="rllib-masking")
    env = MessageActions(SimRange("tiny", seed=0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expected 1 message bits of 0 or 1"):
        env.step({a: np.array([0, 3]) for a in env.possible_agents})


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("rllib_ppo_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~100 s alone; a loaded 2-core machine is several times slower
def test_rllib_ppo_trains_on_tiny_with_messages_in_the_action(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The example as a user runs it: two PPO iterations with RLlib's action-masking module,
    then one with its default module on the flat observation. Each iteration samples 600
    steps (20 tiny episodes) and reports a finite mean return."""
    pytest.importorskip("ray.rllib")
    import json

    example = _example()
    for iterations, extra in ((2, []), (1, ["--no-masking"])):
        assert example.main(["--scenario", "tiny", "--iterations", str(iterations),
                             *extra]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                 if line.startswith("{")]
        assert [line["iteration"] for line in lines] == list(range(1, iterations + 1)), extra
        assert all(math.isfinite(line["episode_return_mean"]) for line in lines)
        assert lines[-1]["env_steps"] == 600 * iterations
        assert lines[-1]["episodes"] == 20 * iterations
