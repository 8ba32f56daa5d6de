"""Lifecycle and hostile files: keys on the way in, bridges on the way out, bad input, start-up.

What a careless user or a hostile host hands us (bombs of YAML, damaged
checkpoints, recordings with binary junk) ends in one line and a non-zero exit;
host keys never touch a file; a stale bridge.json is seen at once; `range down`
stops the run's bridge; the controller's death takes the programs down without a
traceback; Ctrl-C reaches a drill however it was started; `--help` and
`scenario validate` start without torch or matplotlib.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cyberdial.bridge.env import BridgeRefused, EmulatedRange
from cyberdial.range.emulation.controller import (
    DetachedRange,
    OwnUserService,
    RangeResetFailed,
    ResetService,
)
from cyberdial.range.emulation.keys import (
    HostKeysUnavailable,
    KeyService,
    fetch_host_keys,
    key_line,
    read_program_key,
)
from cyberdial.range.emulation.plan import new_run_id
from cyberdial.range.errors import HostCommandError
from cyberdial.range.wire import HostKeys

CLI = [sys.executable, "-m", "cyberdial"]
REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 120, **options: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO, **options)  # type: ignore[call-overload]


def one_line_error(result: subprocess.CompletedProcess[str], limit: int = 400) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= limit, result.stderr[:2000]
    return lines[0]


# ------------------------------------------------------------------- keys


def test_key_service_hands_the_master_to_its_own_user_only() -> None:
    keys = HostKeys.generate(new_run_id())
    with KeyService(keys) as service:
        import threading

        got: list[HostKeys] = []
        thread = threading.Thread(target=lambda: got.append(
            fetch_host_keys(keys.run_id, controller_pid=os.getpid())))
        thread.start()
        deadline = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < deadline:
            service.serve_once(0.05)
        thread.join(5)
        assert got and got[0].master == keys.master
        assert got[0].key("sensor-user") == keys.key("sensor-user") != keys.key("sensor-x")
        # Another process answering on the name is not taken for the controller.
        with pytest.raises(HostKeysUnavailable, match="not its controller"):
            fetch_host_keys(keys.run_id, controller_pid=os.getpid() + 1, timeout_s=2)
    with pytest.raises(HostKeysUnavailable, match="range down"):
        fetch_host_keys(keys.run_id, timeout_s=1)  # nobody serves it any more


def _serving(service: OwnUserService, call: Callable[[], object]) -> list[object]:
    """Run `call` in a thread while `service` answers; what it returned or raised."""
    import threading

    got: list[object] = []

    def client() -> None:
        try:
            got.append(call())
        except Exception as error:  # the caller checks what was raised
            got.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        service.serve_once(0.05)
    thread.join(5)
    return got


def test_reset_service_resets_the_range_for_its_bridge() -> None:
    run_id = new_run_id()
    seeds: list[int | None] = []

    def reset(seed: int | None) -> None:
        if seed == 13:
            raise HostCommandError("services did not come back after the reset: [web]")
        seeds.append(seed)

    detached = DetachedRange(run_id, os.getpid(), timeout_s=10)
    with ResetService(run_id, reset) as service:
        [took] = _serving(service, lambda: detached.reset_episode(7))
        assert isinstance(took, float) and seeds == [7]
        [took] = _serving(service, lambda: detached.reset_episode())  # the range's own seed
        assert isinstance(took, float) and seeds == [7, None]
        # A failed reset is the bridge's error to report; the controller lives on.
        [failed] = _serving(service, lambda: detached.reset_episode(13))
        assert isinstance(failed, RangeResetFailed) and "did not come back" in str(failed)
        assert service.served == 2
        # Another process answering on the name is not taken for the controller.
        with pytest.raises(RangeResetFailed, match="not its controller"):
            DetachedRange(run_id, os.getpid() + 1, timeout_s=2).reset_episode(1)
    with pytest.raises(RangeResetFailed, match="range down"):
        detached.reset_episode(1)  # nobody serves it any more
    assert seeds == [7, None]


def test_a_program_reads_its_key_from_its_pipe() -> None:
    key = HostKeys.generate("r1").key("sensor-user")
    read, write = os.pipe()
    os.write(write, key_line(key))
    os.close(write)
    with os.fdopen(read, "rb") as stream:
        assert read_program_key(stream) == key
    read, write = os.pipe()
    os.close(write)  # started by hand: nothing on stdin
    with os.fdopen(read, "rb") as stream, pytest.raises(HostKeysUnavailable, match="stdin"):
        read_program_key(stream, timeout_s=1)


@pytest.mark.root
def test_the_key_socket_is_out_of_reach_of_a_host_namespace() -> None:
    keys = HostKeys.generate(new_run_id())
    probe = ("import sys; from cyberdial.range.emulation.keys import fetch_host_keys;"
             f" fetch_host_keys({keys.run_id!r}, timeout_s=2)")
    with KeyService(keys):
        # The same probe, run in a network namespace of its own (as a range host's are).
        result = subprocess.run(["unshare", "--net", sys.executable, "-c", probe],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "does not answer" in result.stderr


# ---------------------------------------------------------- stale bridge.json


def test_stale_bridge_file_is_recognised_at_once(tmp_path: Path) -> None:
    from cyberdial.range.scenario import load_scenario

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)  # a bridge that died without removing its file
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / "scenario.json").write_text(load_scenario("tiny").model_dump_json(), "utf-8")
    (run_dir / "bridge.json").write_text(json.dumps(
        {"agent_endpoint": f"ipc://{tmp_path / 'gone.sock'}", "server_key": None,
         "pid": child.pid, "start": 12345}), encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(BridgeRefused, match=f"pid {child.pid}\\) is gone"):
        EmulatedRange.attach("r1", runs_root=tmp_path)
    assert time.monotonic() - started < 5.0  # no reply timeout waited for
    (run_dir / "bridge.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BridgeRefused, match="cannot read"):
        EmulatedRange.attach("r1", runs_root=tmp_path)


# ------------------------------------------------------------- hostile files


BILLION_LAUGHS = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)]
    + ["name: [*l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8]\n"])


@pytest.mark.parametrize(("name", "text", "says"), [
    ("laughs.yaml", BILLION_LAUGHS, "alias"),
    ("deep.yaml", "name: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested"),
    ("deepmap.yaml", "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x\n",
     "nested"),
    ("longvalue.yaml", "name: " + "x" * 900_000 + "\n", "characters"),
    ("longkey.yaml", (REPO / "scenarios" / "tiny.yaml").read_text("utf-8") + "? " + "k" * 5_000
     + "\n: 1\n", "(5000 characters)"),
    ("big.yaml", "# " + "x" * (1 << 20) + "\n", "too big"),
])
def test_hostile_scenario_files_end_in_one_short_line(tmp_path: Path, name: str, text: str,
                                                      says: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    line = one_line_error(cli("scenario", "validate", str(path), timeout=60))
    assert line.startswith(f"error: {path}:") and says in line


def test_binary_and_special_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"name: \xff\xfe\x00\x01\n")
    assert "UTF-8" in one_line_error(cli("scenario", "validate", str(junk)))
    assert "regular file" in one_line_error(cli("scenario", "validate", "/dev/zero"))


def _damaged_checkpoints(folder: Path) -> list[Path]:
    import torch

    good = torch.load(REPO / "scenarios" / "policies" / "tiny_dial_sau.pt", map_location="cpu",
                      weights_only=True)
    variants = {
        "missing.pt": {"format": "cyberdial-checkpoint", "version": 1},
        "wrongtypes.pt": {**good, "config": [], "layout": 3},
        "badlayout.pt": {**good, "layout": {"agents": [{"name": "x"}]}},
        "badscenario.pt": {**good, "scenario": {"name": 5}},
        "badweights.pt": {**good, "learner": {"network": {"bogus": torch.zeros(2)}}},
        "badconfig.pt": {**good, "config": {**good["config"], "hidden": "many"}},
    }
    paths = []
    for name, payload in variants.items():
        torch.save(payload, folder / name)
        paths.append(folder / name)
    return paths


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The CLI in this process (torch and matplotlib load once): its one error line."""
    from cyberdial.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    return one_line_error(subprocess.CompletedProcess(list(argv), code, "", err))


def test_damaged_checkpoints_end_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for path in _damaged_checkpoints(tmp_path):
        line = in_process(capsys, "evaluate", str(path), "--scenario", "tiny", "--episodes", "1")
        assert str(path) in line and "damaged" in line, line


def test_recordings_with_binary_junk_end_in_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "recording.jsonl"
    recording.write_bytes(b'{"type": "header", "x": "\xff\xfe"}\n')
    for command in ("report", "replay"):
        line = in_process(capsys, command, str(recording))
        assert "recording.jsonl:1" in line and "utf-8" in line
    recording.write_bytes(b"[" * 100_000 + b"\n")
    assert "recording.jsonl:1" in in_process(capsys, "report", str(recording))
    # And through the real command line, once: no traceback, exit 2.
    assert "recording.jsonl:1" in one_line_error(cli("replay", str(recording)))


# ---------------------------------------------------------------- start-up


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom cyberdial.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("argv", [["--help"], ["scenario", "validate", "tiny"], ["range", "-h"],
                                  ["bridge", "--help"]])
def test_light_commands_start_without_torch_or_matplotlib(argv: list[str]) -> None:
    loaded = _modules_after(argv)
    assert "cyberdial.cli" in loaded
    assert "torch" not in loaded and "matplotlib" not in loaded


def test_the_bridge_and_range_programs_need_no_torch() -> None:
    code = ("import sys\nimport cyberdial.commands.bridge, cyberdial.bridge.env\n"
            "import cyberdial.range.emulation.daemon\n"
            "for role in ('sensor', 'actuator', 'red', 'green', 'services', 'implant'):\n"
            "    __import__(f'cyberdial.range.emulation.programs.{role}')\n"
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_help_lines_are_the_commands_own() -> None:
    from cyberdial.cli import COMMANDS, build_parser

    full = build_parser("*")
    light = build_parser(None)
    actions = [a for a in full._actions if hasattr(a, "choices") and a.choices]
    light_actions = [a for a in light._actions if hasattr(a, "choices") and a.choices]
    full_help = {c.dest: c.help for c in actions[0]._choices_actions}
    light_help = {c.dest: c.help for c in light_actions[0]._choices_actions}
    assert list(light_help) == list(COMMANDS)
    assert full_help == light_help


# ------------------------------------------------------------------- SIGINT


@pytest.mark.timeout(120)
def test_a_drill_started_with_sigint_ignored_still_takes_it(tmp_path: Path) -> None:
    """A backgrounded job inherits SIGINT ignored: the lost Ctrl-C of issue 13."""
    out = tmp_path / "drill"
    process = subprocess.Popen(
        [*CLI, "drill", "tiny", "--policy", "react", "--range", "sim", "--episodes", "50",
         "--pace", "0.05", "--no-live", "--out", str(out)], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        recording = out / "recording.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if recording.exists() and recording.read_text().count('"type":"step"') >= 3:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the drill never reached its third step")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert recording.read_text().count('"type":"step"') < 50 * 30


# ------------------------------------------- a real range: down, and a crash


def _range_up() -> str:
    up = cli("range", "up", "tiny", timeout=150)
    assert up.returncode == 0, up.stderr
    return next(line.split()[-1] for line in up.stdout.splitlines() if line.startswith("run id:"))


def _wait(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_range_down_stops_its_bridge_and_a_dead_controller_stops_the_programs() -> None:
    from cyberdial.range.emulation.state import RUNS_ROOT, RunState

    run_id = _range_up()
    bridge = None
    try:
        bridge = subprocess.Popen([*CLI, "bridge", run_id], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert _wait(lambda: (RUNS_ROOT / run_id / "bridge.json").exists(), 60)
        env = EmulatedRange.attach(run_id)
        try:
            env.reset(seed=0)
            _, _, _, _, infos = env.step({})
            assert infos["blue_user"]["dead_peers"] == ()
        finally:
            env.close()
        down = cli("range", "down", run_id, timeout=120)
        assert down.returncode == 0, down.stderr
        assert f"stopped the bridge of run {run_id}" in down.stdout
        stdout, stderr = bridge.communicate(timeout=30)
        assert bridge.returncode == 0 and "Traceback" not in stderr
        assert "SIGTERM" in stdout
    finally:
        if bridge is not None and bridge.poll() is None:
            bridge.kill()
            bridge.communicate()
        if (RUNS_ROOT / run_id).exists():
            cli("range", "down", run_id, timeout=120)

    run_id = _range_up()
    try:
        state = RunState.load(run_id)
        os.kill(state.controller.pid, signal.SIGKILL)
        keyed = [p for p in state.programs if p.role in ("sensor", "actuator", "red", "green")]
        assert _wait(lambda: not any(p.alive() for p in keyed), 30), \
            [p.name for p in keyed if p.alive()]
        logs = Path(state.logs_dir)
        for program in keyed:
            text = (logs / f"{program.name}.log").read_text(encoding="utf-8", errors="replace")
            assert "Traceback" not in text, (program.name, text[-2000:])
            assert "controller" in text and "is gone" in text, (program.name, text[-500:])
        # A bridge attached now says what happened instead of waiting.
        result = cli("bridge", run_id, timeout=60)
        assert "controller" in one_line_error(result) and "range down" in result.stderr
    finally:
        down = cli("range", "down", run_id, timeout=120)
        assert down.returncode == 0, down.stderr
