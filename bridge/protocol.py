"""The bridge's wire protocol: host-side envelope from `range/wire.py` plus agent-side payloads.

Agents (the `EmulatedRange` client, or a client in any language) talk to the
bridge service over a DEALER→ROUTER connection with the same three-frame
envelope `[type, header, payload]` as host programs. `PAYLOADS` is the one
registry of every message type; docs/protocol.md is its written form.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from cyberdial.range.wire import (
    DROP_REASONS,
    HOST_PAYLOADS,
    MAX_FRAME_BYTES,
    MAX_TEXT,
    PROTOCOL_VERSION,
    Alert,
    AlertBatch,
    Bye,
    Command,
    CommandResult,
    DropCounter,
    Dropped,
    Envelope,
    Header,
    Heartbeat,
    Hello,
    Identifier,
    ReplayGuard,
    ShortText,
    decode,
    encode,
)

__all__ = [
    "AGENT_REQUESTS",
    "BRIDGE_REPLIES",
    "DROP_REASONS",
    "HOST_PAYLOADS",
    "MAX_FRAME_BYTES",
    "MAX_TEXT",
    "PAYLOADS",
    "PROTOCOL_VERSION",
    "ActionBatch",
    "AgentHello",
    "AgentInfo",
    "AgentObservation",
    "AgentSpec",
    "Alert",
    "AlertBatch",
    "Bye",
    "Command",
    "CommandResult",
    "DropCounter",
    "Dropped",
    "Envelope",
    "ErrorReply",
    "Header",
    "Heartbeat",
    "Hello",
    "ObservationBatch",
    "ReplayGuard",
    "ResetRequest",
    "Welcome",
    "decode",
    "encode",
]

# Bounds that keep a hostile message small before pydantic builds objects from it.
MAX_AGENTS = 64
MAX_VECTOR = 1 << 16
MAX_MESSAGE_BITS = 8

AgentName = Annotated[str, Field(min_length=1, max_length=64)]
Bit = Annotated[int, Field(ge=0, le=1)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SessionToken = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]


class AgentHello(_Message):
    """A client opens a session; with `scenario_hash` the bridge refuses a mismatched one.

    A client that reconnects (a new connection, same `client` name) sends the
    `session` token of its welcome: only with it may the name move to the new
    connection (and keep the episode it drives).
    """

    client: Identifier
    scenario_hash: Annotated[str, Field(max_length=64)] | None = None
    session: SessionToken | None = None


class AgentSpec(_Message):
    name: AgentName
    obs_size: Annotated[int, Field(ge=0, le=MAX_VECTOR)]
    n_actions: Annotated[int, Field(ge=1, le=MAX_VECTOR)]
    actions: tuple[ShortText, ...] = Field(default=(), description="action labels, by index")


class Welcome(_Message):
    """The bridge's answer to `agent_hello`: what it serves and at which pace."""

    scenario: ShortText
    scenario_hash: ShortText
    agents: tuple[AgentSpec, ...] = Field(max_length=MAX_AGENTS)
    message_bits: Annotated[int, Field(ge=0, le=MAX_MESSAGE_BITS)]
    episode_length: Annotated[int, Field(ge=1)]
    step_period_s: Annotated[float, Field(ge=0.0)]
    # How much longer than its period a step may take: the step clock's deadlines for
    # late programs, and commands' timeout (0: the bridge keeps no clock).
    step_deadline_s: Annotated[float, Field(ge=0.0)] = 0.0
    heartbeat_interval_s: Annotated[float, Field(gt=0.0)]
    liveness: Annotated[int, Field(ge=1)]
    state_size: Annotated[int, Field(ge=0)]
    session: SessionToken = Field(description="this client's secret token, for reconnecting")


class ResetRequest(_Message):
    """Start a new episode; the reply is the step-0 `observations`."""

    seed: int | None = None


class ActionBatch(_Message):
    """Every agent's action index (into its own catalogue) and message bits for `step`.

    A missing agent sleeps; a missing message is silence; an illegal or masked
    action is a safe no-op (Sleep), exactly as in the simulator.
    """

    step: Annotated[int, Field(ge=0)]
    actions: dict[AgentName, Annotated[int, Field(ge=-(1 << 31), le=1 << 31)]] = Field(
        default_factory=dict, max_length=MAX_AGENTS
    )
    messages: dict[AgentName, tuple[Bit, ...]] = Field(default_factory=dict, max_length=MAX_AGENTS)


class AgentObservation(_Message):
    observation: tuple[float, ...] = Field(max_length=MAX_VECTOR)
    action_mask: tuple[Bit, ...] = Field(max_length=MAX_VECTOR)


class AgentInfo(_Message):
    """Per-agent info, as `SimRange` gives it, plus what only an emulated range has."""

    reward_terms: dict[str, float] = Field(default_factory=dict)
    bits_sent: int = 0
    busy: bool = False
    executed: ShortText = "sleep"
    dead_peers: tuple[Identifier, ...] = Field(
        default=(), description="sensors/actuators silent past the liveness rule"
    )
    failed_commands: tuple[ShortText, ...] = Field(
        default=(), description="this step's failed commands: 'label: detail'"
    )
    alerts: int = Field(default=0, description="alerts about this agent's hosts this step")
    late_peers: tuple[Identifier, ...] = Field(
        default=(), description="programs (red, green, sensors, actuators) that did not finish"
        " their part of this step before its deadline: their later alerts count next step"
    )


class ObservationBatch(_Message):
    """What every agent sees after `step` steps (0 after a reset), and the step's outcome."""

    step: Annotated[int, Field(ge=0)]
    observations: dict[AgentName, AgentObservation] = Field(max_length=MAX_AGENTS)
    rewards: dict[AgentName, float] = Field(default_factory=dict, max_length=MAX_AGENTS)
    terminations: dict[AgentName, bool] = Field(default_factory=dict, max_length=MAX_AGENTS)
    truncations: dict[AgentName, bool] = Field(default_factory=dict, max_length=MAX_AGENTS)
    infos: dict[AgentName, AgentInfo] = Field(default_factory=dict, max_length=MAX_AGENTS)
    state: tuple[float, ...] = Field(default=(), max_length=MAX_VECTOR,
                                     description="global state for centralised training")


ErrorCode = Literal["not_ready", "scenario_mismatch", "episode_over", "bad_request", "busy",
                    "name_taken", "reset_failed"]


class ErrorReply(_Message):
    """The bridge refuses a well-formed request; `message` says how to recover."""

    code: ErrorCode
    message: ShortText


# Agent -> bridge and bridge -> agent message types on the agent endpoint.
AGENT_REQUESTS: dict[str, type[BaseModel]] = {
    "agent_hello": AgentHello,
    "reset": ResetRequest,
    "actions": ActionBatch,
    "heartbeat": Heartbeat,
    "bye": Bye,
}
BRIDGE_REPLIES: dict[str, type[BaseModel]] = {
    "welcome": Welcome,
    "observations": ObservationBatch,
    "heartbeat": Heartbeat,
    "error": ErrorReply,
}
# The one registry: every message type either side of the bridge may send.
PAYLOADS: dict[str, type[BaseModel]] = {**HOST_PAYLOADS, **AGENT_REQUESTS, **BRIDGE_REPLIES}
