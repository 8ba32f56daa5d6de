"""What the blue agents' messages carry, measured on the episodes a policy plays.

Per sender, over every step of the evaluated episodes (plug-in estimates, in bits):

- `mi_activity`: mutual information between the bit it sent and whether its own
  hosts showed activity (a scan or exploit) in the observation it acted on: does the
  message *say* what the sender sees?
- `mi_red`: mutual information between the bit and whether red really held a
  foothold in the sender's subnets at that step (ground truth no agent sees).
- `mi_red_given_activity`: the same, only over the steps the sender's hosts showed
  activity, I(bit; red | activity): does the sender tell red's work from green's
  false positives? A gated sender (a 0 whenever it sees nothing) that sends 1 on
  every active step reads high on `mi_activity` and 0 here: this is the part the
  sender learned beyond what the gate implies.
- `listener_effect`: how often a receiver's greedy action changes when the bit it
  hears from this sender is flipped, everything else held (the policy's own GRU
  state, the same legal actions); averaged over the sender's receivers. Measured
  only for policies whose network reads messages (`listener_changes`).

A message that carries nothing (silent, always 1, or noise) reads ~0 on all three.
The first bit of each message is measured.

Beside them, per sender, how often it sends on the steps its hosts show activity
(`send_when_active`) and on the steps they show none but a compromise flag is still
remembered in its observation (`remembered_rate`, `send_when_remembered`): the
authors' gate opens on either, so a sender that speaks on remembered flags reads
low on `mi_activity` although its bit is gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


def mutual_information(joint_counts: NDArray[np.int64]) -> float:
    """I(X; Y) in bits from a contingency table of counts (plug-in estimate)."""
    total = joint_counts.sum()
    if total == 0:
        return 0.0
    joint = joint_counts / total
    px = joint.sum(axis=1, keepdims=True)
    py = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    ratio = joint[nonzero] / (px @ py)[nonzero]
    return float(max(0.0, (joint[nonzero] * np.log2(ratio)).sum()))


def _share(counts: NDArray[np.int64]) -> float:
    """P(bit = 1) from counts [bit 0, bit 1]; nan without any."""
    total = counts.sum()
    return float(counts[1] / total) if total else math.nan


@dataclass
class MessageStats:
    """Counts gathered step by step; `summary()` turns them into the three figures."""

    n_agents: int
    # [sender, bit, seen]: seen 0 nothing, 1 only a remembered compromise flag, 2 activity
    seen_counts: NDArray[np.int64] = field(init=False)
    # [sender, bit, red present]
    red_counts: NDArray[np.int64] = field(init=False)
    # [sender, bit, red present] over the steps the sender's hosts showed activity
    active_red_counts: NDArray[np.int64] = field(init=False)
    # [receiver, sender]: steps probed and steps whose greedy action changed
    probed: NDArray[np.int64] = field(init=False)
    changed: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        a = self.n_agents
        self.seen_counts = np.zeros((a, 2, 3), dtype=np.int64)
        self.red_counts = np.zeros((a, 2, 2), dtype=np.int64)
        self.active_red_counts = np.zeros((a, 2, 2), dtype=np.int64)
        self.probed = np.zeros((a, a), dtype=np.int64)
        self.changed = np.zeros((a, a), dtype=np.int64)

    def add_step(self, bits: NDArray[np.uint8], activity: NDArray[np.bool_],
                 red: NDArray[np.bool_], remembered: NDArray[np.bool_] | None = None) -> None:
        """bits (B, A, width) sent; activity, red (B, A) as the sender stood when sending;
        remembered (B, A): a compromise flag in the sender's observation (None: none)."""
        sent = (bits[..., 0] > 0).astype(np.int64) if bits.shape[-1] else np.zeros(
            activity.shape, dtype=np.int64)
        agents = np.broadcast_to(np.arange(self.n_agents), sent.shape)
        seen = np.where(activity, 2, 0 if remembered is None else remembered.astype(np.int64))
        np.add.at(self.seen_counts, (agents, sent, seen), 1)
        np.add.at(self.red_counts, (agents, sent, red.astype(np.int64)), 1)
        active = activity.astype(bool)
        np.add.at(self.active_red_counts,
                  (agents[active], sent[active], red[active].astype(np.int64)), 1)

    @property
    def activity_counts(self) -> NDArray[np.int64]:
        """[sender, bit, activity]: the seen counts with "nothing" and "flag only" as one."""
        return np.stack([self.seen_counts[..., :2].sum(axis=-1), self.seen_counts[..., 2]],
                        axis=-1)

    def add_probe(self, changes: NDArray[np.bool_]) -> None:
        """changes (B, receiver, sender) from a policy's `listener_changes`."""
        self.probed += changes.shape[0]
        self.changed += changes.sum(axis=0)
        np.fill_diagonal(self.probed, 0)
        np.fill_diagonal(self.changed, 0)

    def per_sender(self) -> list[dict[str, float]]:
        rows = []
        activity_counts = self.activity_counts
        for sender in range(self.n_agents):
            receivers = [r for r in range(self.n_agents) if r != sender]
            probed = self.probed[receivers, sender]
            effect = (float(np.mean(self.changed[receivers, sender] / probed))
                      if receivers and (probed > 0).all() else math.nan)
            rows.append({
                "mi_activity": mutual_information(activity_counts[sender]),
                "mi_red": mutual_information(self.red_counts[sender]),
                "mi_red_given_activity": mutual_information(self.active_red_counts[sender]),
                "listener_effect": effect,
                "send_rate": float(activity_counts[sender, 1].sum()
                                   / max(1, activity_counts[sender].sum())),
                "activity_rate": float(activity_counts[sender, :, 1].sum()
                                       / max(1, activity_counts[sender].sum())),
                "send_when_active": _share(self.seen_counts[sender, :, 2]),
                "remembered_rate": float(self.seen_counts[sender, :, 1].sum()
                                         / max(1, self.seen_counts[sender].sum())),
                "send_when_remembered": _share(self.seen_counts[sender, :, 1]),
            })
        return rows

    def summary(self) -> dict[str, float]:
        """Mean and minimum over senders of each figure; the mean of when they send."""
        rows = self.per_sender()
        out: dict[str, float] = {}
        for name in ("mi_activity", "mi_red", "mi_red_given_activity", "listener_effect"):
            values = [row[name] for row in rows]
            finite = [v for v in values if not math.isnan(v)]
            out[name] = float(np.mean(finite)) if finite else math.nan
            out[f"{name}_min"] = float(np.min(finite)) if finite else math.nan
        for name in ("send_when_active", "remembered_rate", "send_when_remembered"):
            finite = [row[name] for row in rows if not math.isnan(row[name])]
            out[name] = float(np.mean(finite)) if finite else math.nan
        return out
