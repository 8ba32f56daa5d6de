"""The referee contract: how the bridge learns the ground truth it scores a step with.

The emulator's ground-truth recorder (and the simulator-backed `SimReferee` in
`bridge/simhosts.py`) implement `Referee`. The bridge never shows a measurement
to agents: it feeds the reward (through `GameModel.reward_terms`, the same formula
as the simulator) and `state()` for centralised training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class Measurement(BaseModel):
    """One measurement of the range's true state; what `Referee.measure()` returns as a dict.

    `compromise` lists hosts red holds (absent hosts are clean); `green_failures`
    counts failed green work since the previous measurement. Extra keys (e.g.
    `red_action`, or the emulator referee's own `reward_terms`) are kept for
    recordings and ignored: the bridge scores with `GameModel.reward_terms`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    # "none" and "clean" both mean clean (the emulator's referee and Analyse say "none").
    compromise: dict[str, Literal["clean", "none", "user", "privileged"]] = Field(
        default_factory=dict)
    impacted: tuple[str, ...] = ()
    green_failures: int = Field(default=0, ge=0)
    decoys: tuple[str, ...] = ()
    down: tuple[str, ...] = Field(default=(), description="hosts whose services are down")


@runtime_checkable
class Referee(Protocol):
    """Measures the range's true state each step.

    A referee may also have `reset(seed)`; the bridge calls it at each episode
    start when it exists (the simulator-backed one resets its world there).
    """

    def measure(self) -> Mapping[str, Any]: ...
