"""Pictures of a scenario's network, drawn with networkx and matplotlib.

`Topology` is what a picture needs (subnets, flows, host groups, defenders, red's
entry and targets), built from a `Scenario` or from a recording's header. Two
pictures share one layout: `draw_scenario` (host groups with counts and values,
for `cyberdial scenario show --png` and docs/) and `host_map_svg` (every host a
marker with an SVG id, which the drill's web view recolours by truth and belief).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

from cyberdial.agents.recording import RecordingHeader
from cyberdial.range.scenario import Scenario

VALUE_COLOURS = {"none": "#d9d9d9", "low": "#9ecae1", "medium": "#4292c6", "high": "#08306b"}
AGENT_COLOURS = ("#1b9e77", "#7570b3", "#e6ab02", "#66a61e", "#a6761d", "#e7298a", "#666666")
RED = "#d62728"
# Truth and belief colours; the web page uses the same table (sent with the picture).
STATE_COLOURS = {
    "clean": "#2ca02c",
    "user": "#ff7f0e",
    "privileged": "#d62728",
    "impacted": "#6a0dad",
    "unknown": "#9e9e9e",
    "unwatched": "#ffffff",
}

BOX_WIDTH = 6.0
COLUMN_GAP = 1.6
ROW_GAP = 0.8
TITLE_HEIGHT = 0.9
HOST_PITCH = 0.28
HOSTS_PER_ROW = 20
GROUP_ROW = 0.55


@dataclass(frozen=True)
class GroupInfo:
    name: str
    subnet: str
    value: str
    mission: bool
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """The parts of a scenario a picture shows; no rules, no state."""

    name: str
    subnets: tuple[str, ...]
    cidrs: dict[str, str]
    flows: dict[str, tuple[str, ...]]
    groups: tuple[GroupInfo, ...]
    defenders: dict[str, str]  # subnet -> agent
    agents: tuple[str, ...]
    red_entry: str | None
    red_targets: tuple[str, ...]
    green_servers: tuple[str, ...] = ()
    host_subnet: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_scenario(cls, scenario: Scenario) -> Topology:
        hosts = scenario.all_hosts
        groups = tuple(
            GroupInfo(
                name=group.name,
                subnet=group.subnet,
                value=group.value,
                mission=group.mission,
                hosts=tuple(h.name for h in hosts if h.group == index),
            )
            for index, group in enumerate(scenario.hosts)
        )
        return cls(
            name=scenario.name,
            subnets=tuple(s.name for s in scenario.subnets),
            cidrs={s.name: s.cidr for s in scenario.subnets},
            flows={s.name: tuple(s.flows) for s in scenario.subnets},
            groups=groups,
            defenders={s: a.name for a in scenario.blue.agents for s in a.subnets},
            agents=tuple(a.name for a in scenario.blue.agents),
            red_entry=scenario.red.entry,
            red_targets=tuple(scenario.red.targets),
            green_servers=tuple(scenario.green.servers),
            host_subnet={h.name: h.subnet for h in hosts},
        )

    @classmethod
    def of_header(cls, header: RecordingHeader) -> Topology:
        """From a recording alone (flows and red only where the recording carries them)."""
        order: list[tuple[str, str]] = []
        members: dict[tuple[str, str], list[Any]] = {}
        for host in header.hosts:
            key = (host.group, host.subnet)
            if key not in members:
                order.append(key)
                members[key] = []
            members[key].append(host)
        groups = tuple(
            GroupInfo(
                name=name,
                subnet=subnet,
                value=members[(name, subnet)][0].value,
                mission=any(h.mission for h in members[(name, subnet)]),
                hosts=tuple(h.name for h in members[(name, subnet)]),
            )
            for name, subnet in order
        )
        return cls(
            name=header.scenario,
            subnets=tuple(header.subnets),
            cidrs=dict(header.cidrs),
            flows={s: tuple(header.flows.get(s, ())) for s in header.subnets},
            groups=groups,
            defenders={s: a.name for a in header.agents for s in a.subnets},
            agents=tuple(a.name for a in header.agents),
            red_entry=header.red_entry,
            red_targets=tuple(header.red_targets),
            host_subnet={h.name: h.subnet for h in header.hosts},
        )

    def flow_graph(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        graph.add_nodes_from(self.subnets)
        for source, targets in self.flows.items():
            graph.add_edges_from((source, target) for target in targets)
        return graph


@dataclass(frozen=True)
class Box:
    x: float
    y: float  # top edge
    width: float
    height: float


def layout_boxes(
    topology: Topology, content_height: Callable[[str], float], box_width: float = BOX_WIDTH
) -> dict[str, Box]:
    """Subnets in columns by flow distance from red's entry (networkx's multipartite layout).

    The entry's subnet is the left column, what red reaches next the one after it,
    so red's way through the network reads left to right.
    """
    graph = topology.flow_graph()
    entry_subnet = topology.host_subnet.get(topology.red_entry or "", topology.subnets[0])
    # Subnets nothing flows into are entry points too (red's or not): left column.
    sources = {entry_subnet} | {s for s in graph.nodes if graph.in_degree(s) == 0}
    distance = nx.multi_source_dijkstra_path_length(graph, sources)
    unreachable = int(max(distance.values(), default=0)) + 1
    for subnet in graph.nodes:
        graph.nodes[subnet]["layer"] = int(distance.get(subnet, unreachable))
    positions = nx.multipartite_layout(graph, subset_key="layer", align="vertical")
    columns: dict[int, list[str]] = {}
    for subnet in topology.subnets:
        columns.setdefault(graph.nodes[subnet]["layer"], []).append(subnet)
    boxes: dict[str, Box] = {}
    for column, layer in enumerate(sorted(columns)):
        # Top to bottom in the layout's order within the layer.
        ordered = sorted(columns[layer], key=lambda s: -float(positions[s][1]))
        y = 0.0
        for subnet in ordered:
            height = TITLE_HEIGHT + content_height(subnet)
            boxes[subnet] = Box(column * (box_width + COLUMN_GAP), -y, box_width, height)
            y += height + ROW_GAP
    return boxes


def _agent_colour(topology: Topology, agent: str | None) -> str:
    if agent is None or agent not in topology.agents:
        return "#bbbbbb"
    return AGENT_COLOURS[topology.agents.index(agent) % len(AGENT_COLOURS)]


def _draw_boxes(
    ax: Axes, topology: Topology, boxes: dict[str, Box], gid_prefix: str = ""
) -> dict[str, FancyBboxPatch]:
    patches: dict[str, FancyBboxPatch] = {}
    for subnet, box in boxes.items():
        agent = topology.defenders.get(subnet)
        patch = FancyBboxPatch(
            (box.x, box.y - box.height),
            box.width,
            box.height,
            boxstyle="round,pad=0.05,rounding_size=0.25",
            facecolor="#fbfbfb",
            edgecolor=_agent_colour(topology, agent),
            linewidth=2.5,
        )
        if gid_prefix:
            patch.set_gid(f"{gid_prefix}subnet-{subnet}")
        ax.add_patch(patch)
        patches[subnet] = patch
        cidr = topology.cidrs.get(subnet, "")
        ax.text(
            box.x + 0.2,
            box.y - 0.3,
            f"{subnet}  {cidr}".strip(),
            fontsize=9,
            fontweight="bold",
            va="center",
        )
        ax.text(
            box.x + 0.2,
            box.y - 0.65,
            f"defended by {agent}" if agent else "not defended",
            fontsize=7.5,
            color=_agent_colour(topology, agent),
            va="center",
        )
    return patches


def _draw_flows(ax: Axes, topology: Topology, patches: dict[str, FancyBboxPatch]) -> None:
    graph = topology.flow_graph()
    for source, target in graph.edges:
        if source == target:
            continue
        a, b = patches[source], patches[target]
        ax.add_patch(
            FancyArrowPatch(
                _centre(a),
                _centre(b),
                patchA=a,
                patchB=b,
                arrowstyle="-|>",
                mutation_scale=14,
                connectionstyle="arc3,rad=0.18",
                color="#555555",
                linewidth=1.2,
                zorder=0.5,
            )
        )


def _centre(patch: FancyBboxPatch) -> tuple[float, float]:
    return (patch.get_x() + patch.get_width() / 2, patch.get_y() + patch.get_height() / 2)


def _finish(ax: Axes, boxes: dict[str, Box]) -> None:
    left = min(b.x for b in boxes.values()) - 0.6
    right = max(b.x + b.width for b in boxes.values()) + 0.6
    top = max(b.y for b in boxes.values()) + 0.9
    bottom = min(b.y - b.height for b in boxes.values()) - 0.6
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_scenario(topology: Topology) -> Figure:
    """Subnets, host groups (count, value, mission), flows, defenders, red's entry and targets."""
    groups_of = {s: [g for g in topology.groups if g.subnet == s] for s in topology.subnets}
    boxes = layout_boxes(
        topology, lambda s: GROUP_ROW * max(1, len(groups_of[s])) + 0.2, box_width=4.9
    )
    width = max(b.x + b.width for b in boxes.values()) - min(b.x for b in boxes.values())
    height = max(b.y for b in boxes.values()) - min(b.y - b.height for b in boxes.values())
    figure, ax = plt.subplots(figsize=(max(6.0, 0.75 * width), max(3.0, 0.75 * height + 1.2)))
    patches = _draw_boxes(ax, topology, boxes)
    _draw_flows(ax, topology, patches)
    graph = nx.Graph()
    positions: dict[str, tuple[float, float]] = {}
    for subnet, box in boxes.items():
        for row, group in enumerate(groups_of[subnet]):
            node = f"{subnet}/{group.name}"
            positions[node] = (box.x + 0.45, box.y - TITLE_HEIGHT - 0.25 - row * GROUP_ROW)
            graph.add_node(node, group=group)
    for shape, mission in (("o", False), ("*", True)):
        nodes = [n for n in graph.nodes if graph.nodes[n]["group"].mission == mission]
        nx.draw_networkx_nodes(
            graph,
            positions,
            nodelist=nodes,
            node_shape=shape,
            node_size=260 if mission else 150,
            node_color=[VALUE_COLOURS[graph.nodes[n]["group"].value] for n in nodes],
            edgecolors="#333333",
            linewidths=0.8,
            ax=ax,
        )
    entry, targets = topology.red_entry, set(topology.red_targets)
    for node, (x, y) in positions.items():
        info: GroupInfo = graph.nodes[node]["group"]
        count = len(info.hosts)
        label = f"{info.name} ×{count}" if count > 1 else info.name
        label += f"  · {info.value}" + ("  · mission" if info.mission else "")
        servers = [h for h in info.hosts if h in topology.green_servers]
        if servers:
            label += "  · green server"
        ax.text(x + 0.3, y, label, fontsize=8, va="center")
        marks = []
        if entry in info.hosts:
            marks.append(f"red entry {entry}")
        hit = [h for h in info.hosts if h in targets]
        if hit:
            marks.append("red target " + ", ".join(hit))
        if marks:
            ax.annotate(
                " · ".join(marks),
                (x, y),
                xytext=(x + 0.3, y - 0.26),
                fontsize=7.5,
                color=RED,
                fontweight="bold",
                va="center",
            )
            ax.scatter([x], [y], s=480, facecolors="none", edgecolors=RED, linewidths=1.8)
    legend = [Patch(facecolor=c, edgecolor="#333333", label=f"value {v}")
              for v, c in VALUE_COLOURS.items()]
    legend += [Patch(facecolor="white", edgecolor=_agent_colour(topology, a), linewidth=2.5,
                     label=a) for a in topology.agents]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4,
              fontsize=7.5, frameon=False)
    ax.set_title(f"scenario {topology.name}: subnets, host groups, flows (arrows), defenders",
                 fontsize=10)
    _finish(ax, boxes)
    figure.tight_layout()
    return figure


def save_scenario_png(topology: Topology, path: Path, dpi: int = 110) -> Path:
    figure = draw_scenario(topology)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)
    return path


def _host_positions(topology: Topology, boxes: dict[str, Box]) -> dict[str, tuple[float, float]]:
    positions: dict[str, tuple[float, float]] = {}
    for subnet, box in boxes.items():
        y = box.y - TITLE_HEIGHT - 0.15
        for group in (g for g in topology.groups if g.subnet == subnet):
            for i, host in enumerate(group.hosts):
                row, column = divmod(i, HOSTS_PER_ROW)
                positions[host] = (box.x + 0.3 + column * HOST_PITCH, y - row * HOST_PITCH)
            y -= HOST_PITCH * (1 + (len(group.hosts) - 1) // HOSTS_PER_ROW) + 0.15
    return positions


def _host_rows(topology: Topology, subnet: str) -> float:
    groups = [g for g in topology.groups if g.subnet == subnet]
    return sum(HOST_PITCH * (1 + (len(g.hosts) - 1) // HOSTS_PER_ROW) + 0.15 for g in groups) + 0.1


def host_map_svg(topology: Topology, panels: Sequence[tuple[str, str]]) -> str:
    """One SVG with a panel per (prefix, title): every host a marker with id PREFIX-host-NAME.

    Subnet boxes are PREFIX-subnet-NAME. The web view recolours these by id; the
    picture itself is drawn once, by networkx and matplotlib.
    """
    boxes = layout_boxes(topology, lambda s: _host_rows(topology, s))
    positions = _host_positions(topology, boxes)
    width = max(b.x + b.width for b in boxes.values()) - min(b.x for b in boxes.values())
    height = max(b.y for b in boxes.values()) - min(b.y - b.height for b in boxes.values())
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(4.0, 0.55 * width), len(panels) * max(1.6, 0.55 * height + 0.5)),
        squeeze=False,
    )
    graph = nx.Graph()
    graph.add_nodes_from(positions)
    mission = {h for g in topology.groups if g.mission for h in g.hosts}
    try:
        for ax, (prefix, title) in zip(axes[:, 0], panels, strict=True):
            patches = _draw_boxes(ax, topology, boxes, gid_prefix=f"{prefix}-")
            _draw_flows(ax, topology, patches)
            for host in positions:
                collection = nx.draw_networkx_nodes(
                    graph,
                    positions,
                    nodelist=[host],
                    node_shape="*" if host in mission else "s",
                    node_size=70 if host in mission else 34,
                    node_color=STATE_COLOURS["clean"],
                    edgecolors="#333333",
                    linewidths=0.5,
                    ax=ax,
                )
                collection.set_gid(f"{prefix}-host-{host}")
                collection.set_url(None)
            ax.set_title(title, fontsize=10)
            _finish(ax, boxes)
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg")
    finally:
        plt.close(figure)
    return out.getvalue()
