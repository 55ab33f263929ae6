"""One process's safety net: its journal, and its connection to the run's reaper.

The controller owns the reaper: it starts it before the first deploy (``ensure_reaper``: at
the first journaled intent, or when xdist configures the first worker) and tells it ``done``
at a normal end. A worker connects to the controller's reaper with the address and token it
got through ``workerinput``. Plain Python, no pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench.safety.journal import Journal, ReaperClient
from pytest_fmbench.safety.reaper import ReaperHandle, start_reaper

Log = Callable[[str], None]
DISABLE_ENV = "FMBENCH_NO_REAPER"  # "1": journal only (e.g. where no process may outlive pytest)


class SafetyNet:
    def __init__(self, run_id: str, results_dir: Path, *, worker: str = "",
                 reaper_address: tuple[str, int] | None = None, reaper_token: str = "",
                 enabled: bool = True, log: Log = print) -> None:
        self.run_id = run_id
        self.results_dir = results_dir
        self.worker = worker
        self.enabled = enabled
        self._log = log
        self._address = reaper_address
        self._token = reaper_token
        self.handle: ReaperHandle | None = None
        suffix = f"-{worker}" if worker else ""
        self.journal = Journal(results_dir / f"journal{suffix}.jsonl", run_id=run_id,
                               worker=worker, connect=self._connect if enabled else None, log=log)

    @property
    def is_controller(self) -> bool:
        return not self.worker

    def ensure_reaper(self, *, connect: bool = True) -> tuple[tuple[str, int], str] | None:
        """Controller: start the reaper once; (address, token) for workers, None if off."""
        if not self.enabled:
            return None
        if self._address is None and self.is_controller:
            try:
                self.handle = start_reaper(self.run_id, self.results_dir)
            except OSError as exc:
                self.enabled = False
                self._log(f"[fmbench] WARNING: the reaper did not start ({exc}); if this run is "
                          f"killed, run: python -m pytest_fmbench sweep --run-id {self.run_id}")
                return None
            self._address, self._token = self.handle.address, self.handle.token
            if connect:
                # The controller holds its own connection from now on: its loss means the
                # run died.
                self.journal.connect_now()
        if self._address is None:
            return None
        return self._address, self._token

    def _connect(self) -> ReaperClient | None:
        if self._address is None and self.is_controller:
            self.ensure_reaper(connect=False)  # called by the journal, which then connects
        if self._address is None:
            return None
        return ReaperClient(self._address, self._token, run_id=self.run_id, worker=self.worker,
                            role="controller" if self.is_controller else "worker")

    def workerinput(self) -> dict[str, Any]:
        """What a worker needs to reach the reaper (xdist ``workerinput``)."""
        started = self.ensure_reaper()
        if started is None:
            return {}
        (host, port), token = started
        return {"fmbench_reaper": f"{host}:{port}", "fmbench_reaper_token": token}

    @staticmethod
    def address_from(workerinput: dict[str, Any]) -> tuple[tuple[str, int] | None, str]:
        raw = str(workerinput.get("fmbench_reaper") or "")
        if not raw:
            return None, ""
        host, _, port = raw.rpartition(":")
        return (host, int(port)), str(workerinput.get("fmbench_reaper_token") or "")

    def close(self, *, done: bool = True) -> None:
        """A normal end: the reaper reaps nothing of this process (and exits when all left)."""
        self.journal.close(done=done)
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.process.wait(timeout=5.0)  # no zombie while pytest runs on
            except Exception:  # noqa: BLE001, S110 - still reaping a dead worker's endpoint
                pass
