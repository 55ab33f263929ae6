"""``cases.jsonl``: which cases a run was to measure, and which it measured to the end.

The controller appends one ``plan`` line once the cases are selected (the cases expected
without ``--fmbench-shard``, this shard's selection, the shard, the run id, the host, the
config file) and one ``done`` line as each case's test finishes. Appended as they happen, so
a run that crashed still says what it completed; a later ``plan`` line (an xdist shard
learns the expected list from its workers at the end) replaces an earlier one.

``python -m pytest_fmbench report DIR`` and ``merge DIR...`` read it: a case expected by any
shard and done by none is reported missing and fails the verdict, exactly as in a run.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

LEDGER_FILE = "cases.jsonl"


def case_label(nodeid: str) -> str:
    """A test's node id without its file: ``test_bench.py::test_b[alpha-p-c1]`` →
    ``test_b[alpha-p-c1]`` (what the report names; the same in every shard's checkout)."""
    return nodeid.split("::", 1)[-1]


@dataclasses.dataclass
class CasePlan:
    """What one results dir's ledger says."""

    expected: list[str] = dataclasses.field(default_factory=list)
    selected: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    done: list[str] = dataclasses.field(default_factory=list)
    shard: str = ""
    run_id: str = ""
    host: str = ""
    config: str | None = None

    @property
    def missing(self) -> list[str]:
        done, skipped = set(self.done), set(self.skipped)
        return [case for case in self.expected if case not in done and case not in skipped]


class CaseLedger:
    """The controller's appender; a write that fails never fails a case (it is logged)."""

    def __init__(self, results_dir: Path) -> None:
        self.path = results_dir / LEDGER_FILE
        self._lock = threading.Lock()

    def _append(self, line: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")

    def plan(self, *, expected: Sequence[str], selected: Sequence[str], skipped: Iterable[str],
             shard: str, run_id: str, host: str, config: str | None) -> None:
        self._append({"kind": "plan", "expected": list(expected), "selected": list(selected),
                      "skipped": sorted(set(skipped)), "shard": shard, "run_id": run_id,
                      "host": host, "config": config})

    def done(self, case: str) -> None:
        self._append({"kind": "done", "case": case})


def read_case_plan(results_dir: Path) -> CasePlan | None:
    """The ledger of ``results_dir``; None without one (a run older than the ledger)."""
    path = results_dir / LEDGER_FILE
    if not path.is_file():
        return None
    plan = CasePlan()
    seen_plan = False
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            if not raw.endswith("\n"):
                break  # torn by a crash
            line = json.loads(raw)
            if line.get("kind") == "plan":
                seen_plan = True
                done = plan.done
                plan = CasePlan(expected=list(line.get("expected") or []),
                                selected=list(line.get("selected") or []),
                                skipped=list(line.get("skipped") or []), done=done,
                                shard=str(line.get("shard") or ""),
                                run_id=str(line.get("run_id") or ""),
                                host=str(line.get("host") or ""), config=line.get("config"))
            elif line.get("kind") == "done":
                plan.done.append(str(line["case"]))
    return plan if seen_plan else None
