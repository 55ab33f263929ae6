"""Live progress: what a deploy and a case are doing while they run.

A deploy shows its status, elapsed time and estimated cost so far; a case shows requests
done/total, in flight, rate, errors, elapsed time and ETA. On a terminal one line is redrawn
in place; elsewhere (CI logs) a plain line is printed every ``interval`` per running phase.

Three parts, none of which touches the load loop beyond counting:

- ``Tracker``: one process's current phase. The load's ``emit`` increments two integers per
  request (``CaseCounter``); in-flight is read from the dispatcher's own counter when a
  snapshot is taken. Nothing is formatted or written per request.
- ``SnapshotFile``: an xdist worker's tracker, written to ``progress/<worker>.json`` in the
  results dir every second (atomically), because a worker's log lines reach the controller
  only after a test phase ends, and a deploy takes minutes.
- ``Display``: on the controller, a thread that samples the sources (its own tracker and
  the workers' files) every ``interval`` and writes the lines.

pytest-free: ``roles.py`` wires it to the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

PROGRESS_DIR = "progress"
# Environment: off | tty | lines | auto (default: tty on a terminal, lines elsewhere), and the
# seconds between updates (default 1 on a terminal, 15 in CI logs).
MODE_ENV = "FMBENCH_PROGRESS"
INTERVAL_ENV = "FMBENCH_PROGRESS_INTERVAL"
TTY_INTERVAL_S = 1.0
LINES_INTERVAL_S = 15.0
# How often a worker refreshes its snapshot file.
SNAPSHOT_INTERVAL_S = 1.0

Mode = Literal["off", "tty", "lines"]


class CaseCounter:
    """Requests of the running case: incremented once per finished request, nothing more."""

    __slots__ = ("done", "errors", "in_flight")

    def __init__(self) -> None:
        self.done = 0
        self.errors = 0
        # Reads the dispatcher's own in-flight count when sampled (None: unknown, e.g. the
        # load spread over processes).
        self.in_flight: Callable[[], int] | None = None

    def watch(self, in_flight: Callable[[], int]) -> None:
        self.in_flight = in_flight

    def count(self, failed: bool) -> None:
        self.done += 1
        if failed:
            self.errors += 1


@dataclasses.dataclass
class Phase:
    """What one process is doing: a deploy or a case."""

    kind: Literal["deploy", "case"]
    label: str
    started: float  # wall clock, so the controller can age a worker's phase
    status: str = ""
    price_per_hour: float | None = None
    total: int | None = None
    duration_s: float | None = None
    counter: CaseCounter | None = None

    def snapshot(self, worker: str) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": worker, "kind": self.kind, "label": self.label,
                               "started": self.started}
        if self.kind == "deploy":
            out.update(status=self.status, price_per_hour=self.price_per_hour)
        elif self.counter is not None:
            probe = self.counter.in_flight
            out.update(total=self.total, duration_s=self.duration_s, done=self.counter.done,
                       errors=self.counter.errors, in_flight=probe() if probe else None)
        return out


class Tracker:
    """One process's current phase, read by another thread (a display or a snapshot file)."""

    def __init__(self, worker: str = "", clock: Callable[[], float] = time.time) -> None:
        self.worker = worker
        self.clock = clock
        self.phase: Phase | None = None
        # The hourly price of an experiment, for the cost of a deploy so far (set once the
        # selected experiments are priced).
        self.price_of: Callable[[str], float | None] = lambda experiment: None
        # Called when a phase ends, so a line drawn in place is cleared before other output.
        self.on_end: Callable[[], None] = lambda: None

    @contextlib.contextmanager
    def deploying(self, experiment: str) -> Iterator[None]:
        self.phase = Phase("deploy", experiment, self.clock(),
                           price_per_hour=self.price_of(experiment))
        try:
            yield
        finally:
            self._end()

    def note(self, line: str) -> None:
        """A backend's log line during a deploy becomes its status (``endpoint is Creating``)."""
        phase = self.phase
        if phase is not None and phase.kind == "deploy":
            text = line.removeprefix("[fmbench] ").strip()
            phase.status = text.removeprefix(f"{phase.label}: ")

    @contextlib.contextmanager
    def case(self, case_id: str, total: int | None, duration_s: float | None) -> Iterator[CaseCounter]:
        counter = CaseCounter()
        self.phase = Phase("case", case_id, self.clock(), total=total, duration_s=duration_s,
                           counter=counter)
        try:
            yield counter
        finally:
            self._end()

    def _end(self) -> None:
        self.phase = None
        self.on_end()

    def snapshot(self) -> dict[str, Any] | None:
        phase = self.phase
        return phase.snapshot(self.worker) if phase is not None else None


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe(snapshot: dict[str, Any], now: float) -> str:
    """One phase as one line."""
    prefix = f"[{snapshot['worker']}] " if snapshot.get("worker") else ""
    elapsed = max(0.0, now - float(snapshot["started"]))
    label = snapshot["label"]
    if snapshot["kind"] == "deploy":
        head = f"deploying '{label}'" + (f": {snapshot['status']}" if snapshot.get("status") else "")
        parts = [head, f"{_duration(elapsed)} elapsed"]
        price = snapshot.get("price_per_hour")
        if isinstance(price, (int, float)) and not math.isnan(price):
            parts.append(f"~{price * elapsed / 3600:.4f} USD so far")
        return f"{prefix}[fmbench] " + ", ".join(parts)
    done, errors, total = int(snapshot.get("done") or 0), int(snapshot.get("errors") or 0), snapshot.get("total")
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{done}/{total} requests" if total else f"{done} requests"]
    if snapshot.get("in_flight") is not None:
        parts.append(f"{snapshot['in_flight']} in flight")
    parts += [f"{rate:.1f} req/s", f"{errors} error{'s' if errors != 1 else ''}",
              f"{_duration(elapsed)} elapsed"]
    eta: float | None = None
    if total and rate > 0:
        eta = (int(total) - done) / rate
    elif snapshot.get("duration_s"):
        eta = float(snapshot["duration_s"]) - elapsed
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    return f"{prefix}[fmbench] {label}: " + ", ".join(parts)


class SnapshotFile:
    """An xdist worker's phase in ``<results>/progress/<worker>.json``, refreshed every second."""

    def __init__(self, tracker: Tracker, directory: Path, interval_s: float = SNAPSHOT_INTERVAL_S) -> None:
        self.tracker = tracker
        self.path = directory / f"{tracker.worker or 'main'}.json"
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fmbench-progress-file")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def write(self) -> None:
        snapshot = self.tracker.snapshot()
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(snapshot), encoding="utf-8")
            temporary.replace(self.path)
        except OSError:
            pass  # progress must never fail a run

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()


def read_snapshots(directory: Path) -> list[dict[str, Any]]:
    """The workers' current phases (none for an idle worker or an unreadable file)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            snapshot = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(snapshot, dict):
            found.append(snapshot)
    return found


class Display:
    """Draws the phases of every source, in place on a terminal or as periodic lines."""

    def __init__(self, write: Callable[[str], None], mode: Mode, interval_s: float,
                 sources: Callable[[], list[dict[str, Any]]], *,
                 clock: Callable[[], float] = time.time, width: Callable[[], int] = lambda: 120) -> None:
        self.write = write
        self.mode = mode
        self.interval_s = interval_s
        self.sources = sources
        self.clock = clock
        self.width = width
        self._lock = threading.Lock()
        self._shown = False  # a line drawn in place is on the terminal
        self._hold_until = 0.0
        self._printed: dict[tuple[str, str, float], float] = {}  # lines mode: phase → last print
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.mode == "off":
            return
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fmbench-progress")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001, S110 - progress must never fail a run
                pass

    def tick(self) -> None:
        if self.mode == "tty":
            self._draw()
        elif self.mode == "lines":
            self._print(self.sources(), self.clock())

    def _draw(self) -> None:
        # Sampled under the lock: a phase that ends meanwhile clears after this draw, never
        # before it (a stale line would be left for the next output to be appended to).
        with self._lock:
            now = self.clock()
            if now < self._hold_until:
                return
            snapshots = self.sources()
            if not snapshots:
                self._clear()
                return
            line = " | ".join(describe(s, now) for s in snapshots)
            width = max(20, self.width() - 1)
            if len(line) > width:
                line = line[:width - 1] + "…"
            # A fresh line first: pytest's own output may be mid-line.
            self.write(("\r" if self._shown else "\n") + line + "\x1b[K")
            self._shown = True

    def _print(self, snapshots: list[dict[str, Any]], now: float) -> None:
        """A line per phase once it has run ``interval`` and every ``interval`` after that."""
        current = set()
        for snapshot in snapshots:
            key = (str(snapshot.get("worker", "")), str(snapshot["label"]), float(snapshot["started"]))
            current.add(key)
            last = self._printed.get(key, key[2])
            if now - last >= self.interval_s * 0.999:
                with self._lock:
                    self.write(describe(snapshot, now) + "\n")
                self._printed[key] = now
        for key in list(self._printed):
            if key not in current:
                del self._printed[key]

    def clear(self, hold: bool = False) -> None:
        """Remove a line drawn in place (when a phase ends, and before other output: then
        ``hold`` keeps it off for one interval, so that output is not appended to it)."""
        with self._lock:
            self._clear()
            if hold:
                self._hold_until = self.clock() + self.interval_s

    def _clear(self) -> None:
        if self._shown:
            self.write("\r\x1b[K")
            self._shown = False


def choose_mode(quiet: bool, isatty: bool, environ: dict[str, str] | os._Environ[str] = os.environ) -> Mode:
    """``-q`` or FMBENCH_PROGRESS=off: nothing; otherwise in place on a terminal, else lines."""
    wanted = environ.get(MODE_ENV, "auto").strip().lower()
    if quiet or wanted == "off":
        return "off"
    if wanted in ("tty", "lines"):
        return wanted  # type: ignore[return-value]
    return "tty" if isatty else "lines"


def choose_interval(mode: Mode, environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    raw = environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        value = 0.0
    if value > 0:
        return value
    return TTY_INTERVAL_S if mode == "tty" else LINES_INTERVAL_S


def fd_writer(fd: int) -> Callable[[str], None]:
    """Writes straight to a file descriptor duplicated before pytest captures a test's output,
    so progress reaches the terminal while a case runs (pytest redirects fd 1 then)."""
    def write(text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, text.encode("utf-8", "replace"))

    return write
