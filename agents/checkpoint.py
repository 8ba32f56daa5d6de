"""Checkpoints of trained blue agents, shared by every algorithm.

A checkpoint carries the learner's weights, the training config, the scenario it
was trained on and that scenario's layout signature (hash, observation sizes,
action catalogue). Loading it against another layout raises `CheckpointMismatch`
with what differs, so a policy never silently drives the wrong range.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from cyberdial.agents.baselines import BatchPolicy
from cyberdial.agents.training import (
    Learner,
    TrainConfig,
    make_learner,
    prepare_scenario,
    resolve_device,
)
from cyberdial.range.errors import CheckpointMismatch, CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import Scenario, scenario_from_dict

logger = logging.getLogger(__name__)

FORMAT = "cyberdial-checkpoint"
VERSION = 1


class CheckpointError(CyberdialError):
    """A file that is not a readable cyberdial checkpoint."""


# What a damaged checkpoint's content raises when it is used: caught, told in one line.
_CONTENT_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError)


def _damaged(file: Path, error: BaseException) -> CheckpointError:
    detail = str(error).splitlines()[0][:120] if str(error) else ""
    return CheckpointError(
        f"{file}: the checkpoint's content is damaged or incomplete ({type(error).__name__}"
        f"{': ' + detail if detail else ''}): train it again with `cyberdial train`")


@dataclass
class Checkpoint:
    path: Path
    algo: str
    config: TrainConfig
    layout: dict[str, Any]
    scenario: Scenario
    learner_state: dict[str, Any]
    episodes: int
    evaluation: dict[str, float] | None


def save_checkpoint(
    path: Path,
    learner: Learner,
    config: TrainConfig,
    model: GameModel,
    episodes: int,
    evaluation: dict[str, float] | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "algo": config.algo,
        "config": asdict(config),
        "layout": model.layout_signature(),
        "scenario": model.scenario.model_dump(mode="json"),
        "learner": learner.state_dict(),
        "episodes": episodes,
        "evaluation": evaluation,
    }
    # Write then rename, so an interrupted run never leaves half a checkpoint.
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(payload, partial)
    partial.replace(path)
    logger.info("checkpoint written: %s (%d episodes)", path, episodes)


# Settings added after checkpoints of this format were first written: a checkpoint
# that lacks one was trained without it, so it keeps the behaviour it was trained with.
LEGACY_SETTINGS = {"gate_messages": False}


def load_checkpoint(path: str | Path) -> Checkpoint:
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such checkpoint file (train one with `cyberdial train`)")
    try:
        # weights_only: a checkpoint is data; never run code from a file we are handed.
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds of error for a bad file
        raise CheckpointError(
            f"{file}: not a readable checkpoint ({type(error).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a cyberdial checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{file}: checkpoint format version {payload.get('version')}, this cyberdial reads"
            f" {VERSION}: retrain with this version"
        )
    known = {item.name for item in fields(TrainConfig)}
    try:
        saved = {**LEGACY_SETTINGS, **payload["config"]}
        config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
        layout = payload["layout"]
        # Read every field `layout_difference` reads, so a damaged one fails here.
        for agent in layout["agents"]:
            (agent["name"], agent["obs_size"], list(agent["actions"]))
        (layout["message_bits"], layout["state_size"], layout["scenario_hash"],
         layout["scenario"])
        learner_state = payload["learner"]
        if not isinstance(learner_state, dict) or not isinstance(payload["algo"], str):
            raise TypeError("learner state or algorithm of the wrong type")
        checkpoint = Checkpoint(
            path=file,
            algo=payload["algo"],
            config=config,
            layout=layout,
            scenario=scenario_from_dict(payload["scenario"]),
            learner_state=learner_state,
            episodes=int(payload["episodes"]),
            evaluation=payload.get("evaluation"),
        )
    except CyberdialError as error:  # the scenario inside does not validate
        raise _damaged(file, error) from None
    except _CONTENT_ERRORS as error:
        raise _damaged(file, error) from None
    return checkpoint


def layout_difference(trained: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first way two layout signatures differ, in words (None when they agree)."""
    if len(trained["agents"]) != len(current["agents"]):
        return f"{len(trained['agents'])} blue agents, not {len(current['agents'])}"
    for mine, theirs in zip(trained["agents"], current["agents"], strict=True):
        if mine["name"] != theirs["name"]:
            return f"blue agent {mine['name']!r} where the scenario has {theirs['name']!r}"
        if mine["obs_size"] != theirs["obs_size"]:
            return (f"agent {mine['name']!r} observed {mine['obs_size']} values,"
                    f" the scenario gives {theirs['obs_size']}")
        if mine["actions"] != theirs["actions"]:
            return (f"agent {mine['name']!r} had {len(mine['actions'])} actions,"
                    f" the scenario has {len(theirs['actions'])} (or others)")
    if trained["message_bits"] != current["message_bits"]:
        return f"{trained['message_bits']}-bit messages, not {current['message_bits']}"
    if trained["state_size"] != current["state_size"]:
        return f"a global state of {trained['state_size']} values, not {current['state_size']}"
    if trained["scenario_hash"] != current["scenario_hash"]:
        return (f"scenario hash {trained['scenario_hash']}, the scenario's is"
                f" {current['scenario_hash']} (same layout, other settings)")
    return None


def check_layout(checkpoint: Checkpoint, model: GameModel, allow_other_hash: bool = False) -> None:
    """Refuse a checkpoint trained for another layout (or another scenario version)."""
    current = model.layout_signature()
    difference = layout_difference(checkpoint.layout, current)
    if difference is None:
        return
    same_layout = difference.startswith("scenario hash")
    calibration = model.scenario.calibration
    if same_layout and calibration is not None and (
            checkpoint.layout["scenario_hash"] == calibration.base_hash):
        # A calibration of the scenario it was trained on: same game, fitted sensor rates.
        logger.info("%s: trained on %s, playing on its calibration %s", checkpoint.path,
                    calibration.base, model.scenario.name)
        return
    if same_layout and allow_other_hash:
        logger.warning("%s: %s; using it anyway", checkpoint.path, difference)
        return
    hint = (
        "pass --ignore-scenario-hash to use it on this version anyway"
        if same_layout
        else "use the scenario it was trained on, or train a policy for this one"
    )
    raise CheckpointMismatch(
        f"{checkpoint.path} was trained on scenario {checkpoint.layout['scenario']!r} with"
        f" {difference}; scenario {current['scenario']!r} does not match: {hint}"
    )


def load_policy(
    path: str | Path, scenario: Scenario | None = None, allow_other_hash: bool = False,
    device: str = "cpu",
) -> tuple[BatchPolicy, GameModel, Checkpoint]:
    """A trained policy, greedy, for `scenario` (default: the one it was trained on).

    The checkpoint's switches (SAU off, message width) are applied to `scenario`
    first, as training applied them, then the layout is checked. The policy runs on
    `device` (`--device`), wherever it was trained.
    """
    checkpoint = load_checkpoint(path)
    checkpoint = replace(checkpoint, config=replace(checkpoint.config, device=device))
    resolve_device(device)  # a clear error for a device this machine lacks
    if scenario is None:
        prepared = checkpoint.scenario
    else:
        prepared = prepare_scenario(checkpoint.config, scenario)
    model = GameModel(prepared)
    check_layout(checkpoint, model, allow_other_hash)
    try:
        learner = make_learner(model, checkpoint.config)
        learner.load_state_dict(checkpoint.learner_state)
    except _CONTENT_ERRORS as error:  # a config or weights that do not fit the network
        raise _damaged(checkpoint.path, error) from None
    return learner.greedy_policy(), model, checkpoint
