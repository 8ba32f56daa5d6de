"""The scenario language: shipped scenarios load; every malformed file gets placed errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cyberdial.range.errors import ScenarioError
from cyberdial.range.scenario import load_scenario, parse_scenario, shipped_scenarios_dir

BAD = Path(__file__).parent / "data" / "bad"

# file -> (text the first error must contain, line, column of the first error)
MALFORMED = {
    "bad_cidr.yaml": ("is not an IPv4 network", 4, 5),
    "bad_probability.yaml": ("less than or equal to 1", 18, 3),
    "cidr_host_bits.yaml": ("has host bits set", 4, 5),
    "cidr_too_small.yaml": ("room for 5 hosts", 4, 5),
    "dangling_agent_subnet.yaml": ("unknown subnet 'dmz'", 16, 36),
    "dangling_red_target.yaml": ("unknown host 'pc9'", 13, 13),
    "dangling_subnet.yaml": ("unknown subnet 'wan'", 8, 5),
    "duplicate_host.yaml": ("duplicate host name 'pc1'", 11, 5),
    "duplicate_key.yaml": ("duplicate key 'name'", 2, 1),
    "duplicate_subnet.yaml": ("duplicate subnet name 'lan'", 5, 5),
    "empty.yaml": ("file is empty", 1, 1),
    "group_without_index.yaml": ("needs '{i}'", 6, 5),
    "missing_red.yaml": ("red: required field is missing", 1, 1),
    "name_16_bytes.yaml": ("is 16 bytes", 6, 5),
    "not_mapping.yaml": ("a scenario is a mapping", 1, 1),
    "not_yaml.yaml": ("not valid YAML", 3, 6),
    "oversized_subnet.yaml": ("1100 hosts; one Linux bridge holds 1023", 3, 5),
    "public_cidr.yaml": ("not a private network", 4, 5),
    "shell_metachar_agent.yaml": ("'blue$(id)' is not a valid name", 16, 8),
    "shell_metachar_name.yaml": ("'pc;rm{i}' is not a valid host name", 6, 5),
    "subnet_name_16_bytes.yaml": ("'laboratory-net-a' is not a valid name", 3, 5),
    "unknown_key_host.yaml": ("hosts.0.os: unknown key", 10, 5),
    "unknown_key_top.yaml": ("episodes: unknown key", 2, 1),
    "wrong_type_count.yaml": ("valid integer", 7, 5),
    "wrong_type_episode.yaml": ("valid integer", 2, 1),
}


def test_corpus_is_complete() -> None:
    assert sorted(MALFORMED) == sorted(p.name for p in BAD.glob("*.yaml"))
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_scenario_is_placed(name: str) -> None:
    text, line, column = MALFORMED[name]
    with pytest.raises(ScenarioError) as caught:
        load_scenario(BAD / name)
    problems = caught.value.problems
    assert problems, "a ScenarioError carries at least one problem"
    first = problems[0]
    assert text in str(first)
    assert (first.line, first.column) == (line, column)
    assert first.file == str(BAD / name)
    for problem in problems:
        assert problem.line is not None and problem.column is not None


def test_cli_validate_reports_each_bad_file_on_one_line_each() -> None:
    files = sorted(str(p) for p in BAD.glob("*.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "cyberdial", "scenario", "validate", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    placed = re.compile(r"^error: (\S+\.yaml):(\d+):(\d+): \S+: .+$")
    assert all(placed.match(line) for line in lines), lines
    assert {placed.match(line).group(1) for line in lines} == set(files)  # type: ignore[union-attr]


def test_cli_validate_ok_and_show() -> None:
    shipped = sorted(str(p) for p in shipped_scenarios_dir().glob("*.yaml"))
    result = subprocess.run(
        [sys.executable, "-m", "cyberdial", "scenario", "validate", *shipped],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == len(shipped)
    shown = subprocess.run(
        [sys.executable, "-m", "cyberdial", "scenario", "show", "small"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "blue_ops" in shown.stdout and "opserver0" in shown.stdout


def test_missing_file_is_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cyberdial", "simulate", "/nonexistent/x.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: /nonexistent/x.yaml: <root>: cannot read")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "hosts", "agents"),
    [("tiny", 6, 2), ("small", 100, 3), ("large", 500, 5), ("xlarge", 2000, 8)],
)
def test_shipped_scenarios(name: str, hosts: int, agents: int) -> None:
    scenario = load_scenario(name)
    assert len(scenario.all_hosts) == hosts
    assert len(scenario.blue.agents) == agents
    if name != "tiny":
        assert scenario.green.fp_scan > 0 and scenario.green.fp_exploit > 0


def test_host_groups_expand_with_pattern_and_start() -> None:
    text = (Path(__file__).parent / "data" / "good_minimal.yaml").read_text()
    scenario = parse_scenario(
        text.replace("count: 2", "count: 3\n    start: 5")
        .replace("entry: pc0", "entry: pc5")
        .replace("targets: [pc1]", "targets: [pc7]")
    )
    assert [h.name for h in scenario.all_hosts] == ["pc5", "pc6", "pc7"]
    assert scenario.host("pc7").index == 2


def test_scenario_hash_follows_content_not_formatting() -> None:
    text = (Path(__file__).parent / "data" / "good_minimal.yaml").read_text()
    a = parse_scenario(text)
    b = parse_scenario("# a comment\n" + text.replace("count: 2", "count:    2"))
    c = parse_scenario(text.replace("user: true", "user: false"))
    assert a.scenario_hash == b.scenario_hash
    assert a.scenario_hash != c.scenario_hash


def test_scenario_is_frozen() -> None:
    scenario = load_scenario("tiny")
    with pytest.raises(Exception, match="frozen"):
        scenario.seed = 3  # type: ignore[misc]
