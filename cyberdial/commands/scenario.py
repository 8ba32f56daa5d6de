"""`cyberdial scenario validate|show`: check scenario files and summarise them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyberdial.range.errors import CyberdialError, ScenarioError
from cyberdial.range.scenario import load_scenario


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("scenario", help="validate or summarise scenario files")
    actions = parser.add_subparsers(dest="scenario_command", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate", help="check scenario files; print OK or every problem with file:line:column"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    validate.set_defaults(func=validate_command)
    show = actions.add_parser("show", help="print a summary table of one scenario")
    show.add_argument("file", metavar="FILE", help="scenario YAML file or shipped name (tiny)")
    show.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="also draw the topology (subnets, host groups, flows, defenders, red) to FILE",
    )
    show.set_defaults(func=show_command)


def validate_command(args: argparse.Namespace) -> int:
    failed = 0
    for file in args.files:
        try:
            scenario = load_scenario(file)
        except ScenarioError as error:
            failed += 1
            for line in str(error).splitlines():  # each problem, capped in number and length
                print(f"error: {line}", file=sys.stderr)
            continue
        print(f"{file}: OK ({scenario.name}, {len(scenario.all_hosts)} hosts)")
    return 2 if failed else 0


def show_command(args: argparse.Namespace) -> int:
    # Only `show` needs the game model (numpy) and rich: `validate` starts faster without.
    from rich.table import Table

    from cyberdial.commands.common import console
    from cyberdial.range.model import GameModel

    scenario = load_scenario(args.file)
    model = GameModel(scenario)
    console.print(
        f"[bold]{scenario.name}[/bold] — {scenario.description or 'no description'}\n"
        f"hash {scenario.scenario_hash}, {scenario.episode_length} steps of"
        f" {scenario.step_period:g} s, seed {scenario.seed}, backend {scenario.backend}"
    )
    subnets = Table(title="Subnets")
    for column in ("subnet", "cidr", "hosts", "flows to", "defended by", "mission hosts"):
        subnets.add_column(column)
    defender = {s: a.name for a in scenario.blue.agents for s in a.subnets}
    for subnet in scenario.subnets:
        hosts = scenario.hosts_in(subnet.name)
        subnets.add_row(
            subnet.name,
            subnet.cidr,
            str(len(hosts)),
            ", ".join(subnet.flows) or "-",
            defender.get(subnet.name, "-"),
            ", ".join(h.name for h in hosts if h.mission) or "-",
        )
    console.print(subnets)
    agents = Table(title="Blue agents")
    for column in ("agent", "subnets", "hosts", "obs size", "actions"):
        agents.add_column(column)
    for layout in model.agents:
        agents.add_row(
            layout.name,
            ", ".join(scenario.subnets[s].name for s in layout.subnets),
            str(len(layout.hosts)),
            str(layout.obs_size),
            str(layout.n_actions),
        )
    console.print(agents)
    red, green = scenario.red, scenario.green
    console.print(
        f"red: {red.strategy} from {red.entry} to {', '.join(red.targets)};"
        f" green: work {green.work_rate:g}, false positives scan {green.fp_scan:g}"
        f" exploit {green.fp_exploit:g}; messages: {scenario.blue.message_bits} bit(s)"
        f" at cost {scenario.blue.comm_cost:g}; state size {model.state_size}"
    )
    if args.png is not None:
        if args.png.suffix.lower() != ".png":
            raise CyberdialError(f"--png {args.png}: the file name must end in .png")
        # Imported here: matplotlib and networkx are slow to import and only this needs them.
        from cyberdial.agents.picture import Topology, save_scenario_png

        console.print(f"picture: {save_scenario_png(Topology.of_scenario(scenario), args.png)}")
    return 0
