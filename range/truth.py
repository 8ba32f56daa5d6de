"""Ground truth: the one typed measurement of a range's true state, and who may take it.

A `Measurement` is what a `Referee` finds after a step, in the game model's own
values: per-host `Compromise`, impacted / decoy / down flags and the subnets really
blocked, as arrays in the scenario's host and subnet order, plus what green and red
did since the previous measurement. The simulator (`SimBatch.measurement`), the
simulated host side and the emulator's referee all produce it; the bridge scores it
with `Measurement.reward_terms`, which is `GameModel.reward_terms`, the function
`SimBatch.step` scores with; recordings turn it into text once, at their edge.
Strings ("none", "clean") live only on the wire and in recordings.

Resetting is a capability of the range, not of its referee: `EpisodeReset`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import Compromise, GameModel, RedActionKind
from cyberdial.range.scenario import Scenario

# Analyse's finding on the wire (`CommandResult.compromise`): a clean host reads "none".
FINDING_TEXT: dict[Compromise, str] = {
    Compromise.CLEAN: "none", Compromise.USER: "user", Compromise.PRIVILEGED: "privileged"}
_FINDING = {text: level for level, text in FINDING_TEXT.items()}


def decode_finding(text: str) -> Compromise:
    """An Analyse result's `compromise` text as the game's value (ValueError if unknown).
    Blue's compromise bits take it as it is: `Observed` shares `Compromise`'s values."""
    try:
        return _FINDING[text]
    except KeyError:
        raise ValueError(f"unknown finding {text!r}: expected one of {sorted(_FINDING)}") from None


@dataclass(frozen=True)
class RedMove:
    """One kill-chain step red completed against something it reached."""

    kind: RedActionKind
    target: str  # a host's name, or a subnet's for a sweep

    @property
    def label(self) -> str:
        """As recordings and validation read it: "scan opserver0"."""
        return f"{self.kind.name.lower()} {self.target}"

    @classmethod
    def parse(cls, kind: str, target: str) -> RedMove:
        """From red's own log words ("exploit", "opserver0"); ValueError if not a move."""
        try:
            move = RedActionKind[kind.upper()]
        except KeyError:
            raise ValueError(f"unknown red action {kind!r}") from None
        if move == RedActionKind.NONE or not target:
            raise ValueError(f"not a red move: {kind!r} {target!r}")
        return cls(move, target)


def _flags(names: Collection[str], index: Mapping[str, int], size: int,
           what: str) -> NDArray[np.bool_]:
    flags = np.zeros(size, dtype=bool)
    for name in names:
        if name not in index:
            raise ValueError(f"{what} {name!r} is not in the scenario")
        flags[index[name]] = True
    return flags


@dataclass(frozen=True, eq=False)
class Measurement:
    """One measurement of a range's true state; never shown to agents.

    Arrays are in the scenario's order: `compromise` (H,) holds `Compromise` values,
    `impacted`, `decoy`, `down` (H,) and `blocked` (S,) are flags (the subnets the
    range really blocks). `green_failures` / `green_successes` count green work since
    the previous measurement; `red_moves` is what red completed since then;
    `implants` the implant PIDs per host where a referee can see processes.
    """

    compromise: NDArray[np.int8]
    impacted: NDArray[np.bool_]
    decoy: NDArray[np.bool_]
    down: NDArray[np.bool_]
    blocked: NDArray[np.bool_]
    green_failures: int = 0
    green_successes: int = 0
    red_moves: tuple[RedMove, ...] = ()
    implants: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hosts = self.compromise.shape
        for name in ("impacted", "decoy", "down"):
            if getattr(self, name).shape != hosts:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, compromise"
                                 f" {hosts}")
        if len(hosts) != 1 or self.blocked.ndim != 1:
            raise ValueError("a measurement holds one range: 1-D arrays")
        if self.compromise.size and not (
                (self.compromise >= Compromise.CLEAN) & (self.compromise <= Compromise.PRIVILEGED)
        ).all():
            raise ValueError("compromise holds values that are not Compromise levels")
        if self.green_failures < 0 or self.green_successes < 0:
            raise ValueError("green counts are never negative")

    # ---------------------------------------------------------------- making one

    @classmethod
    def clean(cls, model: GameModel) -> Measurement:
        """Nothing compromised, nothing blocked: what a range without a referee reads."""
        h, s = model.n_hosts, model.n_subnets
        return cls(np.zeros(h, dtype=np.int8), np.zeros(h, dtype=bool), np.zeros(h, dtype=bool),
                   np.zeros(h, dtype=bool), np.zeros(s, dtype=bool))

    @classmethod
    def of_names(
        cls, scenario: Scenario, compromise: Mapping[str, Compromise] | None = None, *,
        impacted: Collection[str] = (), decoys: Collection[str] = (), down: Collection[str] = (),
        blocked: Collection[str] = (), green_failures: int = 0, green_successes: int = 0,
        red_moves: tuple[RedMove, ...] = (), implants: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Measurement:
        """From host and subnet names (absent hosts are clean); ValueError for a name the
        scenario lacks."""
        index, n = scenario.host_index, len(scenario.all_hosts)
        levels = np.zeros(n, dtype=np.int8)
        for name, level in (compromise or {}).items():
            if name not in index:
                raise ValueError(f"host {name!r} is not in the scenario")
            levels[index[name]] = Compromise(level)
        return cls(
            levels, _flags(impacted, index, n, "host"), _flags(decoys, index, n, "host"),
            _flags(down, index, n, "host"),
            _flags(blocked, scenario.subnet_index, len(scenario.subnets), "subnet"),
            green_failures=green_failures, green_successes=green_successes,
            red_moves=red_moves, implants=dict(implants or {}))

    # --------------------------------------------------------------- reading one

    def level(self, scenario: Scenario, host: str) -> Compromise:
        return Compromise(int(self.compromise[scenario.host_index[host]]))

    def compromised(self, scenario: Scenario) -> dict[str, Compromise]:
        """The hosts red holds, by name."""
        hosts = scenario.all_hosts
        return {hosts[h].name: Compromise(int(self.compromise[h]))
                for h in np.flatnonzero(self.compromise)}

    @staticmethod
    def host_names(scenario: Scenario, flags: NDArray[np.bool_]) -> list[str]:
        """The hosts a (H,) flag array marks, by name: `host_names(scenario, m.impacted)`."""
        hosts = scenario.all_hosts
        return [hosts[h].name for h in np.flatnonzero(flags)]

    def blocked_names(self, scenario: Scenario) -> list[str]:
        return [scenario.subnets[s].name for s in np.flatnonzero(self.blocked)]

    # ------------------------------------------------------------------ scoring

    def reward_terms(
        self, model: GameModel, *, restores: int = 0, bits_sent: int = 0,
        action_costs: NDArray[np.float32] | None = None,
    ) -> dict[str, float]:
        """The step's reward terms over this truth: `GameModel.reward_terms`, the function
        the simulator scores with, on a batch of one."""
        terms = model.reward_terms(
            self.compromise[None], self.impacted[None],
            np.array([self.green_failures], dtype=np.int64), np.array([restores], dtype=np.int64),
            np.array([bits_sent], dtype=np.int64), action_costs)
        return {name: float(value[0]) for name, value in terms.items()}


@runtime_checkable
class Referee(Protocol):
    """Measures a range's true state; the bridge asks after every step and every reset."""

    def measure(self) -> Measurement: ...

    def start_episode(self) -> None:
        """Forget what happened before the new episode (green outcomes, red's log)."""


class NoReferee:
    """No ground truth (`cyberdial bridge --no-referee`, scripted host sides): every
    measurement reads clean, so rewards hold only blue's own costs."""

    def __init__(self, model: GameModel) -> None:
        self._clean = Measurement.clean(model)

    def measure(self) -> Measurement:
        return self._clean

    def start_episode(self) -> None:
        pass


class ResetUnsupported(CyberdialError):
    """This range cannot be put back at step 0; the message says what to do instead."""


@runtime_checkable
class EpisodeReset(Protocol):
    """A range that can start a new episode: every host back to its golden state, red
    reseeded, a fresh clock. One that cannot raises `ResetUnsupported` saying why."""

    def reset_episode(self, seed: int | None = None) -> object: ...


class NoReset:
    """A range that declines to reset, saying why: e.g. one a bridge knows only by its
    endpoints (`cyberdial bridge --alerts ...`), or scripted host sides in tests."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def reset_episode(self, seed: int | None = None) -> object:
        raise ResetUnsupported(f"{self.reason}: episodes start from the hosts' current state")
