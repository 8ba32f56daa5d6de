"""A hostile host floods a running `cyberdial bridge`: its memory before and after, what it dropped.

Starts `cyberdial bridge` (explicit endpoints, a host key file, no referee) as
its own process, plays an episode of tiny against it from this process while a
third process sends made-up programs' hellos and forged alerts (signed with a
key nobody issued) as fast as it can, then prints the bridge's RSS before and
after, the episode's steps, and the bridge's own drop counts from its exit line.

    .venv/bin/python bench/hostile_flood.py [--hellos 25000] [--alerts 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq
from machine import describe_machine

from cyberdial.bridge.env import EmulatedRange
from cyberdial.range.emulation.keys import key_line
from cyberdial.range.model import AlertKind
from cyberdial.range.scenario import load_scenario
from cyberdial.range.wire import Alert, Hello, HostKeys, encode

RUN = "flood"
FORGED_KEY = b"f" * 32


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def flood(alerts: str, commands: str, hellos: int, forged_alerts: int) -> None:
    context: zmq.Context[bytes] = zmq.Context()
    push, dealer = context.socket(zmq.PUSH), context.socket(zmq.DEALER)
    for sock, endpoint in ((push, alerts), (dealer, commands)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(endpoint)
    for index in range(hellos):
        sock, role = (push, "sensor") if index % 2 else (dealer, "actuator")
        sock.send_multipart(encode("hello", Hello(role=role, hosts=("user0",)), run_id=RUN,
                                   sender=f"fake-{index}", seq=1, key=FORGED_KEY))
    alert = Alert(host="user0", kind=AlertKind.EXPLOIT, observed_at=time.time())
    frames = encode("alert", alert, run_id=RUN, sender="sensor-user", seq=10 ** 18,
                    key=FORGED_KEY)
    for _ in range(forged_alerts):
        push.send_multipart(frames)
    time.sleep(2.0)
    push.close()
    dealer.close()
    context.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hellos", type=int, default=25_000)
    parser.add_argument("--alerts", type=int, default=100_000)
    args = parser.parse_args()
    print(describe_machine())
    scenario = load_scenario("tiny")
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="flood") as folder:
        base = Path(folder)
        key_file = base / "host.key"
        key_file.write_bytes(key_line(HostKeys.generate(RUN).master))
        key_file.chmod(0o600)
        ends = {name: f"ipc://{base / name}" for name in ("a", "c", "g")}
        bridge = subprocess.Popen(
            [sys.executable, "-m", "cyberdial", "bridge", RUN, "--alerts", ends["a"],
             "--commands", ends["c"], "--agent-endpoint", ends["g"], "--scenario", "tiny",
             "--no-referee", "--host-key-file", str(key_file), "--step-period", "0.1",
             "--max-hours", str(120 / 3600)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            env = EmulatedRange(scenario, ends["g"], run_id=RUN, timeout_s=10.0)
            before = rss_mib(bridge.pid)
            flooder = multiprocessing.get_context("spawn").Process(
                target=flood, args=(ends["a"], ends["c"], args.hellos, args.alerts))
            env.reset(seed=0)
            flooder.start()
            steps, most_dead, largest = 0, 0, 0
            while env.agents:
                _, _, _, _, infos = env.step({})
                steps += 1
                most_dead = max(most_dead, len(infos["blue_user"]["dead_peers"]))
                largest = max(largest, len(env._last.model_dump_json()) if env._last else 0)
            flooder.join(120)
            time.sleep(1.0)
            after = rss_mib(bridge.pid)
            env.close()
        finally:
            bridge.terminate()
            output, _ = bridge.communicate(timeout=30)
    print(f"flood: {args.hellos} hellos of made-up programs + {args.alerts} forged alerts,"
          " from another process, during one tiny episode (step 0.1 s)")
    print(f"episode: {steps} of {scenario.episode_length} steps; most dead_peers in a step"
          f" {most_dead}; largest reply {largest} bytes")
    print(f"bridge RSS: {before:.0f} MiB before, {after:.0f} MiB after")
    print("bridge:", (output.strip().splitlines() or ["(no output)"])[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
