"""The run's journal of intent: what may exist, written before it is created.

Every deploy journals its plan (``SupportsReaping.reap_plan``: resource names, region and
control-plane URL, or a server's process cookie, pid and start time) *before* the first
create call, and journals the teardown once it succeeded. Each line goes to two places:

- ``journal[-<worker>].jsonl`` in the results dir (read by the controller's orphan cleanup
  and by ``python -m pytest_fmbench sweep --results-dir``), flushed per line;
- the run's reaper (``reaper.py``), over a loopback connection; every line is acknowledged
  before the caller goes on, so the reaper knows of a resource before it can exist.

Lines: ``intent`` (id, run_id, worker, experiment, plan), ``update`` (id, plan: pids known
after the spawn), ``torn_down`` (id). ``open_entries`` folds them into what is still live.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ACK_TIMEOUT_S = 10.0
Log = Callable[[str], None]


class ReaperClient:
    """One connection to the reaper; each message waits for its acknowledgement.

    Waiting for every acknowledgement matters twice: the reaper has the intent before the
    create goes out, and no unread data sits in our socket when we die (the kernel would
    reset the connection instead of closing it, and the reaper could lose lines).
    """

    def __init__(self, address: tuple[str, int], token: str, *, role: str, run_id: str,
                 worker: str = "") -> None:
        self.address = address
        self._sock = socket.create_connection(address, timeout=ACK_TIMEOUT_S)
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()
        self.send({"op": "hello", "token": token, "role": role, "run_id": run_id,
                   "worker": worker, "pid": os.getpid()})

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._sock.sendall(json.dumps(message, default=str).encode() + b"\n")
            reply = self._reader.readline()
            if not reply.startswith(b"ok"):
                raise OSError(f"the reaper refused {message.get('op')}: {reply!r}")

    def close(self) -> None:
        try:
            self._reader.close()
            self._sock.close()
        except OSError:
            pass


class Journal:
    """This process's journal: a file in the results dir plus the reaper connection."""

    def __init__(self, path: Path, *, run_id: str, worker: str = "",
                 connect: Callable[[], ReaperClient | None] | None = None,
                 log: Log = print) -> None:
        self.path = path
        self.run_id = run_id
        self.worker = worker
        self._connect = connect
        self._reaper: ReaperClient | None = None
        self._reaper_failed = False
        self._log = log
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, Any]] = {}

    # -- what backends and the lifecycle call ------------------------------------------
    def intent(self, experiment: str, plan: dict[str, Any]) -> str:
        """Journal a plan before it is carried out; returns the entry id."""
        entry_id = f"{self.run_id}/{self.worker or 'main'}/{experiment}/{secrets.token_hex(3)}"
        line = {"op": "intent", "id": entry_id, "run_id": self.run_id, "worker": self.worker,
                "experiment": experiment, "plan": plan, "time": time.time(),
                "pid": os.getpid()}
        self._open[entry_id] = line
        self._write(line)
        return entry_id

    def update(self, entry_id: str, plan: dict[str, Any]) -> None:
        if entry_id in self._open:
            self._open[entry_id]["plan"] = plan
        self._write({"op": "update", "id": entry_id, "plan": plan})

    def torn_down(self, entry_id: str) -> None:
        self._open.pop(entry_id, None)
        self._write({"op": "torn_down", "id": entry_id, "time": time.time()})

    def plan_of(self, entry_id: str) -> dict[str, Any] | None:
        entry = self._open.get(entry_id)
        return dict(entry["plan"]) if entry else None

    def connect_now(self) -> None:
        """Open the reaper connection before the first line (the controller's lifeline)."""
        with self._lock:
            self._reaper_connection()

    def close(self, *, done: bool = True) -> None:
        """``done``: a normal end; the reaper then reaps nothing of this process."""
        with self._lock:
            reaper, self._reaper = self._reaper, None
            self._connect = None
        if reaper is None:
            return
        try:
            if done:
                reaper.send({"op": "done"})
        except OSError:
            pass
        reaper.close()

    # -- plumbing ----------------------------------------------------------------------
    def _write(self, line: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, default=str) + "\n")
            reaper = self._reaper_connection()
            if reaper is None:
                return
            try:
                reaper.send(line)
            except OSError as exc:
                self._reaper, self._reaper_failed = None, True
                self._log(f"[fmbench] WARNING: the reaper is gone ({exc}); if this run is "
                          f"killed, run: python -m pytest_fmbench sweep --run-id {self.run_id}")

    def _reaper_connection(self) -> ReaperClient | None:
        if self._reaper is None and self._connect is not None and not self._reaper_failed:
            try:
                self._reaper = self._connect()
            except OSError as exc:
                self._reaper_failed = True
                self._log(f"[fmbench] WARNING: cannot reach the reaper ({exc}); leftovers of a "
                          f"killed run: python -m pytest_fmbench sweep --run-id {self.run_id}")
        return self._reaper


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (a process killed mid-write leaves a partial last line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines(keepends=True):
        if raw.endswith("\n") and raw.strip():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def open_entries(lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Intents not torn down, with their latest plan, in journal order."""
    entries: dict[str, dict[str, Any]] = {}
    done: set[str] = set()
    for line in lines:
        entry_id = line.get("id")
        if not isinstance(entry_id, str):
            continue
        if line.get("op") == "intent":
            entries[entry_id] = dict(line)
        elif line.get("op") == "update" and entry_id in entries:
            entries[entry_id]["plan"] = line.get("plan")
        elif line.get("op") == "torn_down":
            done.add(entry_id)  # may be in another file, read before the intent
    return [entry for entry_id, entry in entries.items() if entry_id not in done]


def journal_paths(results_dir: Path) -> list[Path]:
    return sorted(results_dir.glob("journal*.jsonl"))


def open_entries_in(results_dir: Path, worker: str | None = None) -> list[dict[str, Any]]:
    """Still-live entries of a results dir (torn-down lines of any file count: the
    controller and the reaper journal teardowns done on a dead worker's behalf)."""
    lines: list[dict[str, Any]] = []
    for path in journal_paths(results_dir):
        lines += read_journal(path)
    entries = open_entries(lines)
    return [e for e in entries if worker is None or e.get("worker") == worker]
