"""The drill's web view: a page that shows a drill live or replays a recording.

`WebView` serves one page (starlette, run by uvicorn in a background thread) and
pushes every recorded step to it over a WebSocket, as the terminal live view
draws it: the network picture (`agents/picture.py`) recoloured by truth and by
blue's belief, alerts, each agent's action and message bits, red's actions,
reward terms and the running return. `WebSeat` lets a person play one blue
agent from the page; the page can only ever pick one of that agent's legal
actions for the step it was offered (anything else is Sleep). Every asset is in
the package: the page needs no internet.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyberdial.agents.drill import HumanSeat
from cyberdial.agents.picture import STATE_COLOURS, Topology, host_map_svg
from cyberdial.agents.recording import RecordingHeader, StepRecord
from cyberdial.range.errors import CyberdialError
from cyberdial.range.model import ActionKind, GameModel

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STARTUP_WAIT_S = 30.0
STOP_WAIT_S = 10.0
MAX_CLIENT_MESSAGE = 4096  # bytes; a choice is a few dozen
# uPlot 1.6.32 (MIT, uPlot.LICENSE) draws the return chart; vendored from npm, served here.
ASSETS = ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css")
HOST_BITS = 4
BELIEF = {"00": "clean", "01": "user", "11": "privileged", "10": "unknown"}
ACTIVITY = {"00": "", "10": "scan", "11": "exploit"}


@dataclass(frozen=True)
class WebAddress:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str | None) -> WebAddress:
    """'HOST:PORT', 'HOST', ':PORT' or 'PORT'; nothing means 127.0.0.1:8765. Port 0: any free."""
    if not text:
        return WebAddress(DEFAULT_HOST, DEFAULT_PORT)
    host, _, port_text = text.rpartition(":") if ":" in text else ("", "", text)
    if not port_text.isdigit() and not host:
        host, port_text = text, str(DEFAULT_PORT)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CyberdialError(
            f"--web {text}: expected HOST:PORT, HOST or PORT (e.g. 127.0.0.1:8765)"
        )
    host = host.strip("[]") or DEFAULT_HOST
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise CyberdialError(f"--web {text}: unknown host {host!r}") from None
    return WebAddress(host, int(port_text))


def frame_of(header: RecordingHeader, record: StepRecord, episode_return: float) -> dict[str, Any]:
    """One step as the page draws it (the same for a live drill and a replay)."""
    truth = record.ground_truth
    impacted = set(truth.impacted)
    belief: dict[str, str] = {}
    activity: dict[str, str] = {}
    for agent in header.agents:
        bits = record.observations.get(agent.name, "")
        for i, host in enumerate(agent.hosts):
            chunk = bits[HOST_BITS * i : HOST_BITS * (i + 1)]
            if len(chunk) == HOST_BITS:
                belief[host] = BELIEF.get(chunk[2:], "unknown")
                if ACTIVITY.get(chunk[:2]):
                    activity[host] = ACTIVITY[chunk[:2]]
    results = {c.agent: ("ok" if c.ok else f"failed: {c.detail}") for c in record.commands}
    return {
        "episode": record.episode,
        "step": record.step,
        "wall_time": record.wall_time,
        "truth": {
            h.name: "impacted" if h.name in impacted else truth.compromise.get(h.name, "clean")
            for h in header.hosts
        },
        "belief": {h.name: belief.get(h.name, "unwatched") for h in header.hosts},
        "activity": activity,
        "blocked": list(truth.blocked),
        "decoys": list(truth.decoys),
        "alerts": [a.model_dump() for a in record.alerts],
        "agents": [
            {
                "name": agent.name,
                "action": record.actions.get(agent.name, ""),
                "message": record.messages.get(agent.name, ""),
                "result": results.get(agent.name, ""),
            }
            for agent in header.agents
        ],
        "red": list(truth.red_actions),
        "reward": record.reward,
        "reward_terms": record.reward_terms,
        "return": episode_return,
    }


class WebView:
    """The page's server: a context manager that starts uvicorn in a thread and stops it.

    `publish(record)` (from the drill's thread) sends a step to every open page;
    `offer(...)`/`take_choice(...)` are the human seat's side. Every request
    must carry the token printed at start (`url`).
    """

    def __init__(
        self,
        header: RecordingHeader,
        topology: Topology,
        address: WebAddress,
        *,
        mode: str = "live",
        title: str = "",
        token: str | None = None,
    ) -> None:
        self.header = header
        self.topology = topology
        self.address = address
        self.mode = mode
        self.title = title or f"{header.scenario} — {header.range} range — policy {header.policy}"
        self.token = token or secrets.token_urlsafe(16)
        self.seat: str | None = None
        self._frames: list[dict[str, Any]] = []
        self._return = 0.0
        self._episode = -1
        self._finished = False
        self._prompt: dict[str, Any] | None = None
        self._choices: queue.Queue[tuple[int, int, int]] = queue.Queue()
        self._clients: set[Any] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._svg = ""
        self.port = address.port

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        host = self.address.host
        if host in ("0.0.0.0", "::"):  # every interface: name the machine, not the wildcard
            host = socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def __enter__(self) -> WebView:
        import uvicorn

        self._svg = host_map_svg(
            self.topology, [("truth", "truth (operator view)"), ("belief", "what blue believes")]
        )
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address.host, self.address.port))
        except OSError as error:
            sock.close()
            raise CyberdialError(
                f"--web {self.address.host}:{self.address.port}: cannot listen ({error.strerror});"
                " choose another port, or 0 for any free one"
            ) from None
        sock.listen(16)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="off", ws_max_size=MAX_CLIENT_MESSAGE
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="cyberdial-web", daemon=True)
        self._thread.start()
        ready.wait(STARTUP_WAIT_S)
        deadline = time.monotonic() + STARTUP_WAIT_S
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                break
            time.sleep(0.02)
        if not self._server.started:
            self.__exit__()
            raise CyberdialError("the web view did not start (see the log with -v)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
        if self._socket is not None:
            self._socket.close()

    # ------------------------------------------------------------ the drill side

    def publish(self, record: StepRecord) -> None:
        """A step was recorded: keep it and send it to every open page."""
        with self._lock:
            if record.episode != self._episode:
                self._episode, self._return = record.episode, 0.0
            self._return += record.reward
            frame = frame_of(self.header, record, self._return)
            frame["published"] = time.time()
            self._frames.append(frame)
        self._send({"type": "frame", "frame": frame})

    def load(self, records: list[StepRecord]) -> None:
        """A whole recording at once (replay)."""
        for record in records:
            self.publish(record)
        self.finish()

    def finish(self) -> None:
        with self._lock:
            self._finished = True
        self._send({"type": "end"})

    def offer(self, prompt: dict[str, Any]) -> None:
        with self._lock:
            self._prompt = prompt
            while not self._choices.empty():
                self._choices.get_nowait()
        self._send({"type": "prompt", "prompt": prompt})

    def take_choice(self, episode: int, step: int, timeout_s: float) -> int | None:
        """The page's choice for this (episode, step), or None when none came in time."""
        end = time.monotonic() + timeout_s
        try:
            while (left := end - time.monotonic()) > 0:
                got_episode, got_step, action = self._choices.get(timeout=left)
                if (got_episode, got_step) == (episode, step):
                    return action
            return None
        except queue.Empty:
            return None
        finally:
            with self._lock:
                self._prompt = None
            self._send({"type": "prompt_closed", "episode": episode, "step": step})

    # ---------------------------------------------------------------- serving

    def _send(self, message: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        text = json.dumps(message)
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._broadcast(text)))
        except RuntimeError:  # the loop closed between the check and the call
            pass

    async def _broadcast(self, text: str) -> None:
        for client in list(self._clients):
            try:
                await client.send_text(text)
            except Exception:  # a page that went away; it is dropped, the drill goes on
                self._clients.discard(client)

    def _hello(self) -> dict[str, Any]:
        with self._lock:
            return {
                "type": "hello",
                "mode": self.mode,
                "title": self.title,
                "colours": STATE_COLOURS,
                "seat": self.seat,
                "episode_length": self.header.episode_length,
                "step_period": self.header.step_period,
                "frames": list(self._frames),
                "finished": self._finished,
                "prompt": self._prompt,
            }

    def _authorised(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, PlainTextResponse, Response
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocket, WebSocketDisconnect

        static = resources.files("cyberdial.agents.web") / "static"
        index_html = (static / "index.html").read_text(encoding="utf-8")
        assets = {name: (static / name).read_bytes() for name in ASSETS}
        types = {".js": "text/javascript", ".css": "text/css"}

        async def index(request: Request) -> Response:
            if not self._authorised(request.query_params.get("token")):
                return PlainTextResponse("open the address cyberdial printed (with its token)", 403)
            return HTMLResponse(index_html, headers={"Cache-Control": "no-store"})

        async def picture(request: Request) -> Response:
            if not self._authorised(request.query_params.get("token")):
                return PlainTextResponse("forbidden", 403)
            return Response(self._svg, media_type="image/svg+xml")

        async def favicon(request: Request) -> Response:
            return Response(status_code=204)

        async def asset(request: Request) -> Response:
            name = request.path_params["name"]
            if name not in assets:
                return PlainTextResponse("not found", 404)
            return Response(assets[name], media_type=types[Path(name).suffix])

        async def stream(websocket: WebSocket) -> None:
            if not self._authorised(websocket.query_params.get("token")):
                await websocket.close(code=1008)
                return
            await websocket.accept()
            self._clients.add(websocket)
            try:
                await websocket.send_text(json.dumps(self._hello()))
                while True:
                    self._receive(await websocket.receive_text())
            except WebSocketDisconnect:
                pass
            finally:
                self._clients.discard(websocket)

        return Starlette(
            routes=[
                Route("/", index),
                Route("/picture.svg", picture),
                Route("/static/{name}", asset),
                Route("/favicon.ico", favicon),
                WebSocketRoute("/stream", stream),
            ]
        )

    def _receive(self, text: str) -> None:
        """A page's message: only a choice for the open prompt counts; the rest is ignored."""
        try:
            message = json.loads(text)
            if not isinstance(message, dict) or message.get("type") != "choose":
                return
            episode, step, action = (int(message[k]) for k in ("episode", "step", "action"))
        except (ValueError, TypeError, KeyError):
            return
        with self._lock:
            prompt = self._prompt
        if prompt is None or (prompt["episode"], prompt["step"]) != (episode, step):
            return
        if action not in {a["index"] for a in prompt["actions"]}:
            return
        self._choices.put((episode, step, action))


class WebSeat(HumanSeat):
    """A person plays one blue agent from the web page, before the step deadline.

    The page is offered the agent's observation and legal actions; a choice that
    is not one of them, or none in time, is Sleep (as at the terminal).
    """

    def __init__(self, model: GameModel, agent: str, deadline_s: float, view: WebView) -> None:
        import sys

        super().__init__(model, agent, deadline_s, sys.stdin, sys.stdout)
        self.view = view
        view.seat = self.layout.name

    def choose(self, observation: NDArray[np.float32], mask: NDArray[np.int8]) -> int:
        legal = self.legal_actions(mask)
        self.view.offer(
            {
                "agent": self.layout.name,
                "episode": self.episode,
                "step": self.step,
                "observation": self.observation_lines(observation),
                "actions": [{"index": i, "label": label} for i, label in legal],
                "deadline_s": self.deadline_s,
                "offered": time.time(),
            }
        )
        choice = self.view.take_choice(self.episode, self.step, self.deadline_s)
        if choice is None or choice not in {i for i, _ in legal}:
            return int(ActionKind.SLEEP)
        return choice
