"""One run per results directory.

A fixed ``--fmbench-results-dir`` is reused by every run (the README's CI recipe for
``--fmbench-compare=latest``). Records and endpoint events are appended, and the report
reads every ``records*.jsonl`` and ``endpoints*.jsonl`` it finds, so a second run would count
the first run's requests and re-run its orphan cleanups. At start, the controller moves
what an earlier run left into ``previous/<its run id>/``: the directory then holds this run
only, and the earlier run stays readable (``latest`` resolves to it). ``payloads/`` is a
cache shared by runs and stays; only the newest ``KEEP_PREVIOUS`` earlier runs are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

PREVIOUS_DIR = "previous"
PAYLOADS_DIR = "payloads"
RUN_FILE = "run.json"
KEEP_PREVIOUS = 3
# What marks a directory as one a run wrote into (anything else is left alone).
_RUN_MARKERS = ("run.json", "records*.jsonl", "endpoints*.jsonl", "benchmark.json", "report.md",
                "cases.jsonl")
_KEPT = frozenset({PREVIOUS_DIR, PAYLOADS_DIR})


def held_run(results_dir: Path) -> bool:
    """Whether an earlier run wrote into ``results_dir``."""
    return results_dir.is_dir() and any(
        next(results_dir.glob(marker), None) is not None for marker in _RUN_MARKERS)


def held_run_id(results_dir: Path) -> str:
    """The run id the directory's ``run.json`` names, else one made from the files' age."""
    try:
        run_id = json.loads((results_dir / RUN_FILE).read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        run_id = None
    if not isinstance(run_id, str):
        run_id = _first_record_run_id(results_dir)
    if isinstance(run_id, str) and run_id and Path(run_id).name == run_id:
        return run_id
    newest = max((p.stat().st_mtime for p in results_dir.iterdir()), default=0.0)
    return f"unknown-{int(newest)}"


def _first_record_run_id(results_dir: Path) -> str | None:
    """A run that crashed before writing ``run.json``: its records name it."""
    for path in sorted(results_dir.glob("records*.jsonl")):
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.loads(handle.readline()).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str):
            return value
    return None


def set_aside_previous_run(results_dir: Path, keep: int = KEEP_PREVIOUS) -> Path | None:
    """Move an earlier run's files to ``previous/<run id>/``; the new home, or None.

    Called on the controller before anything of this run is written, and before the
    baseline of ``--fmbench-compare`` is resolved (it then finds the moved run).
    """
    if not held_run(results_dir):
        return None
    target = results_dir / PREVIOUS_DIR / held_run_id(results_dir)
    if target.exists():  # the same run id set aside twice (a rerun of a restored dir)
        target = target.with_name(f"{target.name}-{len(list(target.parent.iterdir()))}")
    target.mkdir(parents=True)
    for entry in sorted(results_dir.iterdir()):
        if entry.name not in _KEPT:
            entry.rename(target / entry.name)
    _prune(results_dir / PREVIOUS_DIR, keep)
    return target


def previous_runs(results_dir: Path) -> list[Path]:
    """Earlier runs set aside in ``results_dir``, oldest first."""
    folder = results_dir / PREVIOUS_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def _prune(folder: Path, keep: int) -> None:
    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
