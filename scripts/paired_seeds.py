"""A comparison's paired difference of held-out return over a chosen range of seeds.

compare's report pairs every seed two algorithms share; this gives the same figure
(the same function) over a subset, e.g. the seeds added after a first look, so a
replication can be read on its own. With `--second-from OTHER` the second algorithm's
runs are read from another comparison (an ablation run later under its own name, its
seeds paired with the first's). Usage:
    python scripts/paired_seeds.py paper-2m-small small dial-sau-mix dial-sau-nocomm-mix \
        --seeds 5-9
    python scripts/paired_seeds.py actgate-small small dial-sau-mix dial-sau-mix \
        --second-from paper-2m-small --seeds 0-4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyberdial.agents.compare import load_results, paired_difference

ROOT = Path(__file__).resolve().parent.parent


def seed_range(text: str) -> range:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M, not {text!r}") from None
    if low < 0 or high < low:
        raise argparse.ArgumentTypeError(f"seeds must be N or N-M with N <= M, not {text!r}")
    return range(low, high + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("name", help="the comparison (results/NAME)")
    parser.add_argument("scenario")
    parser.add_argument("first", help="algorithm whose return comes first")
    parser.add_argument("second", help="algorithm subtracted")
    parser.add_argument("--seeds", type=seed_range, required=True, help="N or N-M (inclusive)")
    parser.add_argument("--second-from", metavar="OTHER",
                        help="read the second algorithm's runs from results/OTHER"
                        " (default: the same comparison)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results",
                        help="(default: the repository's results/)")
    args = parser.parse_args(argv)
    first_name, second_name = args.first, args.second
    if args.second_from is not None and args.second_from != args.name:
        # Runs of two comparisons may share an algorithm's name: tell them apart.
        first_name, second_name = f"{args.name}:{args.first}", f"{args.second_from}:{args.second}"
    sides = [(args.name, args.first, first_name),
             (args.second_from or args.name, args.second, second_name)]
    results = []
    for name, algo, label in sides:
        out_dir = args.results_dir / name
        if not (out_dir / "final").is_dir():
            print(f"error: {out_dir} has no final/ results", file=sys.stderr)
            return 2
        found = [dict(r, algo=label) for r in load_results(out_dir)
                 if r["seed"] in args.seeds and r["scenario"] == args.scenario
                 and r["algo"] == algo]
        if not found:
            print(f"error: no finished {args.scenario} run of {algo!r} with seeds "
                  f"{args.seeds.start}-{args.seeds.stop - 1} in {out_dir}", file=sys.stderr)
            return 2
        results += found
    by_key = {(r["algo"], r["seed"]): r["final"]["return_mean"] for r in results}
    for seed in args.seeds:
        a, b = by_key.get((first_name, seed)), by_key.get((second_name, seed))
        if a is not None and b is not None:
            print(f"seed {seed}: {first_name} {a:.2f}, {second_name} {b:.2f}, "
                  f"difference {a - b:+.2f}")
    d = paired_difference(results, args.scenario, first_name, second_name)
    if d is None:
        print("error: the two algorithms share no finished seed in that range", file=sys.stderr)
        return 2
    interval = ("no interval (one seed)" if d["n"] < 2
                else f"95 % interval [{d['low']:+.2f}, {d['high']:+.2f}]")
    print(f"{first_name} - {second_name}, {int(d['n'])} paired seeds: {d['mean']:+.2f},"
          f" {interval}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
