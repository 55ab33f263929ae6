"""Targets of the perf suite: each figure printed beside its target and the previous run's.

Every figure is stored in ``.benchmarks/perf-last.json`` (gitignored) under its name, so the
next run prints it as "previous". ``check`` returns whether the target is met; the tests
assert it. ``FMBENCH_PERF_MARGIN`` loosens every target by a factor (the CI smoke uses wide
margins on a small, shared machine: a large regression fails, noise does not).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STORE = Path(os.environ.get("FMBENCH_PERF_STORE", Path(__file__).parents[2] / ".benchmarks" / "perf-last.json"))
LINES: list[str] = []


def _load() -> dict[str, dict[str, object]]:
    try:
        return json.loads(STORE.read_text())
    except (OSError, ValueError):
        return {}


def load_avg() -> str:
    return "load avg " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def check(name: str, value: float, target: float, unit: str, *, higher_is_better: bool,
          margin: float = 1.0) -> bool:
    """Print ``name value (target ..., previous ...)``, store the value, return whether met.

    ``margin`` > 1 loosens the target (a minimum divided by it, a maximum multiplied by it).
    """
    value = float(value)
    limit = target / margin if higher_is_better else target * margin
    met = bool(value >= limit if higher_is_better else value <= limit)
    store = _load()
    previous = store.get(name, {}).get("value")
    sign = ">=" if higher_is_better else "<="
    was = f"{previous:.4g} {unit}" if isinstance(previous, (int, float)) else "none"
    loosened = f" (target {sign} {target:g} {unit} x{margin:g} margin)" if margin != 1.0 else ""
    line = (f"{name}: {value:.4g} {unit}  target {sign} {limit:.4g} {unit}{loosened}  "
            f"previous {was}  {'MET' if met else 'NOT MET'}  [{load_avg()}]")
    LINES.append(line)
    print("\n[perf] " + line, flush=True)
    store[name] = {"value": value, "target": limit, "unit": unit, "met": met,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        STORE.parent.mkdir(parents=True, exist_ok=True)
        STORE.write_text(json.dumps(store, indent=1, sort_keys=True))
    except OSError:
        pass
    return met


def margin() -> float:
    return float(os.environ.get("FMBENCH_PERF_MARGIN", "1"))
