"""`make bench`: runs every benchmark in bench/, then prints one table of all figures with their targets and writes
it to bench/results/summary.md (linked from the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("auth", "dataverse", "webhook", "sync", "fanout")
RESULTS = {
    "auth": "auth.json",
    "dataverse": "dataverse.json",
    "webhook": "webhooks.json",
    "sync": "sync.json",
    "fanout": "fanout.json",
}


def main() -> int:
    failed = []
    # --summary-only rebuilds the table from the last results without running anything.
    for name in () if "--summary-only" in sys.argv else BENCHES:
        code = subprocess.call([sys.executable, str(ROOT / "bench" / f"{name}_bench.py")], cwd=ROOT)
        if code != 0:
            failed.append(name)
    lines = [
        f"# Benchmark figures ({datetime.now(UTC).date().isoformat()}, `make bench`, 2-core machine)",
        "",
        "| benchmark | figure | value | unit | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for name in BENCHES:
        path = ROOT / "bench" / "results" / RESULTS[name]
        if not path.exists():
            continue
        for row in json.loads(path.read_text()):
            verdict = "ok" if row["ok"] else "**missed**"
            lines.append(
                f"| {name} | {row['name'].strip()} | {row['value']:.3f} | {row['unit']} | {row['target']} | {verdict} |"
            )
    table = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "summary.md").write_text(table)
    sys.stdout.write("\n" + table)
    if failed:
        sys.stdout.write(f"benchmarks that failed to run: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
