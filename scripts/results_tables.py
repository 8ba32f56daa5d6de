"""Copy a comparison's tables from results/NAME/report.md into docs/results.md.

Between the lines `<!-- NAME:begin -->` and `<!-- NAME:end -->` of docs/results.md,
so the doc quotes exactly what the command wrote. Usage:
    python scripts/results_tables.py paper-2m-small
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(name: str) -> int:
    report = (ROOT / "results" / name / "report.md").read_text(encoding="utf-8")
    body = report.split("\n## ", 1)[1].split("\nColumns:", 1)[0]
    body = body.split("\n", 1)[1]  # drop the scenario heading; the doc has its own
    body = body.replace("](curves_", f"](../results/{name}/curves_")
    doc_path = ROOT / "docs" / "results.md"
    doc = doc_path.read_text(encoding="utf-8")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc or end not in doc:
        print(f"error: docs/results.md has no {begin} ... {end} block", file=sys.stderr)
        return 2
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc_path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}", encoding="utf-8")
    print(f"docs/results.md: {name} tables from results/{name}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else 2)
