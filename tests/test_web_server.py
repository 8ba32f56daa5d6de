"""The web view's server on real sockets: addresses, the token, frames, and the seat's choices."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cyberdial.agents.baselines import make_baseline
from cyberdial.agents.drill import SimDrillRange, run_drill
from cyberdial.agents.picture import Topology
from cyberdial.agents.recording import (
    GroundTruth,
    Recorder,
    StepRecord,
    header_for,
    load_recording,
)
from cyberdial.agents.web.server import WebAddress, WebSeat, WebView, frame_of, parse_address
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import GameModel
from cyberdial.range.scenario import load_scenario

WAIT_S = 30.0


@pytest.fixture
def model() -> GameModel:
    return GameModel(load_scenario("tiny"))


@pytest.fixture
def view(model: GameModel) -> Iterator[WebView]:
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    with WebView(header, Topology.of_scenario(model.scenario), WebAddress("127.0.0.1", 0)) as web:
        yield web


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def _ws(view: WebView, token: str | None = None) -> Any:
    return connect(
        f"ws://127.0.0.1:{view.port}/stream?token={token or view.token}", open_timeout=WAIT_S
    )


def _record(step: int, observations: dict[str, str], compromise: dict[str, str]) -> StepRecord:
    return StepRecord(
        episode=0,
        step=step,
        wall_time=0.0,
        alerts=[],
        observations=observations,
        masks={},
        actions={"blue_user": "sleep", "blue_ops": "sleep"},
        action_index={"blue_user": 0, "blue_ops": 0},
        messages={"blue_user": "0", "blue_ops": "1"},
        reward=-1.5,
        reward_terms={"privileged": -1.5},
        ground_truth=GroundTruth(
            compromise=compromise, impacted=["opserver0"], blocked=["user"], decoys=["user2"]
        ),
    )


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        (None, "127.0.0.1", 8765, True),
        ("", "127.0.0.1", 8765, True),
        ("9000", "127.0.0.1", 9000, True),
        (":0", "127.0.0.1", 0, True),
        ("localhost:8080", "localhost", 8080, True),
        ("0.0.0.0:8080", "0.0.0.0", 8080, False),
        ("[::1]:8081", "::1", 8081, True),
    ],
)
def test_addresses(text: str | None, host: str, port: int, loopback: bool) -> None:
    address = parse_address(text)
    assert (address.host, address.port, address.loopback) == (host, port, loopback)


@pytest.mark.parametrize("text", ["127.0.0.1:99999", "127.0.0.1:http", "no-such-host.invalid:80"])
def test_bad_addresses_are_one_line_errors(text: str) -> None:
    with pytest.raises(CyberdialError, match="--web"):
        parse_address(text)


def test_frame_decodes_blue_belief_from_the_observation(model: GameModel) -> None:
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    user_layout = model.agents[model.agent_names.index("blue_user")]
    n = user_layout.obs_size
    # host 0 of blue_user: exploit seen, privileged; host 1: scan, unknown.
    bits = "1111" + "1010" + "0" * (n - 8)
    frame = frame_of(header, _record(3, {"blue_user": bits}, {"user0": "privileged"}), -4.0)
    first, second = (model.scenario.all_hosts[h].name for h in user_layout.hosts[:2])
    assert frame["belief"][first] == "privileged" and frame["activity"][first] == "exploit"
    assert frame["belief"][second] == "unknown" and frame["activity"][second] == "scan"
    assert frame["belief"]["opserver0"] == "unwatched"  # blue_ops's bits were not recorded
    assert frame["truth"]["user0"] == "privileged" and frame["truth"]["opserver0"] == "impacted"
    assert frame["truth"]["user1"] == "clean"
    assert frame["blocked"] == ["user"] and frame["decoys"] == ["user2"]
    assert frame["return"] == -4.0 and frame["red"] == []


def test_everything_needs_the_token_but_the_static_assets(view: WebView) -> None:
    base = f"http://127.0.0.1:{view.port}"
    assert _get(f"{base}/")[0] == 403
    assert _get(f"{base}/?token=wrong")[0] == 403
    assert _get(f"{base}/picture.svg")[0] == 403
    status, page = _get(view.url)
    assert status == 200 and "/static/app.js" in page and "http" not in page.replace(
        "http://www.w3.org", ""
    )  # nothing fetched from elsewhere
    status, svg = _get(f"{base}/picture.svg?token={view.token}")
    assert status == 200 and 'id="truth-host-user0"' in svg and 'id="belief-host-user0"' in svg
    for asset in ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"):
        assert _get(f"{base}/static/{asset}")[0] == 200, asset
    assert _get(f"{base}/static/../server.py")[0] == 404
    with pytest.raises(InvalidStatus, match="403"):
        _ws(view, token="wrong")


def test_a_page_gets_earlier_frames_then_live_ones(view: WebView) -> None:
    view.publish(_record(0, {}, {"user0": "user"}))
    with _ws(view) as socket:
        hello = json.loads(socket.recv(timeout=WAIT_S))
        assert hello["type"] == "hello" and hello["mode"] == "live"
        assert [f["step"] for f in hello["frames"]] == [0]
        view.publish(_record(1, {}, {"user0": "privileged"}))
        live = json.loads(socket.recv(timeout=WAIT_S))
        assert live["type"] == "frame" and live["frame"]["truth"]["user0"] == "privileged"
        assert live["frame"]["return"] == pytest.approx(-3.0)
        view.finish()
        assert json.loads(socket.recv(timeout=WAIT_S))["type"] == "end"


def test_the_page_can_only_choose_a_legal_action_for_the_offered_step(
    view: WebView, model: GameModel
) -> None:
    seat = WebSeat(model, "blue_user", deadline_s=WAIT_S, view=view)
    layout = seat.layout
    mask = np.zeros(model.max_actions, dtype=np.int8)
    legal = [0, layout.n_actions - 1]
    mask[legal] = 1
    observation = np.zeros(model.max_obs, dtype=np.float32)
    with _ws(view) as socket:
        assert json.loads(socket.recv(timeout=WAIT_S))["seat"] == "blue_user"
        seat.at(0, 4)
        chosen: list[int] = []
        thread = threading.Thread(
            target=lambda: chosen.append(seat.choose(observation[: layout.obs_size], mask))
        )
        thread.start()
        try:
            prompt = json.loads(socket.recv(timeout=WAIT_S))
            assert prompt["type"] == "prompt"
            assert [a["index"] for a in prompt["prompt"]["actions"]] == legal
            for wrong in (
                {"type": "choose", "episode": 0, "step": 3, "action": legal[1]},  # old step
                {"type": "choose", "episode": 0, "step": 4, "action": 1},  # masked action
                {"type": "run", "command": "id"},  # not a thing the page can ask
                "not json",
            ):
                socket.send(json.dumps(wrong) if isinstance(wrong, dict) else wrong)
            socket.send(json.dumps({"type": "choose", "episode": 0, "step": 4, "action": legal[1]}))
        finally:
            thread.join(WAIT_S)
        assert chosen == [legal[1]]
        assert json.loads(socket.recv(timeout=WAIT_S))["type"] == "prompt_closed"


def test_no_choice_in_time_is_sleep(view: WebView, model: GameModel) -> None:
    seat = WebSeat(model, "blue_user", deadline_s=0.3, view=view)
    mask = np.ones(model.max_actions, dtype=np.int8)
    assert seat.choose(np.zeros(seat.layout.obs_size, dtype=np.float32), mask) == 0


def test_a_recorded_drill_replays_as_the_same_frames(tmp_path: Path, model: GameModel) -> None:
    header = header_for(model, range_kind="sim", policy="react", seed=0)
    with Recorder(tmp_path / "recording.jsonl", header) as recorder:
        run_drill(SimDrillRange(model), make_baseline("react", model), 1, 0, recorder)
    recording = load_recording(tmp_path)
    replay = WebView(
        recording.header, Topology.of_header(recording.header), WebAddress("127.0.0.1", 0),
        mode="replay",
    )
    with replay:
        replay.load(recording.steps)
        with _ws(replay) as socket:
            hello = json.loads(socket.recv(timeout=WAIT_S))
    assert hello["mode"] == "replay" and hello["finished"]
    assert len(hello["frames"]) == model.scenario.episode_length
    total = 0.0
    for frame, step in zip(hello["frames"], recording.steps, strict=True):
        total += step.reward
        assert frame["return"] == pytest.approx(total)
        assert frame["agents"][0]["action"] == step.actions[frame["agents"][0]["name"]]
        assert all(step.started is not None for step in recording.steps)
