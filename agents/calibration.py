"""Calibration: fit the simulator's sensor model to what real sensors did.

The simulator's sensors are a model (`sensors:` in the scenario language): red's
scan of a host raises a scan alert with probability `scan_detect`, an exploit an
exploit alert with `exploit_detect`, a ping sweep a scan alert on each host of
the subnet with `sweep_detect`. The emulated range's sensors are real programs
watching real packets and processes; they do not read those numbers. Validation
compares the two ranges; calibration measures the real rates from an emulated
recording and writes them into a copy of the scenario, which the simulator then
trains and evaluates on.

What is counted, per step of the recording (the ranges are in lockstep, so an
alert belongs to the step of the move that caused it):

- every scan and exploit red made from a foothold, on a host that is not a decoy
  (a decoy always alerts, in both ranges) and not off the network for a restore
  that step: a trial; an alert of that level or higher on the host in the same
  step: a detection;
- with `sweep_detect` above 0 (the real sensors watch sweeps only then): every
  host of a swept subnet, a trial; a scan-level alert on it, a detection.

The fitted rate is detections / trials, with a 95 % Wilson interval; a rate with
no trials keeps the scenario's value. False positives (alerts on host-steps red
did not touch) are counted per kind and reported beside what the scenario's green
rates imply; they come from green's real work on both ranges, so calibration
reports them and leaves the green rates alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from cyberdial.agents.recording import Recording, StepRecord
from cyberdial.agents.validation import alert_levels
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, parse_scenario

Z95 = 1.959964


@dataclass(frozen=True)
class FittedRate:
    """One sensor-model probability: the scenario's value and what the sensors did."""

    name: str
    scenario_value: float
    hits: int
    trials: int

    @property
    def fitted(self) -> float:
        return self.hits / self.trials if self.trials else self.scenario_value

    def interval(self) -> tuple[float, float]:
        """95 % Wilson score interval of the measured rate ((nan, nan) without trials)."""
        n = self.trials
        if n == 0:
            return (math.nan, math.nan)
        p = self.hits / n
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
        return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class SensorFit:
    scenario: Scenario
    rates: tuple[FittedRate, ...]
    episodes: int
    steps: int
    false_positives: dict[str, tuple[float, float]]  # kind -> (measured, modelled) per episode

    def fitted(self) -> dict[str, float]:
        return {rate.name: rate.fitted for rate in self.rates}


def _restored(step: StepRecord) -> set[str]:
    """Hosts a blue Restore took off the network this step."""
    done = {c.action.partition(" ")[2] for c in step.commands
            if c.ok and c.action.startswith("restore ")}
    if not step.commands:  # the simulator records no command results: its labels
        done |= {label.partition(" ")[2] for label in step.actions.values()
                 if label.startswith("restore ")}
    return done


def fit_sensors(recording: Recording, scenario: Scenario) -> SensorFit:
    """Measure the sensor model's rates in `recording` (played on `scenario`)."""
    if recording.header.scenario_hash != scenario.scenario_hash:
        raise CyberdialError(
            f"the recording was played on scenario {recording.header.scenario}"
            f" (hash {recording.header.scenario_hash}), not on this {scenario.name}"
            f" (hash {scenario.scenario_hash})")
    hosts_of_subnet: dict[str, list[str]] = {}
    for host in recording.header.hosts:
        hosts_of_subnet.setdefault(host.subnet, []).append(host.name)
    counts = {"sweep_detect": [0, 0], "scan_detect": [0, 0], "exploit_detect": [0, 0]}
    fp = {"scan": 0, "exploit": 0}
    episodes = recording.episodes()
    steps = 0
    for episode in episodes:
        previous_touched: set[str] = set()
        for step in recording.steps_of(episode):
            steps += 1
            levels = alert_levels(step)
            down = _restored(step)
            decoys = set(step.ground_truth.decoys)
            touched: set[str] = set()
            for action in step.ground_truth.red_actions:
                verb, _, target = action.partition(" ")
                if verb == "sweep":
                    members = hosts_of_subnet.get(target, [])
                    touched.update(members)
                    for host in members:
                        if host not in down and host not in decoys:
                            counts["sweep_detect"][1] += 1
                            counts["sweep_detect"][0] += levels.get(host, 0) >= 1
                    continue
                touched.add(target)
                if verb not in ("scan", "exploit") or target in down or target in decoys:
                    continue
                need = 1 if verb == "scan" else 2
                key = f"{verb}_detect"
                counts[key][1] += 1
                counts[key][0] += levels.get(target, 0) >= need
            for host, level in levels.items():
                if level and host not in touched and host not in previous_touched:
                    fp["scan" if level == 1 else "exploit"] += 1
            previous_touched = touched
    sensors = scenario.sensors
    rates = [
        FittedRate("scan_detect", sensors.scan_detect, *counts["scan_detect"]),
        FittedRate("exploit_detect", sensors.exploit_detect, *counts["exploit_detect"]),
    ]
    if sensors.sweep_detect > 0:
        rates.insert(0, FittedRate("sweep_detect", sensors.sweep_detect, *counts["sweep_detect"]))
    n = max(len(episodes), 1)
    model = GameModel(scenario)
    users = int(model.host_user.sum())
    green = scenario.green
    modelled = {
        "scan": green.fp_scan * users * scenario.episode_length,
        "exploit": (green.fp_exploit * users * scenario.episode_length
                    if green.servers else 0.0),
    }
    return SensorFit(
        scenario=scenario,
        rates=tuple(rates),
        episodes=len(episodes),
        steps=steps,
        false_positives={kind: (fp[kind] / n, modelled[kind]) for kind in fp},
    )


# ------------------------------------------------------------------ the scenario file


def calibrated_name(name: str) -> str:
    """`small` -> `small-cal` (names are at most 15 characters)."""
    return f"{name[:11]}-cal"


def calibrated_text(source_text: str, calibration: SensorFit, *, policy: str,
                    seed: int, source: str) -> str:
    """`source_text` (the scenario's YAML) with its `sensors:` replaced by the fitted rates,
    named `<name>-cal`, and a `calibration:` section saying where they came from.

    Everything else (comments included) is kept as written, so the range built from
    the calibrated file is the range that was measured.
    """
    scenario = calibration.scenario
    root = yaml.compose(source_text)
    if not isinstance(root, yaml.MappingNode):
        raise CyberdialError(f"{source}: not a scenario mapping")
    lines = source_text.splitlines()
    replace: dict[str, tuple[int, int]] = {}  # key -> (first line, line after), 0-based
    keys = [(k.value, k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)]
    for i, (name, key, value) in enumerate(keys):
        if name in ("sensors", "calibration", "name"):
            end = keys[i + 1][1].start_mark.line if i + 1 < len(keys) else len(lines)
            if name == "name":
                end = value.end_mark.line + 1
            replace[name] = (key.start_mark.line, end)
    fitted = calibration.fitted()
    values = scenario.sensors.model_dump() | fitted
    block = ["sensors:  # fitted by `cyberdial calibrate` (see calibration: below)"]
    block += [f"  {key}: {values[key]:.4f}" for key in ("sweep_detect", "scan_detect",
                                                          "exploit_detect")]
    block += [
        "calibration:",
        f"  base: {scenario.name}",
        f"  base_hash: {scenario.scenario_hash}",
        f"  policy: {policy}",
        f"  episodes: {calibration.episodes}",
        f"  seed: {seed}",
    ]
    for rate in calibration.rates:
        low, high = rate.interval()
        block.append(f"  # {rate.name}: {rate.hits}/{rate.trials} detected"
                     f" (95% {low:.4f}-{high:.4f}); the base scenario said"
                     f" {rate.scenario_value:g}")
    out: list[str] = []
    skip_until = -1
    for number, line in enumerate(lines):
        if number < skip_until:
            continue
        hit = next((k for k, (first, _) in replace.items() if first == number), None)
        if hit == "name":
            out.append(f"name: {calibrated_name(scenario.name)}")
            skip_until = replace[hit][1]
        elif hit is not None:
            skip_until = replace[hit][1]
        else:
            out.append(line)
    text = "\n".join(out).rstrip("\n") + "\n" + "\n".join(block) + "\n"
    calibrated = parse_scenario(text, source)
    if GameModel(calibrated).layout_signature() | {"scenario": "", "scenario_hash": ""} != (
            GameModel(scenario).layout_signature() | {"scenario": "", "scenario_hash": ""}):
        raise CyberdialError(f"{source}: the calibrated scenario changed the game's layout")
    return text


def write_calibration(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
