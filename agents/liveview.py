"""The drill's live terminal view, drawn from recorded steps (so replay shows the same).

Per subnet: how many hosts are clean / user / privileged / impacted and whether
it is blocked; the latest alerts; each agent's action and message bits; the
return so far.
"""

from __future__ import annotations

from collections import Counter, deque

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cyberdial.agents.recording import AlertRecord, RecordingHeader, StepRecord

ALERTS_SHOWN = 8
HOSTS_NAMED = 6


class LiveView:
    """Keeps what the view needs across steps; `render()` gives the current frame."""

    def __init__(self, header: RecordingHeader, title: str = "") -> None:
        self.header = header
        self.title = title or f"{header.scenario} — {header.range} range — policy {header.policy}"
        self.alerts: deque[tuple[int, AlertRecord]] = deque(maxlen=ALERTS_SHOWN)
        self.step: StepRecord | None = None
        self.episode_return = 0.0
        self.bits = 0
        self.note = ""

    def update(self, step: StepRecord) -> None:
        if self.step is not None and step.episode != self.step.episode:
            self.episode_return, self.bits = 0.0, 0
        self.step = step
        self.episode_return += step.reward
        self.bits += sum(bits.count("1") for bits in step.messages.values())
        for alert in step.alerts:
            self.alerts.append((step.step, alert))

    def render(self) -> RenderableType:
        step = self.step
        if step is None:
            return Panel(Text("waiting for the first step..."), title=self.title)
        truth = step.ground_truth
        subnets = Table(
            expand=True,
            title=f"episode {step.episode}, step {step.step + 1}/{self.header.episode_length}",
        )
        for column in (
            "subnet",
            "clean",
            "user",
            "privileged",
            "impacted",
            "blocked",
            "compromised hosts",
        ):
            subnets.add_column(column)
        impacted = set(truth.impacted)
        for subnet in self.header.subnets:
            names = [h.name for h in self.header.hosts if h.subnet == subnet]
            counts = Counter(truth.compromise.get(name, "clean") for name in names)
            bad = [n for n in names if truth.compromise.get(n, "clean") != "clean"]
            shown = ", ".join(
                f"{n}{'!' if n in impacted else ''}({truth.compromise[n][0].upper()})"
                for n in bad[:HOSTS_NAMED]
            ) + (f" +{len(bad) - HOSTS_NAMED}" if len(bad) > HOSTS_NAMED else "")
            subnets.add_row(
                subnet,
                str(counts["clean"]),
                str(counts["user"]),
                str(counts["privileged"]),
                str(sum(1 for n in names if n in impacted)),
                "[bold red]yes[/]" if subnet in truth.blocked else "no",
                shown or "-",
            )
        agents = Table(expand=True, title="blue agents")
        for column in ("agent", "action", "message", "result"):
            agents.add_column(column)
        results = {c.agent: ("ok" if c.ok else f"failed: {c.detail}") for c in step.commands}
        for agent in self.header.agents:
            agents.add_row(
                agent.name,
                step.actions.get(agent.name, "-"),
                step.messages.get(agent.name, "") or "-",
                results.get(agent.name, ""),
            )
        alerts = Table(expand=True, title="latest alerts")
        for column in ("step", "host", "kind", "evidence"):
            alerts.add_column(column)
        for at, alert in self.alerts:
            alerts.add_row(str(at + 1), alert.host, alert.kind, alert.evidence[:60])
        summary = Text(
            f"reward this step {step.reward:+.2f}   return so far {self.episode_return:+.2f}"
            f"   bits sent {self.bits}   red: {truth.red_action or '-'}"
            + (f"\n{self.note}" if self.note else "")
        )
        return Panel(Group(subnets, agents, alerts, summary), title=self.title)
