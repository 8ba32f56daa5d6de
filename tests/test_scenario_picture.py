"""Scenario pictures: `scenario show --png` draws every shipped scenario; the layout follows red."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cyberdial.agents.picture import Topology, host_map_svg, layout_boxes
from cyberdial.agents.recording import header_for
from cyberdial.cli import main
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario, shipped_scenarios_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHIPPED = sorted(p.stem for p in shipped_scenarios_dir().glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_show_png_writes_a_picture_of_each_shipped_scenario(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.png"
    assert main(["scenario", "show", name, "--png", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 600 and height >= 300


def test_pictures_of_different_scenarios_differ(tmp_path: Path) -> None:
    for name in ("tiny", "small"):
        assert main(["scenario", "show", name, "--png", str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "tiny.png").read_bytes() != (tmp_path / "small.png").read_bytes()


def test_show_png_refuses_another_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scenario", "show", "tiny", "--png", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists()


def test_every_shipped_picture_is_in_the_docs() -> None:
    docs = Path(__file__).parent.parent / "docs"
    text = (docs / "scenarios.md").read_text(encoding="utf-8")
    for name in SHIPPED:
        assert (docs / "scenarios" / f"{name}.png").is_file(), name
        assert f"scenarios/{name}.png" in text, name


def test_layout_puts_red_entry_left_and_its_targets_further_right() -> None:
    topology = Topology.of_scenario(load_scenario("small"))
    boxes = layout_boxes(topology, lambda subnet: 1.0)
    assert boxes["user"].x < boxes["enterprise"].x < boxes["operational"].x
    assert boxes["dmz"].x == boxes["enterprise"].x  # both one flow away from the entry
    for a in boxes.values():  # no two boxes overlap
        for b in boxes.values():
            if a is not b and a.x == b.x:
                assert a.y - a.height >= b.y or b.y - b.height >= a.y


def test_topology_from_a_recording_header_matches_the_scenario() -> None:
    scenario = load_scenario("small")
    from_scenario = Topology.of_scenario(scenario)
    from_header = Topology.of_header(
        header_for(GameModel(scenario), range_kind="sim", policy="react", seed=0)
    )
    assert from_header.flows == from_scenario.flows
    assert from_header.defenders == from_scenario.defenders
    assert from_header.red_entry == "user0" and from_header.red_targets == ("opserver0",)
    assert [g.hosts for g in from_header.groups] == [g.hosts for g in from_scenario.groups]


def test_host_map_has_an_id_for_every_host_and_subnet_in_every_panel() -> None:
    scenario = load_scenario("tiny")
    svg = host_map_svg(Topology.of_scenario(scenario), [("truth", "t"), ("belief", "b")])
    ids = set(re.findall(r'id="((?:truth|belief)-(?:host|subnet)-[^"]+)"', svg))
    for prefix in ("truth", "belief"):
        for host in scenario.all_hosts:
            assert f"{prefix}-host-{host.name}" in ids
        for subnet in scenario.subnets:
            assert f"{prefix}-subnet-{subnet.name}" in ids
