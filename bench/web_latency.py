"""Web view figures on an emulated drill: page load time and alert -> colour latency.

Runs `cyberdial drill SCENARIO --web` (root: the emulated range; `--range sim`
without root), opens the page in Debian's Chromium (Selenium), and prints:
- page load: from asking the browser for the address to the network picture
  drawn (the page's own `loadedAt`), over several fresh loads;
- alert -> colour: from a host sensor's timestamp on an alert to the moment
  the page painted the frame holding it (includes waiting for the step to
  close: a step's alerts reach the agents, and the page, at its end);
- publish -> paint: from the drill publishing a step to the page painting it.
Prints the machine and the figures; asserts nothing.

    sudo .venv/bin/python bench/web_latency.py            # tiny, emulated
    .venv/bin/python bench/web_latency.py --range sim
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

WAIT_S = 600.0


def _quantiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms,"
            f" max {values[-1] * 1000:.0f} ms (n={len(values)})")


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="tiny")
    parser.add_argument("--range", dest="range_kind", default="emulated",
                        choices=["emulated", "sim"])
    parser.add_argument("--loads", type=int, default=5, help="fresh page loads to time")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="web-latency-"))
    drill = subprocess.Popen(
        [sys.executable, "-m", "cyberdial", "drill", args.scenario, "--range", args.range_kind,
         "--policy", "react", "--web", "127.0.0.1:0", "--out", str(out / "drill"), "--no-live"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert drill.stdout is not None
    stdout = drill.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    browser = _browser()
    try:
        url = ""
        deadline = time.monotonic() + WAIT_S
        while not url and time.monotonic() < deadline and drill.poll() is None:
            try:
                found = re.search(r"web view: (http://\S+)", lines.get(timeout=1.0))
            except queue.Empty:
                continue
            url = found.group(1) if found else ""
        if not url:
            print("the drill printed no web address", file=sys.stderr)
            return 1
        loads = []
        for _ in range(args.loads):
            started = time.time()
            browser.get(url)
            while not browser.execute_script("return window.cyberdial.loadedAt"):
                time.sleep(0.01)
            loads.append(browser.execute_script("return window.cyberdial.loadedAt") - started)
        # Stay on the last load for the rest of the drill, then read when each frame was painted.
        while drill.poll() is None:
            time.sleep(0.5)
        applied = browser.execute_script("return window.cyberdial.applied")
        frames = browser.execute_script("return window.cyberdial.state.frames")
    finally:
        browser.quit()
        if drill.poll() is None:
            drill.terminate()
            drill.wait(60)
        stdout.close()
    painted = {(a["episode"], a["step"]): a["at"] for a in applied if a["live"]}
    alert_to_colour, publish_to_paint = [], []
    for frame in frames:
        at = painted.get((frame["episode"], frame["step"]))
        if at is None:
            continue
        publish_to_paint.append(at - frame["published"])
        alert_to_colour += [at - alert["at"] for alert in frame["alerts"] if alert.get("at")]
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f};"
          f" {args.scenario} on the {args.range_kind} range")
    print(f"page load (address -> picture drawn): {_quantiles(loads)}")
    print(f"alert -> colour on the page: {_quantiles(alert_to_colour)}")
    print(f"step published -> painted: {_quantiles(publish_to_paint)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
