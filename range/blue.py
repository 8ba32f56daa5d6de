"""Blue's side of a step, once for both ranges: timers, what blue learns, the global state.

The simulator (`SimBatch`) and the bridge (`BridgeService`) play the same blue:
the same action durations, the same knowledge updates after a result or an alert,
the same `state()` layout. They differ only in where the facts come from — the
simulated world, or real hosts' command results and alerts — so each calls these
functions with its own facts. Arrays lead with a batch axis (the bridge's is 1).
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

from cyberdial.range.model import ACTIVITY, ACTIVITY_BITS, COMPROMISE_BITS, OBSERVED, GameModel


def advance_timers(
    model: GameModel, chosen: NDArray[np.int64], pending: NDArray[np.int64],
    timer: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """One step of every agent's action timer; (pending, timer, finished), each (B, A).

    An idle agent (timer 0) starts its chosen action with that action's duration; a
    busy one carries on whatever it chose. A d-step action finishes (takes effect)
    at the end of its d-th step.
    """
    idle = timer == 0
    pending = np.where(idle, chosen, pending)
    timer = np.where(idle, model.action_duration[model.agent_row, pending], timer) - 1
    return pending, timer, timer == 0


def learn_analysed(observed: NDArray[np.int8], envs: NDArray[np.int64],
                   hosts: NDArray[np.int64], finding: NDArray[np.int8]) -> None:
    """Analyse reveals the truth: blue's compromise bits become the finding."""
    observed[envs, hosts] = finding


def learn_restored(observed: NDArray[np.int8], envs: NDArray[np.int64],
                   hosts: NDArray[np.int64]) -> None:
    """A restored host is known clean."""
    observed[envs, hosts] = OBSERVED.NONE


def learn_blocked(blocked: NDArray[np.bool_], envs: NDArray[np.int64],
                  subnets: NDArray[np.int64], value: bool) -> None:
    """Block / Unblock set the subnet's blocked bit."""
    blocked[envs, subnets] = value


def learn_alerts(activity: NDArray[np.int8], observed: NDArray[np.int8]) -> None:
    """An exploit seen on a host blue believes clean makes its compromise unknown."""
    seen = (activity == ACTIVITY.EXPLOIT) & (observed == OBSERVED.NONE)
    observed[seen] = OBSERVED.UNKNOWN


def global_state(
    model: GameModel, t: int, compromise: NDArray[np.int8], impacted: NDArray[np.bool_],
    decoy: NDArray[np.bool_], down: NDArray[np.bool_], activity: NDArray[np.int8],
    observed: NDArray[np.int8], blocked: NDArray[np.bool_], messages: NDArray[np.uint8],
) -> NDArray[np.float32]:
    """The global state for centralised training, (B, state_size); never shown to agents.

    Per host: one-hot true compromise, impacted, decoy, down, then blue's activity
    and compromise bits; then blocked subnets, last messages, episode progress.
    Everything but the last column (progress, `state_progress`) is a bit:
    `global_state_bits`.
    """
    bits = global_state_bits(compromise, impacted, decoy, down, activity, observed, blocked,
                             messages)
    state = np.empty((bits.shape[0], bits.shape[1] + 1), dtype=np.float32)
    state[:, :-1] = bits
    state[:, -1] = state_progress(model, t)
    return state


def global_state_bits(
    compromise: NDArray[np.int8], impacted: NDArray[np.bool_], decoy: NDArray[np.bool_],
    down: NDArray[np.bool_], activity: NDArray[np.int8], observed: NDArray[np.int8],
    blocked: NDArray[np.bool_], messages: NDArray[np.uint8],
) -> NDArray[np.uint8]:
    """`global_state` without its progress column, as uint8 bits: (B, state_size - 1).

    What the learners' episode buffer keeps: a quarter of the float state's bytes,
    and the progress column follows from the step (`state_progress`).
    """
    b, n_hosts = compromise.shape
    # A host's ten bits by one code of its six facts: one table lookup per host.
    code = compromise.astype(np.intp)
    for fact, values in ((impacted, 2), (decoy, 2), (down, 2), (activity, 3), (observed, 4)):
        code *= values
        code += fact
    hosts_end = n_hosts * _HOST_STATE_BITS.shape[1]
    blocked_end = hosts_end + blocked.shape[1]
    bits = np.empty((b, blocked_end + messages[0].size), dtype=np.uint8)
    bits[:, :hosts_end] = _HOST_STATE_BITS[code].reshape(b, -1)
    bits[:, hosts_end:blocked_end] = blocked
    bits[:, blocked_end:] = messages.reshape(b, -1)
    return bits


def state_progress(model: GameModel, t: int | NDArray[np.int64]) -> NDArray[np.float32]:
    """The global state's last column at step(s) `t`: the episode's progress t / T."""
    return np.asarray(np.asarray(t) / model.scenario.episode_length, dtype=np.float32)


def _host_state_table() -> NDArray[np.uint8]:
    """(3·2·2·2·3·4, 10): a host's state bits for every (compromise, impacted, decoy, down,
    activity, observed), in `global_state_bits`'s code order."""
    rows = [
        [*np.eye(3, dtype=np.uint8)[compromise], impacted, decoy, down,
         *ACTIVITY_BITS[activity], *COMPROMISE_BITS[observed]]
        for compromise, impacted, decoy, down, activity, observed in itertools.product(
            range(3), range(2), range(2), range(2), range(len(ACTIVITY_BITS)),
            range(len(COMPROMISE_BITS)))
    ]
    return np.array(rows, dtype=np.uint8)


_HOST_STATE_BITS = _host_state_table()
