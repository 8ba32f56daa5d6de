"""Episode recordings: one JSONL file per drill or evaluation, the same for sim and emulation.

Line 1 is a `RecordingHeader` (scenario, range, policy, layouts); then one
`StepRecord` per step (alerts, observations, masks, actions, message bits,
command results, reward terms, ground truth) and an `EpisodeEnd` per episode.
Each line is flushed as written, so an interrupted drill leaves a readable prefix.
`cyberdial report` and `cyberdial replay` read these files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import Compromise, GameModel
from cyberdial.range.scenario import Scenario
from cyberdial.range.truth import Measurement

RECORDING_VERSION = 1
RECORDING_NAME = "recording.jsonl"
# One record per line; a step of the largest scenario is well under this.
MAX_LINE_BYTES = 16 << 20


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostInfo(_Record):
    name: str
    subnet: str
    group: str
    value: str
    mission: bool


class AgentInfo(_Record):
    name: str
    subnets: list[str]
    hosts: list[str]
    actions: list[str]


class RecordingHeader(_Record):
    type: Literal["header"] = "header"
    version: int = RECORDING_VERSION
    scenario: str
    scenario_hash: str
    range: Literal["sim", "emulated"]
    policy: str
    seed: int
    step_period: float
    episode_length: int
    subnets: list[str]
    hosts: list[HostInfo]
    agents: list[AgentInfo]
    created: float
    run_id: str | None = None
    # Added later (older recordings lack them): what a picture of the network needs.
    cidrs: dict[str, str] = {}
    flows: dict[str, list[str]] = {}
    red_entry: str | None = None
    red_targets: list[str] = []
    # Every emulated range that played episodes of this recording (`validate --ranges N`);
    # each step's `infos["run_id"]` says which one played it.
    run_ids: list[str] = []


class AlertRecord(_Record):
    host: str
    kind: str
    evidence: str = ""
    at: float | None = None


class CommandRecord(_Record):
    agent: str
    action: str
    ok: bool
    detail: str = ""
    compromise: str | None = None


class GroundTruth(_Record):
    compromise: dict[str, str]
    impacted: list[str]
    blocked: list[str]
    red_action: str = ""
    # What red did this step that reached its target: "scan opserver0", "sweep user"...
    red_actions: list[str] = []
    decoys: list[str] = []  # hosts with a decoy deployed (added later; older files lack it)

    @classmethod
    def of(cls, scenario: Scenario, truth: Measurement) -> GroundTruth:
        """A range's measurement in the recording's words, the same for both ranges: every
        host "clean" / "user" / "privileged"; `red_action` is red's last move of the step."""
        moves = [move.label for move in truth.red_moves]
        return cls(
            compromise={h.name: Compromise(int(truth.compromise[h.index])).name.lower()
                        for h in scenario.all_hosts},
            impacted=truth.host_names(scenario, truth.impacted),
            blocked=truth.blocked_names(scenario),
            red_action=moves[-1] if moves else "",
            red_actions=moves,
            decoys=truth.host_names(scenario, truth.decoy),
        )


class StepRecord(_Record):
    type: Literal["step"] = "step"
    episode: int
    step: int
    wall_time: float
    alerts: list[AlertRecord]
    observations: dict[str, str]  # each agent's 0/1 observation as a string of digits
    masks: dict[str, str]
    actions: dict[str, str]  # action labels, e.g. "restore opserver0"
    action_index: dict[str, int]
    messages: dict[str, str]
    commands: list[CommandRecord] = []
    reward: float
    reward_terms: dict[str, float]
    ground_truth: GroundTruth
    infos: dict[str, Any] = {}
    # Wall-clock time (s since the epoch, the clock of packet captures) the step's window
    # opened: the previous observation was in hand; `wall_time` is when it closed.
    started: float | None = None


class EpisodeEnd(_Record):
    type: Literal["episode_end"] = "episode_end"
    episode: int
    steps: int
    episode_return: float
    bits_sent: int
    interrupted: bool = False


def header_for(
    model: GameModel,
    *,
    range_kind: Literal["sim", "emulated"],
    policy: str,
    seed: int,
    run_id: str | None = None,
    run_ids: list[str] | None = None,
) -> RecordingHeader:
    scenario = model.scenario
    return RecordingHeader(
        scenario=scenario.name,
        scenario_hash=scenario.scenario_hash,
        range=range_kind,
        policy=policy,
        seed=seed,
        step_period=scenario.step_period,
        episode_length=scenario.episode_length,
        subnets=[subnet.name for subnet in scenario.subnets],
        hosts=[
            HostInfo(
                name=host.name,
                subnet=host.subnet,
                group=scenario.hosts[host.group].name,
                value=host.value,
                mission=host.mission,
            )
            for host in scenario.all_hosts
        ],
        agents=[
            AgentInfo(
                name=layout.name,
                subnets=[scenario.subnets[s].name for s in layout.subnets],
                hosts=[scenario.all_hosts[h].name for h in layout.hosts],
                actions=[action.label for action in layout.actions],
            )
            for layout in model.agents
        ],
        created=time.time(),
        run_id=run_id,
        run_ids=list(run_ids) if run_ids is not None else ([run_id] if run_id else []),
        cidrs={subnet.name: subnet.cidr for subnet in scenario.subnets},
        flows={subnet.name: list(subnet.flows) for subnet in scenario.subnets},
        red_entry=scenario.red.entry,
        red_targets=list(scenario.red.targets),
    )


def bits_text(values: Any) -> str:
    """A 0/1 vector as a compact string of digits."""
    return "".join("1" if float(v) > 0.5 else "0" for v in values)


class RecordSink(Protocol):
    """Where a drill puts its steps and episode ends: a `Recorder`, or a range's pipe."""

    def step(self, record: StepRecord) -> None: ...

    def episode_end(self, record: EpisodeEnd) -> None: ...


class Recorder:
    """Writes a recording line by line; a context manager that always closes the file."""

    def __init__(self, path: Path, header: RecordingHeader) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._write(header)

    def _write(self, record: BaseModel) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()

    def step(self, record: StepRecord) -> None:
        self._write(record)

    def episode_end(self, record: EpisodeEnd) -> None:
        self._write(record)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Recording(BaseModel):
    header: RecordingHeader
    steps: list[StepRecord]
    ends: list[EpisodeEnd]

    def episodes(self) -> list[int]:
        return sorted({step.episode for step in self.steps})

    def steps_of(self, episode: int) -> list[StepRecord]:
        return [step for step in self.steps if step.episode == episode]


def find_recording(run: str | Path) -> Path:
    """A run directory or a recording file -> the recording file."""
    path = Path(run)
    if path.is_dir():
        path = path / RECORDING_NAME
    if not path.is_file():
        raise CyberdialError(
            f"{run}: no recording found (expected a run directory with {RECORDING_NAME},"
            " or a .jsonl file written by 'cyberdial drill')"
        )
    return path


def load_recording(run: str | Path) -> Recording:
    path = find_recording(run)
    header: RecordingHeader | None = None
    steps: list[StepRecord] = []
    ends: list[EpisodeEnd] = []
    with path.open("rb") as lines:
        number = 0
        # readline with a bound: a file without newlines is not read whole into memory.
        while raw := lines.readline(MAX_LINE_BYTES + 1):
            number += 1
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"a line over {MAX_LINE_BYTES} bytes")
                line = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
                data = json.loads(line)
                kind = data.get("type") if isinstance(data, dict) else None
                if number == 1 or header is None:
                    header = RecordingHeader.model_validate(data)
                elif kind == "step":
                    steps.append(StepRecord.model_validate(data))
                elif kind == "episode_end":
                    ends.append(EpisodeEnd.model_validate(data))
                else:
                    raise ValueError(f"unknown record type {kind!r}")
            except (ValueError, ValidationError, RecursionError) as error:
                first = (str(error).splitlines() or [type(error).__name__])[0][:200]
                raise CyberdialError(
                    f"{path}:{number}: not a cyberdial recording line ({first})"
                ) from None
    if header is None:
        raise CyberdialError(f"{path}: empty recording")
    if header.version != RECORDING_VERSION:
        raise CyberdialError(
            f"{path}: recording version {header.version}; this cyberdial reads {RECORDING_VERSION}"
        )
    return Recording(header=header, steps=steps, ends=ends)
