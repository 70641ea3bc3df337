"""One way to print and collect benchmark figures: a line per figure with its target, kept for a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

results: list[dict[str, Any]] = []


def report(name: str, value: float, unit: str, target: str, ok: bool) -> None:
    results.append({"name": name, "value": value, "unit": unit, "target": target, "ok": ok})
    print(f"{name:<66} {value:>12.3f} {unit:<6} target {target:<16} {'ok' if ok else 'MISSED'}", flush=True)


def write(path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    missed = [r["name"] for r in results if not r["ok"]]
    print("-" * 110 + f"\n{len(results) - len(missed)} figures on target, {len(missed)} missed; written to {path}")
