"""The controller behind `cyberdial range up`: holds one range until told to stop.

Mininet's host shells live as long as the controller holds their ptys, so the CLI
starts this process in its own session: it brings the range up, reports
`READY <run_id>` (or `FAILED <reason>`) on stdout, then waits for SIGTERM/SIGINT
(`cyberdial range down RUN_ID` sends it) or `MAX_LIFETIME_S`, and tears down.
It runs without a hub: the bridge binds the run's endpoints, and gets the run's
host keys from this process over its key service (`keys.py`) while it waits, and
has it reset the range for each episode over its reset service (`controller.py`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType

from cyberdial.range.emulation.capture import CaptureLimits
from cyberdial.range.emulation.controller import ResetService
from cyberdial.range.emulation.emulator import Range
from cyberdial.range.emulation.keys import KeyService
from cyberdial.range.errors import CyberdialError
from cyberdial.range.scenario import load_scenario

MAX_LIFETIME_S = 7 * 24 * 3600.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--pcap-mb", type=int, default=None, help="capture the bridges")
    args = parser.parse_args()
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        scenario = load_scenario(args.scenario)
        emulated = Range(scenario, hub=False, seed=args.seed)
        if args.pcap_mb is not None:
            emulated.capture_dir = emulated.logs_dir / "pcap"
            emulated.capture_limits = CaptureLimits.per_subnet(args.pcap_mb)
        # From here on our own output goes to the run's log, not the CLI's pipe.
        emulated.logs_dir.mkdir(parents=True, exist_ok=True)
        log = os.open(emulated.logs_dir / "controller.log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        emulated.up()
    except (CyberdialError, OSError) as error:
        print(f"FAILED {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              flush=True)
        return 2
    started = time.monotonic()
    try:
        with KeyService(emulated.host_keys) as keys, \
                ResetService(emulated.run_id, emulated.reset_episode) as resets:
            print(f"READY {emulated.run_id}", flush=True)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            while not stop and time.monotonic() - started < MAX_LIFETIME_S:
                keys.serve_once(0.1)
                resets.serve_once(0.1)
    except OSError as error:
        print(f"FAILED cannot serve the run's host keys and resets ({error})", flush=True)
        return 2
    finally:
        emulated.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
