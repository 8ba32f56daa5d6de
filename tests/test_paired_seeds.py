"""scripts/paired_seeds.py: compare's paired difference over a chosen range of seeds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "paired_seeds.py"


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("paired_seeds", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(final: Path, algo: str, seed: int, value: float) -> None:
    final.mkdir(parents=True, exist_ok=True)
    record = {"scenario": "small", "algo": algo, "seed": seed, "final": {"return_mean": value}}
    (final / f"small__{algo}__{seed}.json").write_text(json.dumps(record), encoding="utf-8")


def test_pairs_only_the_chosen_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    final = tmp_path / "cmp" / "final"
    final.mkdir(parents=True)
    # Seeds 0-1 differ by +10, seeds 2-4 by +1, +2, +3; seed 5 of `b` only (unpaired).
    for seed, (a, b) in enumerate([(0.0, -10.0), (5.0, -5.0), (1.0, 0.0), (2.0, 0.0),
                                   (3.0, 0.0)]):
        _write(final, "a", seed, a)
        _write(final, "b", seed, b)
    _write(final, "b", 5, 0.0)

    code = _script().main(["cmp", "small", "a", "b", "--seeds", "2-5",
                           "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "seed 0" not in out and "seed 5" not in out
    # Mean +2, sample std 1 over 3 seeds: half-width t(2) 4.303 / sqrt(3) = 2.48.
    assert out.strip().splitlines()[-1] == (
        "a - b, 3 paired seeds: +2.00, 95 % interval [-0.48, +4.48]")


def test_refuses_a_range_with_no_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    final = tmp_path / "cmp" / "final"
    final.mkdir(parents=True)
    _write(final, "a", 0, 1.0)
    _write(final, "b", 0, 0.0)
    code = _script().main(["cmp", "small", "a", "b", "--seeds", "3-4",
                           "--results-dir", str(tmp_path)])
    assert code == 2
    assert "no finished small run of 'a' with seeds 3-4" in capsys.readouterr().err


def test_pairs_an_algorithm_with_the_same_name_in_another_comparison(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An ablation run under its own name: the same algorithm token, another setting.
    for seed, (ablation, base) in enumerate([(1.0, 0.0), (2.0, 0.0), (3.0, 0.0)]):
        _write(tmp_path / "ablation" / "final", "a", seed, ablation)
        _write(tmp_path / "base" / "final", "a", seed, base)
    _write(tmp_path / "base" / "final", "b", 0, 100.0)  # another algorithm: not read
    code = _script().main(["ablation", "small", "a", "a", "--second-from", "base",
                           "--seeds", "0-2", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[0] == "seed 0: ablation:a 1.00, base:a 0.00, difference +1.00"
    assert out[-1] == "ablation:a - base:a, 3 paired seeds: +2.00, 95 % interval [-0.48, +4.48]"
    code = _script().main(["ablation", "small", "a", "a", "--second-from", "missing",
                           "--seeds", "0-2", "--results-dir", str(tmp_path)])
    assert code == 2 and "missing has no final/ results" in capsys.readouterr().err
