"""One truth for both ranges: the typed measurement, and one reward computed over it.

The simulator and the bridge score a step with the same function
(`GameModel.reward_terms`, over a `Measurement` on the bridge's side): given the
same true state and the same blue actions they give the same terms, and each side's
terms are that function's own output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zmq
from test_bridge_support import HEARTBEAT, KEYS, RUN, bridge, endpoints, wait_for

from cyberdial.bridge.env import EmulatedRange
from cyberdial.range.model import Compromise, GameModel, RedActionKind
from cyberdial.range.scenario import Scenario, load_scenario, scenario_from_dict
from cyberdial.range.sim import SimBatch
from cyberdial.range.simhosts import SimReferee, SimulatedHosts
from cyberdial.range.truth import (
    FINDING_TEXT,
    Measurement,
    NoReset,
    RedMove,
    ResetUnsupported,
    decode_finding,
)

# The true state both sides start from: red privileged on the mission server, user
# level on two more hosts.
START = {"opserver0": Compromise.PRIVILEGED, "user1": Compromise.USER,
         "ophost0": Compromise.USER}
# (blue_user, blue_ops) per step, with message bits; every kind of blue action, wasted
# ones included (all charged: see `scenario()`), and a two-step restore.
PLAN = [
    ("sleep", "sleep", (0, 0)),
    ("analyse user0", "analyse opserver0", (1, 0)),
    ("remove user1", "remove opserver0", (0, 1)),
    ("unblock user", "restore ophost0", (1, 1)),
    ("block user", "sleep", (0, 0)),
    ("unblock user", "block operational", (1, 0)),
    ("analyse user1", "restore opserver0", (0, 0)),
    ("sleep", "sleep", (0, 1)),
    ("sleep", "analyse opserver0", (0, 0)),
]


def scenario() -> Scenario:
    """tiny with every action legal and every wasted action charged, a two-step restore,
    and no green work (red is frozen by hand): only blue changes the truth."""
    data = load_scenario("tiny").model_dump(mode="json")
    data["blue"]["sau"] = False
    data["blue"]["durations"]["restore"] = 2
    data["reward"]["actions"] = {"analyse": 1.5, "remove": 0.5, "block": 2.0, "unblock": 1.0}
    data["green"]["work_rate"] = 0.0
    return scenario_from_dict(data)


def set_start(batch: SimBatch, scenario: Scenario) -> None:
    """The START truth, and a red that never moves again (its current move never ends)."""
    for name, level in START.items():
        batch.compromise[0, scenario.host_index[name]] = level
    batch.red_kind[:] = RedActionKind.NONE
    batch.red_timer[:] = 10**6


def test_simulator_and_bridge_score_the_same_truth_with_one_function(
        context: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    scene = scenario()
    model = GameModel(scene)
    outputs: list[dict[str, Any]] = []
    formula = GameModel.reward_terms

    def spy(self: GameModel, *args: Any, **kwargs: Any) -> dict[str, Any]:
        terms = formula(self, *args, **kwargs)
        outputs.append(terms)
        return terms

    monkeypatch.setattr(GameModel, "reward_terms", spy)
    sim = SimBatch(model, n_envs=1, seed=0)
    labels = [[a.label for a in layout.actions] for layout in model.agents]
    with endpoints() as ends:
        # The host side's world would move red and green once a period: never, here.
        hosts = SimulatedHosts(scene, RUN, ends.alerts, ends.commands, keys=KEYS,
                               step_period_s=3600.0, heartbeat_interval_s=HEARTBEAT,
                               context=context)
        with bridge(scene, ends, context, SimReferee(hosts), step_period_s=0,
                    command_timeout_s=2.0, range_reset=hosts) as service, hosts:
            wait_for(lambda: len(service.hub._peers) >= 2 * len(scene.subnets))
            env = EmulatedRange(scene, ends.agents, run_id=RUN, context=context)
            try:
                env.reset(seed=0)
                with hosts.lock:
                    set_start(hosts.batch, scene)
                sim.reset(seed=0)
                set_start(sim, scene)
                compared = 0
                paid: dict[str, float] = {}
                for user, ops, bits in PLAN:
                    chosen = [labels[0].index(user), labels[1].index(ops)]
                    _, _, _, _, infos = env.step(
                        {"blue_user": chosen[0], "blue_ops": chosen[1]},
                        {"blue_user": [bits[0]], "blue_ops": [bits[1]]})
                    bridge_output = outputs[-1]
                    result = sim.step(np.array([chosen]), np.array(bits).reshape(1, 2, 1))
                    # The simulator's terms are the function's output, unchanged ...
                    assert result.terms is outputs[-1]
                    # ... and so are the bridge's (as floats on the wire), for the same truth.
                    with hosts.lock:
                        assert (hosts.batch.compromise == sim.compromise).all()
                    terms = infos["blue_user"]["reward_terms"]
                    assert terms == {k: float(v[0]) for k, v in bridge_output.items()}
                    assert terms == {k: float(v[0]) for k, v in result.terms.items()}
                    compared += 1
                    for name, value in terms.items():
                        paid[name] = paid.get(name, 0.0) + value
            finally:
                env.close()
    assert compared == len(PLAN)
    # The plan paid something in every term blue's actions and red's foothold can cost,
    # so the comparison compared numbers, not zeros.
    assert {k for k, v in paid.items() if v > 0} >= {"privileged", "restore", "comm", "actions"}


def test_a_measurement_holds_the_game_models_values() -> None:
    tiny = load_scenario("tiny")
    model = GameModel(tiny)
    truth = Measurement.of_names(
        tiny, {"opserver0": Compromise.PRIVILEGED, "user0": Compromise.USER},
        impacted=["opserver0"], blocked=["user"], green_failures=2,
        red_moves=(RedMove.parse("scan", "ophost0"),))
    assert truth.level(tiny, "opserver0") == Compromise.PRIVILEGED
    assert truth.level(tiny, "user1") == Compromise.CLEAN
    assert truth.compromised(tiny) == {"user0": Compromise.USER,
                                       "opserver0": Compromise.PRIVILEGED}
    assert truth.host_names(tiny, truth.impacted) == ["opserver0"]
    assert truth.blocked_names(tiny) == ["user"]
    assert [m.label for m in truth.red_moves] == ["scan ophost0"]
    terms = truth.reward_terms(model, restores=1, bits_sent=3)
    value = model.host_value[tiny.host_index["opserver0"]]
    assert terms["privileged"] == pytest.approx(value)
    assert terms["impact"] == pytest.approx(tiny.reward.impact)
    assert terms["green"] == pytest.approx(2 * tiny.reward.green_failure)
    assert terms["comm"] == pytest.approx(3 * tiny.blue.comm_cost)
    assert terms["total"] == pytest.approx(-sum(v for k, v in terms.items() if k != "total"))
    clean = Measurement.clean(model)
    assert clean.reward_terms(model)["total"] == 0.0


def test_bad_measurements_and_findings_are_refused() -> None:
    tiny = load_scenario("tiny")
    with pytest.raises(ValueError, match="not in the scenario"):
        Measurement.of_names(tiny, {"nosuchhost": Compromise.USER})
    with pytest.raises(ValueError, match="not in the scenario"):
        Measurement.of_names(tiny, blocked=["nosuchsubnet"])
    n = len(tiny.all_hosts)
    with pytest.raises(ValueError, match="not Compromise levels"):
        Measurement(np.full(n, 3, dtype=np.int8), np.zeros(n, bool), np.zeros(n, bool),
                    np.zeros(n, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="shape"):
        Measurement(np.zeros(n, np.int8), np.zeros(n + 1, bool), np.zeros(n, bool),
                    np.zeros(n, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match="unknown red action"):
        RedMove.parse("dance", "user0")
    # The wire's words for Analyse's finding decode to the game's own values, and back.
    for level, text in FINDING_TEXT.items():
        assert decode_finding(text) == level
    with pytest.raises(ValueError, match="unknown finding"):
        decode_finding("clean")


def test_a_range_that_cannot_reset_says_why() -> None:
    with pytest.raises(ResetUnsupported, match=r"scripted.*current state"):
        NoReset("a scripted host side").reset_episode(0)
