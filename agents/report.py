"""Turn a recording into a markdown summary and PNG plots (`cyberdial report RUN`).

Plots: a timeline of compromise per host group with blue actions and message
bits drawn on it, the reward terms over time, and bits sent per agent.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt
import numpy as np

from cyberdial.agents.recording import Recording, StepRecord
from cyberdial.range.model import REWARD_TERMS

SEVERITY = {"clean": 0, "user": 1, "privileged": 2}
TERMS = REWARD_TERMS


def _groups(recording: Recording) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for host in recording.header.hosts:
        groups.setdefault(f"{host.subnet}/{host.group}", []).append(host.name)
    return list(groups.items())


def compromise_matrix(recording: Recording, steps: list[StepRecord]) -> np.ndarray:
    """(groups, steps): mean compromise severity of each host group (impacted counts 3)."""
    groups = _groups(recording)
    matrix = np.zeros((len(groups), len(steps)))
    for t, step in enumerate(steps):
        impacted = set(step.ground_truth.impacted)
        for g, (_, names) in enumerate(groups):
            values = [
                3
                if n in impacted
                else SEVERITY.get(step.ground_truth.compromise.get(n, "clean"), 0)
                for n in names
            ]
            matrix[g, t] = max(values) if values else 0
    return matrix


def plot_timeline(recording: Recording, episode: int, path: Path) -> None:
    steps = recording.steps_of(episode)
    groups = _groups(recording)
    group_of = {name: g for g, (_, names) in enumerate(groups) for name in names}
    matrix = compromise_matrix(recording, steps)
    height = max(3.0, 0.45 * len(groups) + 2.0)
    figure, axis = plt.subplots(figsize=(11, height))
    image = axis.imshow(matrix, aspect="auto", cmap="Reds", vmin=0, vmax=3, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axis, ticks=[0, 1, 2, 3])
    colorbar.ax.set_yticklabels(["clean", "user", "privileged", "impacted"])
    markers = {
        "analyse": ("o", "tab:blue"),
        "remove": ("s", "tab:green"),
        "restore": ("D", "tab:purple"),
        "block": ("X", "black"),
        "unblock": ("P", "grey"),
        "decoy": ("*", "tab:orange"),
    }
    seen: set[str] = set()
    for t, step in enumerate(steps):
        for label in step.actions.values():
            verb, _, target = label.partition(" ")
            if verb == "sleep" or verb not in markers:
                continue
            rows = (
                [group_of[target]]
                if target in group_of
                else [g for g, (name, _) in enumerate(groups) if name.split("/")[0] == target]
            )
            marker, color = markers[verb]
            for row in rows:
                axis.scatter(
                    t,
                    row,
                    marker=marker,
                    color=color,
                    s=40,
                    label=verb if verb not in seen else None,
                    zorder=3,
                )
                seen.add(verb)
        sent = sum(bits.count("1") for bits in step.messages.values())
        if sent:
            axis.scatter(
                t,
                len(groups) - 0.5 + 0.35,
                marker="|",
                color="tab:cyan",
                s=80,
                label="message bit" if "msg" not in seen else None,
                zorder=3,
            )
            seen.add("msg")
    axis.set_yticks(range(len(groups)))
    axis.set_yticklabels([name for name, _ in groups])
    axis.set_xlabel("step")
    axis.set_title(
        f"{recording.header.scenario}: compromise per host group, episode {episode}"
        f" ({recording.header.range}, {recording.header.policy})"
    )
    if seen:
        axis.legend(loc="upper left", bbox_to_anchor=(1.15, 1.0), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_reward_terms(recording: Recording, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9, 4))
    for episode in recording.episodes():
        steps = recording.steps_of(episode)
        for i, term in enumerate(TERMS):
            values = [step.reward_terms.get(term, 0.0) for step in steps]
            axis.plot(
                values,
                color=f"C{i}",
                alpha=0.8,
                label=term if episode == recording.episodes()[0] else None,
            )
    axis.set_xlabel("step")
    axis.set_ylabel("cost this step")
    axis.set_title("reward terms over time (every episode)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_bits(recording: Recording, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(9, 3.5))
    for i, agent in enumerate(recording.header.agents):
        for episode in recording.episodes():
            steps = recording.steps_of(episode)
            sent = np.cumsum([step.messages.get(agent.name, "").count("1") for step in steps])
            axis.plot(
                sent,
                color=f"C{i}",
                alpha=0.8,
                label=agent.name if episode == recording.episodes()[0] else None,
            )
    axis.set_xlabel("step")
    axis.set_ylabel("bits sent (cumulative)")
    axis.set_title("message bits sent per agent")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(recording: Recording, out_dir: Path) -> Path:
    """Write report.md and the PNGs beside it; return the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = recording.header
    lines = [
        f"# Drill report: {header.scenario} ({header.range} range)",
        "",
        f"Policy `{header.policy}`, seed {header.seed}, scenario hash `{header.scenario_hash}`"
        + (f", run `{header.run_id}`" if header.run_id else "")
        + ".",
        "",
        "| episode | steps | return | bits sent | green failures (cost) | red privileged on |"
        " impacted | interrupted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    returns = []
    for episode in recording.episodes():
        steps = recording.steps_of(episode)
        end = next((e for e in recording.ends if e.episode == episode), None)
        total = sum(step.reward for step in steps)
        returns.append(total)
        bits = sum(sum(b.count("1") for b in step.messages.values()) for step in steps)
        green = sum(step.reward_terms.get("green", 0.0) for step in steps)
        last = steps[-1].ground_truth
        privileged = [h for h, state in last.compromise.items() if state == "privileged"]
        lines.append(
            f"| {episode} | {len(steps)} | {total:.2f} | {bits} | {green:.2f} |"
            f" {', '.join(privileged[:6]) or '-'}{' …' if len(privileged) > 6 else ''} |"
            f" {', '.join(last.impacted) or '-'} |"
            f" {'yes' if end is None or end.interrupted else 'no'} |"
        )
    if returns:
        lines += [
            "",
            f"Mean return {np.mean(returns):.2f} ± {np.std(returns):.2f} over"
            f" {len(returns)} episode(s).",
        ]
    lines += [
        "",
        "## Reward terms (total cost per episode, mean)",
        "",
        "| term | cost |",
        "|---|---|",
    ]
    for term in TERMS:
        per_episode = [
            sum(s.reward_terms.get(term, 0.0) for s in recording.steps_of(e))
            for e in recording.episodes()
        ]
        lines.append(f"| {term} | {np.mean(per_episode) if per_episode else 0.0:.2f} |")
    counts: dict[str, int] = {}
    for step in recording.steps:
        for label in step.actions.values():
            verb = label.split(" ")[0]
            counts[verb] = counts.get(verb, 0) + 1
    lines += ["", "## Blue actions", "", "| action | times |", "|---|---|"]
    lines += [f"| {verb} | {n} |" for verb, n in sorted(counts.items(), key=lambda x: -x[1])]
    alerts: dict[str, int] = {}
    for step in recording.steps:
        for alert in step.alerts:
            alerts[alert.kind] = alerts.get(alert.kind, 0) + 1
    lines += ["", "## Alerts", "", "| kind | count |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in sorted(alerts.items())] or ["| - | 0 |"]
    lines += ["", "## Plots", ""]
    for episode in recording.episodes():
        name = f"timeline_episode{episode}.png"
        plot_timeline(recording, episode, out_dir / name)
        lines.append(f"![compromise timeline, episode {episode}]({name})")
    plot_reward_terms(recording, out_dir / "reward_terms.png")
    plot_bits(recording, out_dir / "bits.png")
    lines += ["![reward terms](reward_terms.png)", "![bits sent](bits.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
