"""The validation report's compromise-bit figures: blue's knowledge against the game's rules.

Recordings played in the simulator follow `range/blue.py` exactly, so their agreement is
1.00 whatever the action durations; recordings doctored the ways a real range could drift
(an Analyse that reports other than the truth, a Restore that did not take, an exploit
alert that did not make a believed-clean host unknown) must show below 1.00.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cyberdial.agents.baselines import make_baseline
from cyberdial.agents.drill import SimDrillRange, run_drill
from cyberdial.agents.recording import (
    RECORDING_NAME,
    AlertRecord,
    GroundTruth,
    Recorder,
    Recording,
    StepRecord,
    header_for,
    load_recording,
)
from cyberdial.agents.validation import compromise_figures, write_validation
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario, resolve_scenario_path

BITS = {"none": "00", "user": "01", "privileged": "11", "unknown": "10"}


def tiny_with_durations(tmp_path: Path) -> Path:
    """tiny.yaml where Analyse takes 2 steps and Restore 3 (the shipped ones take 1)."""
    text = resolve_scenario_path("tiny").read_text(encoding="utf-8")
    anchor = "  actions: [analyse, remove, restore, block, unblock]\n"
    assert anchor in text
    text = text.replace(anchor, anchor + "  durations: {analyse: 2, restore: 3}\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def sim_recording(model: GameModel, folder: Path, episodes: int) -> Recording:
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    with Recorder(folder / RECORDING_NAME, header) as recorder:
        run_drill(SimDrillRange(model), make_baseline("react", model, seed=0), episodes, 0,
                  recorder)
    return load_recording(folder)


def host_bits(model: GameModel, step: StepRecord, host: str) -> tuple[str, int]:
    """(agent, offset of the host's compromise bits in that agent's observation)."""
    for layout in model.agents:
        names = [model.scenario.all_hosts[h].name for h in layout.hosts]
        if host in names:
            return layout.name, 4 * names.index(host) + 2
    raise AssertionError(host)


def set_knowledge(model: GameModel, step: StepRecord, host: str, state: str) -> None:
    agent, at = host_bits(model, step, host)
    text = step.observations[agent]
    step.observations[agent] = text[:at] + BITS[state] + text[at + 2:]


def knowledge(model: GameModel, step: StepRecord, host: str) -> str:
    agent, at = host_bits(model, step, host)
    bits = step.observations[agent][at:at + 2]
    return {v: k for k, v in BITS.items()}[bits]


def fake_episode(model: GameModel, knowledge_per_step: list[dict[str, str]],
                 actions_per_step: list[dict[str, str]], alerts_per_step: list[list[str]],
                 truth_per_step: list[dict[str, str]]) -> Recording:
    """A hand-made one-episode recording: blue's compromise knowledge before each step,
    the actions carried on, exploit alerts and the true compromise after each step."""
    header = header_for(model, range_kind="emulated", policy="react", seed=0)
    steps = []
    for t, known in enumerate(knowledge_per_step):
        observations = {layout.name: "0" * layout.obs_size for layout in model.agents}
        labels = {layout.name: [a.label for a in layout.actions] for layout in model.agents}
        actions = {name: actions_per_step[t].get(name, "sleep") for name in labels}
        truth = {h.name: "clean" for h in model.scenario.all_hosts} | truth_per_step[t]
        step = StepRecord(
            episode=0, step=t, wall_time=float(t),
            alerts=[AlertRecord(host=h, kind="exploit") for h in alerts_per_step[t]],
            observations=observations, masks={}, actions=actions,
            action_index={name: labels[name].index(label) for name, label in actions.items()},
            messages={}, reward=0.0, reward_terms={},
            ground_truth=GroundTruth(compromise=truth, impacted=[], blocked=[]))
        for host, state in known.items():
            set_knowledge(model, step, host, state)
        steps.append(step)
    return Recording(header=header, steps=steps, ends=[])


@pytest.fixture(scope="module")
def tiny() -> GameModel:
    return GameModel(load_scenario("tiny"))


def test_the_simulator_follows_its_own_rules_with_multi_step_actions(tmp_path: Path) -> None:
    model = GameModel(load_scenario(tiny_with_durations(tmp_path)))
    recording = sim_recording(model, tmp_path / "sim", 8)
    figures = compromise_figures(recording, model)
    length = model.scenario.episode_length
    assert figures.cells == 8 * (length - 1) * model.n_hosts
    assert figures.analysed_cells > 10
    assert figures.bit_agreement == [figures.cells] * 2
    assert figures.analysed_bit_agreement == [figures.analysed_cells] * 2
    # Knowledge is not truth: red moves after Analyse, and unknown is never the truth.
    assert 0 < figures.truth_matches < figures.cells
    # Replaying the durations as 1 step (what the shipped scenarios use) would misplace
    # when Analyse took effect: the recording is only consistent with the real ones.
    as_if_one_step = compromise_figures(recording, GameModel(load_scenario("tiny")))
    assert as_if_one_step.bit_agreement != [as_if_one_step.cells] * 2


def test_an_analyse_that_reports_other_than_the_truth_shows(tmp_path: Path,
                                                            tiny: GameModel) -> None:
    recording = sim_recording(tiny, tmp_path / "sim", 10)
    clean = compromise_figures(recording, tiny)
    assert clean.analysed_bit_agreement == [clean.analysed_cells] * 2
    # An Analyse that found red (user) where the referee says the host was clean: what
    # a real Analyse misreading a host would look like.
    doctored = 0
    for episode in recording.episodes():
        steps = recording.steps_of(episode)
        for t in range(1, len(steps) - 1):
            label = next((a for a in steps[t].actions.values() if a.startswith("analyse ")), "")
            host = label.partition(" ")[2]
            exploit_alert = any(a.host == host and a.kind == "exploit" for a in steps[t].alerts)
            if host and knowledge(tiny, steps[t + 1], host) == "user" and not exploit_alert:
                steps[t - 1].ground_truth.compromise[host] = "clean"
                doctored += 1
                break
    assert doctored >= 2, "react analysed no user-level host: pick other seeds"
    figures = compromise_figures(recording, tiny)
    # User (01) against clean (00): bit 2 disagrees in each doctored cell, bit 1 agrees.
    assert figures.analysed_cells == clean.analysed_cells
    assert figures.analysed_bit_agreement == [clean.analysed_cells,
                                              clean.analysed_cells - doctored]
    assert figures.bit_agreement == [clean.cells, clean.cells - doctored]


def test_the_rules_of_restore_and_exploit_alerts(tiny: GameModel) -> None:
    # Step 0: blue_user restores user0, believed privileged -> none after it.
    # Step 1: an exploit alert on user1, believed clean -> unknown after it.
    # Step 2: blue_ops analyses opserver0; red held it privileged at step 1's end.
    def figures(after: dict[str, str]) -> list[int]:
        recording = fake_episode(
            tiny,
            knowledge_per_step=[{"user0": "privileged"}, {}, {"user1": "unknown"}, after],
            actions_per_step=[{"blue_user": "restore user0"}, {},
                              {"blue_ops": "analyse opserver0"}, {}],
            alerts_per_step=[[], ["user1"], [], []],
            truth_per_step=[{}, {"opserver0": "privileged"}, {"opserver0": "privileged"}, {}])
        result = compromise_figures(recording, tiny)
        assert result.cells == 3 * tiny.n_hosts and result.analysed_cells == 1
        return [*result.bit_agreement, *result.analysed_bit_agreement]

    cells = 3 * tiny.n_hosts
    # Blue knows exactly what the rules say: opserver0 privileged, user1 still unknown.
    assert figures({"user1": "unknown", "opserver0": "privileged"}) == [cells, cells, 1, 1]
    # The Analyse did not take (a failed command on real hosts): both bits off, in the
    # Analyse's cell only.
    assert figures({"user1": "unknown"}) == [cells - 1, cells - 1, 0, 0]


def test_a_restore_that_did_not_take_and_an_alert_that_was_not_applied(tiny: GameModel) -> None:
    recording = fake_episode(
        tiny,
        # After step 0 user0 still reads privileged; after step 1 user1 still reads clean.
        knowledge_per_step=[{"user0": "privileged"}, {"user0": "privileged"},
                            {"user0": "privileged"}],
        actions_per_step=[{"blue_user": "restore user0"}, {}, {}],
        alerts_per_step=[[], ["user1"], []],
        truth_per_step=[{}, {}, {}])
    figures = compromise_figures(recording, tiny)
    cells = 2 * tiny.n_hosts
    # Restore: 11 where 00 was due (both bits); alert: 00 where 10 was due (bit 1). And
    # step 1 carries user0's 11 over, which the rules allow (nothing finished on it).
    assert figures.bit_agreement == [cells - 2, cells - 1]
    assert figures.analysed_cells == 0
    # Truth is clean everywhere: every cell but user0's two privileged readings matches.
    assert figures.truth_matches == cells - 2


def test_a_recording_of_another_scenario_is_refused(tmp_path: Path, tiny: GameModel) -> None:
    recording = sim_recording(tiny, tmp_path / "sim", 1)
    with pytest.raises(CyberdialError, match="other agents, hosts or actions"):
        compromise_figures(recording, GameModel(load_scenario("small")))


def analysed_cells(model: GameModel, recording: Recording) -> list[tuple[int, str]]:
    """(index in `recording.steps`, host) of every finished Analyse with a next step."""
    steps, found = recording.steps, []
    for i, step in enumerate(steps[:-1]):
        if steps[i + 1].episode != step.episode:
            continue
        for label in step.actions.values():
            if label.startswith("analyse "):
                found.append((i, label.partition(" ")[2]))
    return found


def test_the_report_has_the_compromise_rows(tmp_path: Path, tiny: GameModel) -> None:
    sim = sim_recording(tiny, tmp_path / "sim", 3)
    emulated = sim_recording(tiny, tmp_path / "emu", 3)
    # The "emulated" side lost one Analyse's result that found red: blue's bits stayed.
    i, host = next((i, host) for i, host in analysed_cells(tiny, emulated)
                   if knowledge(tiny, emulated.steps[i + 1], host) == "user")
    set_knowledge(tiny, emulated.steps[i + 1], host, "none")
    write_validation(sim, emulated, tmp_path / "out", 0.5, model=tiny)
    text = (tmp_path / "out" / "validation.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "):
            [cell.removesuffix(" |") for cell in line.split(" | ")[1:]]
            for line in text.splitlines() if line.startswith("| ")}
    figures = compromise_figures(emulated, tiny)
    n = figures.analysed_cells
    assert rows["compromise bit 1 agreement with the game's rules, all host-steps"][0] == "1.00"
    assert rows["compromise bit 2 agreement with the game's rules, all host-steps"][0] == "1.00"
    assert rows["compromise bit 1 agreement with the game's rules, host-steps an Analyse"
                " finished"] == ["1.00", "1.00"]
    assert rows["compromise bit 2 agreement with the game's rules, host-steps an Analyse"
                " finished"] == ["1.00", f"{(n - 1) / n:.2f}"]
    assert rows["compromise bits matching ground truth, all host-steps"][0] != "n/a"
    assert rows["host-steps compared for the compromise bits / of them with an Analyse"
                " finished"] == [f"{figures.cells} / {n}"] * 2
