"""Where the run's log lines go: a file per process in ``logs/``, the terminal, the controller.

Every line is scrubbed of secrets (``pytest_fmbench.redaction``) before it goes anywhere.
The controller prints its lines; an xdist worker has no terminal, so it keeps its lines for
the controller (``roles.WorkerRole`` ships them on the test reports and in ``workeroutput``,
and the controller prints them). Each process also appends its lines to ``logs/fmbench[-<worker>].log``.

Server logs (``openai.deploy.command``) can quote secrets the server was given (vLLM logs its
non-default arguments, ``--api-key`` included). The raw log is written outside the results
directory, in a private temporary directory (mode 0700); when the server stops, a scrubbed
copy is published to ``logs/<experiment>-server.log`` and the raw log is removed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pytest_fmbench.redaction import scrub

LOGS_DIR = "logs"


class RunLog:
    """The ``log`` callable of one process's ``BenchmarkRun``."""

    def __init__(self, results_dir: Path, worker: str = "",
                 echo: Callable[[str], None] | None = None) -> None:
        self.path = results_dir / LOGS_DIR / (f"fmbench-{worker}.log" if worker else "fmbench.log")
        self.echo = echo
        # Lines waiting to be shipped to the controller (workers only: no echo).
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        line = scrub(str(message))
        with self._lock:
            self._append(line)
            if self.echo is None:
                self._pending.append(line)
        if self.echo is not None:
            self.echo(line)

    def _append(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {line}\n")
        except OSError:
            pass  # a log line must never fail the run; the terminal still gets it

    def take(self) -> list[str]:
        """The lines not yet shipped to the controller (and forget them)."""
        with self._lock:
            lines, self._pending = self._pending, []
        return lines


def private_log_path(run_id: str, name: str) -> Path:
    """A raw server log's place: outside the results dir, readable by this user only."""
    folder = Path(tempfile.gettempdir()) / f"fmbench-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    run_folder = folder / run_id
    run_folder.mkdir(mode=0o700, exist_ok=True)
    return run_folder / name


def publish_log(raw: Path, published: Path, *, remove_raw: bool = True) -> Path | None:
    """Copy ``raw`` to ``published`` line by line, scrubbed of secrets; None if no raw log."""
    if not raw.is_file():
        return None
    published.parent.mkdir(parents=True, exist_ok=True)
    with open(raw, encoding="utf-8", errors="replace") as source, \
            open(published, "a", encoding="utf-8") as target:
        target.writelines(scrub(line) for line in source)
    if remove_raw:
        raw.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            raw.parent.rmdir()  # the run's private folder, once its last log is published
    return published
