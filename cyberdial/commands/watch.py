"""`cyberdial watch`: replay a drill's recording on the web page, with a step slider."""

from __future__ import annotations

import argparse
import contextlib
import threading

from cyberdial.agents.recording import load_recording
from cyberdial.commands.common import console, stop_signals_interrupt
from cyberdial.range.errors import CyberdialError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = subparsers.add_parser(
        "watch", help="replay a drill's recording on a web page (step slider; Ctrl-C stops)"
    )
    watch.add_argument("run", metavar="RUN", help="run directory or recording.jsonl")
    watch.add_argument(
        "--web",
        metavar="ADDR",
        default=None,
        help="where to serve the page (HOST:PORT, default 127.0.0.1:8765; port 0 picks a free"
        " one); the address printed carries the page's token",
    )
    watch.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop serving after this long (default: until Ctrl-C)",
    )
    watch.set_defaults(func=watch_command)


def watch_command(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        raise CyberdialError("--for must be a positive number of seconds")
    recording = load_recording(args.run)
    if not recording.steps:
        raise CyberdialError(f"{args.run}: the recording has no steps to replay")
    # Imported here: the web server and the picture's libraries are slow to import.
    from cyberdial.agents.picture import Topology
    from cyberdial.agents.web.server import WebView, parse_address

    address = parse_address(args.web)
    view = WebView(
        recording.header,
        Topology.of_header(recording.header),
        address,
        mode="replay",
        title=f"replay of {args.run}",
    )
    # SIGTERM stops the replay as Ctrl-C does; SIGINT keeps the handler it has.
    with stop_signals_interrupt(sigint=False), contextlib.suppress(KeyboardInterrupt), view:
        view.load(recording.steps)
        if not address.loopback:
            console.print(
                f"[bold yellow]the page listens on {address.host}, not only this machine[/]"
            )
        console.print(f"web view: {view.url}", soft_wrap=True)
        console.print(f"{len(recording.steps)} steps; Ctrl-C stops")
        threading.Event().wait(args.duration)
    return 0
