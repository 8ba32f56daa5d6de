"""Sim-to-emulation validation: the same policy and seeds in both ranges, compared.

`compare_recordings` reads a simulator recording and an emulated one (same
policy, same seeds) and measures, identically on both: returns (with the gap and
a bootstrap confidence interval), reward terms, action distributions, and how the
sensors did against what red really did each step — scan, exploit and
compromise detection rates, false-positive alerts, and the per-bit agreement of
the activity bits with what the simulator's sensor model would have shown — and
of blue's compromise bits with what the game's rules (`range/blue.py`) give from
the step's ground truth, finished actions and alerts (`compromise_figures`).
`write_validation` turns that into validation.md and PNGs with a one-line verdict.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np

from cyberdial.agents.recording import Recording, StepRecord
from cyberdial.agents.report import TERMS
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import COMPROMISE_BITS, ActionKind, Compromise, GameModel, Observed

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# The power calculation's settings: the difference to resolve, as a fraction of
# max(|simulated mean|, 1) (the verdict's scale), a two-sided test at ALPHA, and
# the probability of seeing a difference that large when it is there.
RESOLVE_FRACTION = 0.1
ALPHA = 0.05
POWER = 0.8
# Alert kinds as activity levels (as the bridge encodes them): 1 scan, 2 exploit.
ALERT_LEVEL = {"scan": 1, "exploit": 2, "decoy_touched": 2}
ACTIVITY_BITS = {0: (0, 0), 1: (1, 0), 2: (1, 1)}
# Blue's compromise bits (the observation's 3rd and 4th bit of a host) as the game's value.
OBSERVED_OF_BITS = {
    (int(bits[0]), int(bits[1])): Observed(value) for value, bits in enumerate(COMPROMISE_BITS)
}
BITS_OF_OBSERVED = {state: bits for bits, state in OBSERVED_OF_BITS.items()}
# A recording's ground-truth words as what Analyse reveals (`Observed` shares the values).
TRUTH_OBSERVED = {level.name.lower(): Observed(int(level)) for level in Compromise}


@dataclass
class SensorFigures:
    """How a range's sensors did against red's real actions (rates are NaN when unseen)."""

    red_scans: int = 0
    scans_detected: int = 0
    red_exploits: int = 0
    exploits_detected: int = 0
    compromises: int = 0
    compromises_detected: int = 0
    activity_alerts: int = 0
    false_positive_alerts: int = 0
    cells: int = 0
    bit_agreement: list[int] = field(default_factory=lambda: [0, 0])
    touched_cells: int = 0
    touched_bit_agreement: list[int] = field(default_factory=lambda: [0, 0])
    episodes: int = 0

    @staticmethod
    def _rate(hits: int, total: int) -> float:
        return hits / total if total else float("nan")

    def rates(self) -> dict[str, float]:
        return {
            "scan detection rate": self._rate(self.scans_detected, self.red_scans),
            "exploit detection rate": self._rate(self.exploits_detected, self.red_exploits),
            "compromise detection rate": self._rate(self.compromises_detected, self.compromises),
            "false-positive alerts per episode": self._rate(
                self.false_positive_alerts, self.episodes
            ),
            "share of alerts that are false positives": self._rate(
                self.false_positive_alerts, self.activity_alerts
            ),
            "activity bit 1 agreement, all host-steps": self._rate(
                self.bit_agreement[0], self.cells
            ),
            "activity bit 2 agreement, all host-steps": self._rate(
                self.bit_agreement[1], self.cells
            ),
            "activity bit 1 agreement, host-steps red touched": self._rate(
                self.touched_bit_agreement[0], self.touched_cells
            ),
            "activity bit 2 agreement, host-steps red touched": self._rate(
                self.touched_bit_agreement[1], self.touched_cells
            ),
        }


def alert_levels(step: StepRecord) -> dict[str, int]:
    levels: dict[str, int] = {}
    for alert in step.alerts:
        level = ALERT_LEVEL.get(alert.kind, 0)
        if level > levels.get(alert.host, 0):
            levels[alert.host] = level
    return levels


def _red(
    step: StepRecord, hosts_of_subnet: dict[str, list[str]]
) -> tuple[dict[str, int], set[str]]:
    """Red's expected activity level per host this step, and every host it touched."""
    expected: dict[str, int] = {}
    touched: set[str] = set()
    for action in step.ground_truth.red_actions:
        verb, _, target = action.partition(" ")
        if verb == "sweep":
            touched.update(hosts_of_subnet.get(target, []))
        elif verb in ("scan", "exploit"):
            level = 1 if verb == "scan" else 2
            expected[target] = max(expected.get(target, 0), level)
            touched.add(target)
        else:
            touched.add(target)
    return expected, touched


def _agreement(want: Sequence[int], got: Sequence[int]) -> list[int]:
    """Per bit of a host's two, 1 where the two readings agree."""
    return [int(want[i] == got[i]) for i in range(2)]


def _plus(totals: list[int], more: list[int]) -> list[int]:
    return [a + b for a, b in zip(totals, more, strict=True)]


def sensor_figures(recording: Recording) -> SensorFigures:
    figures = SensorFigures()
    hosts = [h.name for h in recording.header.hosts]
    hosts_of_subnet: dict[str, list[str]] = {}
    for host in recording.header.hosts:
        hosts_of_subnet.setdefault(host.subnet, []).append(host.name)
    entry_hosts: set[str] = set()
    for episode in recording.episodes():
        figures.episodes += 1
        steps = recording.steps_of(episode)
        levels = [alert_levels(step) for step in steps]
        reds = [_red(step, hosts_of_subnet) for step in steps]
        if steps:
            # Red's phishing foothold raises no network alert in either range.
            first = steps[0].ground_truth.compromise
            entry_hosts |= {h for h, c in first.items() if c != "clean"}
        for t, step in enumerate(steps):
            expected, touched = reds[t]
            now, later = levels[t], levels[t + 1] if t + 1 < len(steps) else {}
            before_touched = reds[t - 1][1] if t > 0 else set()
            for host, level in expected.items():
                seen = max(now.get(host, 0), later.get(host, 0))
                if level == 1:
                    figures.red_scans += 1
                    figures.scans_detected += seen >= 1
                else:
                    figures.red_exploits += 1
                    figures.exploits_detected += seen >= 2
            for host, level in now.items():
                if level:
                    figures.activity_alerts += 1
                    if host not in touched and host not in before_touched:
                        figures.false_positive_alerts += 1
            if t > 0:
                was = steps[t - 1].ground_truth.compromise
                for host, state in step.ground_truth.compromise.items():
                    if state != "clean" and was.get(host) == "clean" and host not in entry_hosts:
                        figures.compromises += 1
                        before = levels[t - 1].get(host, 0)
                        figures.compromises_detected += max(now.get(host, 0), before) >= 2
            for host in hosts:
                want = ACTIVITY_BITS[expected.get(host, 0)]
                got = ACTIVITY_BITS[now.get(host, 0)]
                figures.cells += 1
                agree = _agreement(want, got)
                figures.bit_agreement = _plus(figures.bit_agreement, agree)
                if host in touched:
                    figures.touched_cells += 1
                    figures.touched_bit_agreement = _plus(figures.touched_bit_agreement, agree)
    return figures


@dataclass
class CompromiseFigures:
    """How blue's compromise bits followed the game's rules, and ground truth (NaN when unseen).

    Each host-step that has an observation after it (every step but an episode's last)
    is one cell: blue's compromise bits after the step, from the next step's recorded
    observation, against what `range/blue.py`'s rules give from the bits before it, the
    Analyses and Restores that finished in it (Analyse reveals the true compromise at
    the step's start: the previous step's ground truth, clean before step 0), and its
    exploit alerts. In the simulator that is exact by construction; on real hosts a
    wrong or failed Analyse, a failed Restore or the bridge's bookkeeping shows here.
    """

    cells: int = 0
    bit_agreement: list[int] = field(default_factory=lambda: [0, 0])
    analysed_cells: int = 0
    analysed_bit_agreement: list[int] = field(default_factory=lambda: [0, 0])
    truth_matches: int = 0

    def rates(self) -> dict[str, float]:
        rate = SensorFigures._rate
        return {
            "compromise bit 1 agreement with the game's rules, all host-steps": rate(
                self.bit_agreement[0], self.cells
            ),
            "compromise bit 2 agreement with the game's rules, all host-steps": rate(
                self.bit_agreement[1], self.cells
            ),
            "compromise bit 1 agreement with the game's rules, host-steps an Analyse finished":
                rate(self.analysed_bit_agreement[0], self.analysed_cells),
            "compromise bit 2 agreement with the game's rules, host-steps an Analyse finished":
                rate(self.analysed_bit_agreement[1], self.analysed_cells),
            "compromise bits matching ground truth, all host-steps": rate(
                self.truth_matches, self.cells
            ),
        }


def _check_layout(recording: Recording, model: GameModel) -> None:
    """The recording's agents, hosts and actions must be the model's, or slots mean nothing."""
    header = recording.header
    agents = [(a.name, a.hosts, a.actions) for a in header.agents]
    wanted = [
        (layout.name, [model.scenario.all_hosts[h].name for h in layout.hosts],
         [action.label for action in layout.actions])
        for layout in model.agents
    ]
    if agents != wanted:
        raise CyberdialError(
            f"the {header.range} recording of {header.scenario!r} has other agents, hosts or"
            f" actions than scenario {model.scenario.name!r}: validate it with the scenario"
            " it was recorded with"
        )


def _observed_bits(model: GameModel, step: StepRecord) -> dict[str, tuple[int, int]]:
    """Blue's compromise bits per host in a step's recorded observations (first agent's)."""
    bits: dict[str, tuple[int, int]] = {}
    for layout in model.agents:
        text = step.observations.get(layout.name, "")
        for i, h in enumerate(layout.hosts):
            name = model.scenario.all_hosts[h].name
            at = 4 * i + 2
            if name not in bits and len(text) >= at + 2:
                bits[name] = (int(text[at]), int(text[at + 1]))
    return bits


def _finished_actions(model: GameModel, steps: list[StepRecord]) -> list[list[tuple[ActionKind,
                                                                                  str]]]:
    """Per step, the host actions that finished (took effect) in it: `advance_timers`
    replayed from the recorded slot each agent carried on (`action_index`)."""
    timers = [0] * model.n_agents
    finished: list[list[tuple[ActionKind, str]]] = []
    for step in steps:
        done: list[tuple[ActionKind, str]] = []
        for layout in model.agents:
            slot = step.action_index.get(layout.name, 0)
            if not 0 <= slot < layout.n_actions:
                slot = 0
            a = layout.index
            if timers[a] == 0:
                timers[a] = int(model.action_duration[a, slot])
            timers[a] -= 1
            action = layout.actions[slot]
            if timers[a] == 0 and action.host is not None:
                done.append((action.kind, action.host))
        finished.append(done)
    return finished


def compromise_figures(recording: Recording, model: GameModel) -> CompromiseFigures:
    """Blue's compromise bits against the game's rules and against ground truth, identically
    for either range's recording (see `CompromiseFigures`)."""
    _check_layout(recording, model)
    figures = CompromiseFigures()
    clean = {h.name: "clean" for h in recording.header.hosts}
    for episode in recording.episodes():
        steps = recording.steps_of(episode)
        finished = _finished_actions(model, steps)
        for t in range(len(steps) - 1):
            step = steps[t]
            before, after = _observed_bits(model, step), _observed_bits(model, steps[t + 1])
            truth_before = steps[t - 1].ground_truth.compromise if t > 0 else clean
            expected = {host: OBSERVED_OF_BITS[bits] for host, bits in before.items()}
            analysed: set[str] = set()
            for kind, host in finished[t]:
                if host not in expected:
                    continue
                if kind == ActionKind.ANALYSE:
                    expected[host] = TRUTH_OBSERVED[truth_before.get(host, "clean")]
                    analysed.add(host)
                elif kind == ActionKind.RESTORE:
                    expected[host] = Observed.NONE
            for host, level in alert_levels(step).items():
                if level >= 2 and expected.get(host) == Observed.NONE:
                    expected[host] = Observed.UNKNOWN
            truth = step.ground_truth.compromise
            for host, want_state in expected.items():
                want, got = BITS_OF_OBSERVED[want_state], after.get(host)
                if got is None:  # the host is in no agent's view after the step
                    continue
                agree = _agreement(want, got)
                figures.cells += 1
                figures.bit_agreement = _plus(figures.bit_agreement, agree)
                if host in analysed:
                    figures.analysed_cells += 1
                    figures.analysed_bit_agreement = _plus(figures.analysed_bit_agreement, agree)
                figures.truth_matches += OBSERVED_OF_BITS.get(got) == TRUTH_OBSERVED.get(
                    truth.get(host, ""))
    return figures


def episode_returns(recording: Recording) -> np.ndarray:
    return np.array([sum(s.reward for s in recording.steps_of(e)) for e in recording.episodes()])


def bootstrap_gap(sim: np.ndarray, emulated: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for mean(emulated) - mean(sim)."""
    rng = np.random.default_rng(seed)
    a = rng.choice(sim, size=(BOOTSTRAP_RESAMPLES, len(sim))).mean(axis=1)
    b = rng.choice(emulated, size=(BOOTSTRAP_RESAMPLES, len(emulated))).mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(b - a, [tail, 100 - tail])
    return float(low), float(high)


def episodes_needed(
    sim: np.ndarray,
    emulated: np.ndarray,
    fraction: float = RESOLVE_FRACTION,
    alpha: float = ALPHA,
    power: float = POWER,
) -> int | None:
    """Episodes per range a two-sided test at `alpha` needs to see, with probability
    `power`, a gap of `fraction` × max(|simulated mean|, 1):
    n = (z_{1-alpha/2} + z_{power})² (s_sim² + s_emu²) / delta², from the measured
    per-episode sample variances (normal approximation, the same n on both sides).
    None when a side has fewer than 2 episodes (no variance to measure)."""
    if len(sim) < 2 or len(emulated) < 2:
        return None
    delta = fraction * max(abs(float(sim.mean())), 1.0)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    variance = float(sim.var(ddof=1) + emulated.var(ddof=1))
    # At least 2: fewer leave no variance to check the next run's spread with.
    return max(2, math.ceil(z * z * variance / (delta * delta)))


def action_shares(recording: Recording) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for step in recording.steps:
        for label in step.actions.values():
            counts[label.split(" ")[0]] += 1
    total = sum(counts.values()) or 1
    return {verb: n / total for verb, n in counts.items()}


def term_means(recording: Recording) -> dict[str, float]:
    return {
        term: float(
            np.mean(
                [
                    sum(s.reward_terms.get(term, 0.0) for s in recording.steps_of(e))
                    for e in recording.episodes()
                ]
            )
        )
        for term in TERMS
    }


@dataclass
class Verdict:
    passed: bool
    gap: float
    allowed: float
    line: str
    # Filled in by `write_validation`: the gap's interval and the power calculation.
    summary: str = ""


def verdict(sim: np.ndarray, emulated: np.ndarray, tolerance: float) -> Verdict:
    """Pass when |mean gap| <= tolerance × max(|sim mean|, 1)."""
    gap = float(emulated.mean() - sim.mean())
    allowed = tolerance * max(abs(float(sim.mean())), 1.0)
    passed = abs(gap) <= allowed
    line = (
        f"{'PASS' if passed else 'FAIL'}: emulated return {emulated.mean():.2f} vs simulated"
        f" {sim.mean():.2f}, gap {gap:+.2f}; allowed ±{allowed:.2f}"
        f" (tolerance {tolerance:g} × max(|sim mean|, 1))"
    )
    return Verdict(passed, gap, allowed, line)


def _bar_pair(
    path: Path, title: str, labels: list[str], sim: list[float], emu: list[float], ylabel: str,
    wrap: int = 0,
) -> None:
    """Simulated and emulated bars side by side; with `wrap`, long labels are wrapped to
    that many characters and set upright (rotated, the sensors' long names overlap)."""
    width = 1.2 if wrap else 0.9
    figure, axis = plt.subplots(figsize=(max(6.0, width * len(labels) + 3), 4.5 if wrap else 4))
    x = np.arange(len(labels))
    axis.bar(x - 0.2, sim, width=0.4, label="simulated")
    axis.bar(x + 0.2, emu, width=0.4, label="emulated")
    axis.set_xticks(x)
    if wrap:
        wrapped = [textwrap.fill(label, wrap, break_on_hyphens=False) for label in labels]
        axis.set_xticklabels(wrapped, fontsize=7)
    else:
        axis.set_xticklabels(labels, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.2f}"


def write_validation(
    sim: Recording, emulated: Recording, out_dir: Path, tolerance: float, command: str = "",
    *, model: GameModel,
) -> Verdict:
    """Write validation.md and its PNGs into `out_dir`; return the verdict. `model` is the
    game both recordings were played in (its action durations say when blue's actions
    took effect, for the compromise bits' figures)."""
    sim_compromise, emu_compromise = compromise_figures(sim, model), compromise_figures(
        emulated, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    sim_returns, emu_returns = episode_returns(sim), episode_returns(emulated)
    result = verdict(sim_returns, emu_returns, tolerance)
    low, high = bootstrap_gap(sim_returns, emu_returns)
    needed = episodes_needed(sim_returns, emu_returns)
    delta = RESOLVE_FRACTION * max(abs(float(sim_returns.mean())), 1.0)
    power_text = (
        f"resolving a {RESOLVE_FRACTION:.0%} difference (±{delta:.2f}) needs {needed}"
        f" episodes on each side (this run: {min(len(sim_returns), len(emu_returns))})"
        if needed is not None
        else f"resolving a {RESOLVE_FRACTION:.0%} difference needs at least 2 episodes on each"
        " side to measure the spread"
    )
    result = replace(
        result,
        summary=f"gap {result.gap:+.2f}, {CONFIDENCE:.0%} interval [{low:+.2f}, {high:+.2f}];"
        f" {power_text}",
    )
    header = sim.header
    run_ids = emulated.header.run_ids or (
        [emulated.header.run_id] if emulated.header.run_id else [])
    lines = [
        f"# Validation: {header.scenario}, policy `{header.policy}`",
        "",
        f"{len(sim_returns)} simulated and {len(emu_returns)} emulated episodes with the same"
        f" seeds (first seed {header.seed}); scenario hash `{header.scenario_hash}`"
        + (f"; emulated run `{run_ids[0]}`" if len(run_ids) == 1 else "")
        + (f"; {len(run_ids)} emulated ranges at once (runs "
           + ", ".join(f"`{r}`" for r in run_ids) + ")" if len(run_ids) > 1 else "")
        + ".",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += [
        "",
        "## Return",
        "",
        "| range | mean ± std | episodes |",
        "|---|---|---|",
        f"| simulated | {sim_returns.mean():.2f} ± {sim_returns.std():.2f} | {len(sim_returns)} |",
        f"| emulated | {emu_returns.mean():.2f} ± {emu_returns.std():.2f} | {len(emu_returns)} |",
        "",
        f"Gap (emulated − simulated): {result.gap:+.2f}, {CONFIDENCE:.0%} bootstrap interval"
        f" [{low:+.2f}, {high:+.2f}].",
        "",
        f"Power: {power_text[0].upper() + power_text[1:]}, for a two-sided test at"
        f" α = {ALPHA:g} with power {POWER:g}: n = (z₁₋α/₂ + z_power)² (s_sim² + s_emu²) / δ²,"
        f" δ = {RESOLVE_FRACTION:g} × max(|simulated mean|, 1), from the returns' per-episode"
        " sample variances (n − 1; normal approximation, the same n in both ranges).",
        "",
        "## Reward terms (mean cost per episode)",
        "",
        "| term | simulated | emulated |",
        "|---|---|---|",
    ]
    sim_terms, emu_terms = term_means(sim), term_means(emulated)
    lines += [f"| {t} | {sim_terms[t]:.2f} | {emu_terms[t]:.2f} |" for t in TERMS]
    sim_actions, emu_actions = action_shares(sim), action_shares(emulated)
    verbs = sorted(set(sim_actions) | set(emu_actions))
    lines += [
        "",
        "## Actions (share of all agent-steps)",
        "",
        "| action | simulated | emulated |",
        "|---|---|---|",
    ]
    lines += [
        f"| {v} | {sim_actions.get(v, 0.0):.2%} | {emu_actions.get(v, 0.0):.2%} |" for v in verbs
    ]
    sim_sensors, emu_sensors = sensor_figures(sim), sensor_figures(emulated)
    sim_rates = sim_sensors.rates() | sim_compromise.rates()
    emu_rates = emu_sensors.rates() | emu_compromise.rates()
    lines += [
        "",
        "## Sensors against red's real actions",
        "",
        "Detection counts an alert on the host in the step of red's action or the next;"
        " a false positive is an alert on a host red did not touch that step or the one"
        " before; bit agreement compares each host-step's activity bits with what the"
        " simulator's sensor model would show for red's actions (every scan seen as 10,"
        " every exploit as 11, nothing else). The compromise bits are compared, bit by bit,"
        " with what the game's rules (`range/blue.py`) give from the bits before the step,"
        " the Analyses and Restores that finished in it and its exploit alerts, where"
        " Analyse reveals the true compromise at the step's start (the previous step's"
        " ground truth): exact in the simulator by construction, so on real hosts a"
        " wrong or failed Analyse or Restore shows as less than 1.00. Matching ground"
        " truth counts the host-steps blue's compromise bits equal the true compromise"
        " after the step (unknown never does): blue's knowledge, not the truth by design,"
        " so it depends on the policy and red, the same in both ranges when the game is.",
        "",
        "| figure | simulated | emulated |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_fmt(sim_rates[name])} | {_fmt(emu_rates[name])} |" for name in sim_rates
    ]
    lines += [
        f"| red scans / exploits / compromises seen | {sim_sensors.red_scans} /"
        f" {sim_sensors.red_exploits} / {sim_sensors.compromises} | {emu_sensors.red_scans} /"
        f" {emu_sensors.red_exploits} / {emu_sensors.compromises} |",
        f"| host-steps compared for the compromise bits / of them with an Analyse finished |"
        f" {sim_compromise.cells} / {sim_compromise.analysed_cells} | {emu_compromise.cells} /"
        f" {emu_compromise.analysed_cells} |",
        "",
        "![returns](returns.png)",
        "![reward terms](terms.png)",
        "![actions](actions.png)",
        "![sensors](sensors.png)",
        "",
        "## Verdict",
        "",
        result.line,
        "",
    ]
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.boxplot([sim_returns, emu_returns])
    axis.set_xticks([1, 2])
    axis.set_xticklabels(["simulated", "emulated"])
    axis.set_ylabel("episode return")
    axis.set_title("returns, same seeds")
    figure.tight_layout()
    figure.savefig(out_dir / "returns.png", dpi=100)
    plt.close(figure)
    _bar_pair(
        out_dir / "terms.png",
        "reward terms",
        list(TERMS),
        [sim_terms[t] for t in TERMS],
        [emu_terms[t] for t in TERMS],
        "mean cost / episode",
    )
    _bar_pair(
        out_dir / "actions.png",
        "actions",
        verbs,
        [sim_actions.get(v, 0.0) for v in verbs],
        [emu_actions.get(v, 0.0) for v in verbs],
        "share of agent-steps",
    )
    names = [n for n in sim_rates if "rate" in n or "agreement" in n or "matching" in n]
    _bar_pair(
        out_dir / "sensors.png",
        "sensors",
        names,
        [np.nan_to_num(sim_rates[n]) for n in names],
        [np.nan_to_num(emu_rates[n]) for n in names],
        "rate",
        wrap=16,
    )
    (out_dir / "validation.md").write_text("\n".join(lines), encoding="utf-8")
    return result
