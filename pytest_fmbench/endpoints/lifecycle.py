"""Deploy each experiment's endpoint once, tear it down after its last case, always.

Teardown happens when the last expected case of the experiment is done, and in any case
when the session ends (failure, Ctrl-C, SIGTERM): ``teardown_all`` is idempotent. Only what
was deployed here is torn down. Each deploy is journaled before it creates anything
(``pytest_fmbench.safety.journal``), so the reaper can delete it if this process dies; an
endpoint stays live until its teardown succeeded (retried to a deadline), and one that never
does is kept in ``left_running`` for the run to report. Deploy and teardown times are appended to a JSON-lines file
so cost can be computed from how long each endpoint existed.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import Endpoint, SupportsReaping
from pytest_fmbench.errors import FmbenchError
from pytest_fmbench.redaction import redact, scrub
from pytest_fmbench.safety.journal import Journal

Factory = Callable[[str], Endpoint]
Warmup = Callable[[str, Endpoint], None]


class DeployFailed(Exception):
    """Raised for every case of an experiment whose endpoint could not be deployed."""


@dataclasses.dataclass
class LeftRunning:
    """An endpoint whose teardown failed until its deadline: it may still be billing."""

    experiment: str
    error: str
    description: dict[str, Any]
    plan: dict[str, Any] | None


class EndpointManager:
    """Deploys on first use, tears down after the last case; journals both (``journal``).

    An endpoint stays live until its teardown succeeded: a failed teardown is retried with
    back-off until ``teardown_deadline_s``, and what still fails is kept in ``left_running``
    (the run then fails and names it, with the command that deletes it).
    """

    def __init__(self, factory: Factory, events_path: Path, *, warmup: Warmup | None = None,
                 log: Callable[[str], None] = print, journal: Journal | None = None,
                 teardown_deadline_s: float = 600.0, retry_backoff_s: float = 2.0) -> None:
        self._factory = factory
        self._events_path = events_path
        self._warmup = warmup
        self._log = log
        self._journal = journal
        self._teardown_deadline_s = teardown_deadline_s
        self._retry_backoff_s = retry_backoff_s
        self._live: dict[str, Endpoint] = {}
        self._failed: dict[str, str] = {}
        # What each endpoint said of itself when deployed (teardown clears live state).
        self._described: dict[str, dict[str, Any]] = {}
        # Whether deploy created something (read before teardown resets the endpoint).
        self._ours: dict[str, bool] = {}
        self._entries: dict[str, str] = {}  # experiment -> journal entry id
        self.left_running: dict[str, LeftRunning] = {}
        self._lock = threading.RLock()

    def acquire(self, experiment: str) -> Endpoint:
        with self._lock:
            if experiment in self._failed:
                raise DeployFailed(self._failed[experiment])
            endpoint = self._live.get(experiment)
            if endpoint is None:
                endpoint = self._deploy(experiment)
            return endpoint

    def teardown(self, experiment: str) -> None:
        """Tear down with retries; the endpoint leaves the live set only on success."""
        with self._lock:
            endpoint = self._live.get(experiment)
        if endpoint is None:
            return
        start = now_ns()
        deadline = time.monotonic() + self._teardown_deadline_s
        backoff = self._retry_backoff_s
        while True:
            try:
                endpoint.teardown()
            except Exception as exc:  # noqa: BLE001 - retried, then reported
                error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() + backoff > deadline:
                    self._give_up(experiment, endpoint, start, error)
                    return
                self._log(f"[fmbench] teardown of '{experiment}' failed: {error}; "
                          f"retrying in {backoff:.0f} s")
                time.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            except BaseException:
                # Ctrl-C / SIGTERM mid-teardown: record it, keep the endpoint live (the
                # session-end teardown tries again), and let the interrupt through.
                self._event(experiment, "teardown", start, "interrupted", endpoint)
                raise
            break
        with self._lock:
            self._live.pop(experiment, None)
            self.left_running.pop(experiment, None)
        self._event(experiment, "teardown", start, "", endpoint)
        entry = self._entries.pop(experiment, None)
        if entry is not None and self._journal is not None:
            self._journal.torn_down(entry)

    def _give_up(self, experiment: str, endpoint: Endpoint, start: int, error: str) -> None:
        self._log(f"[fmbench] ENDPOINT STILL RUNNING: teardown of '{experiment}' failed until "
                  f"its deadline: {error}")
        entry = self._entries.get(experiment)
        plan = self._journal.plan_of(entry) if self._journal is not None and entry else None
        self.left_running[experiment] = LeftRunning(
            experiment, error, dict(self._described.get(experiment, {})), plan)
        self._event(experiment, "teardown", start, error, endpoint)

    def teardown_all(self) -> None:
        """Every live endpoint not already given up on (those are reported, not retried)."""
        for experiment in list(self._live):
            if experiment not in self.left_running:
                self.teardown(experiment)

    @property
    def live(self) -> list[str]:
        return list(self._live)

    def _deploy(self, experiment: str) -> Endpoint:
        start = now_ns()
        endpoint: Endpoint | None = None
        try:
            endpoint = self._factory(experiment)
            self._log(f"[fmbench] deploying endpoint of '{experiment}'")
            self._journal_intent(experiment, endpoint)
            # Registered before deploy returns, so a Ctrl-C mid-deploy still tears down.
            self._live[experiment] = endpoint
            endpoint.deploy()
            self._journal_update(experiment, endpoint)
            if self._warmup is not None:
                self._warmup(experiment, endpoint)
        except (FmbenchError, Exception) as exc:
            message = exc.render() if isinstance(exc, FmbenchError) else f"{type(exc).__name__}: {exc}"
            message = scrub(message)  # it may quote the server log's tail or a URL
            self._failed[experiment] = f"deploying '{experiment}' failed: {message}"
            self._event(experiment, "deploy", start, message, endpoint)
            self.teardown(experiment)
            raise DeployFailed(self._failed[experiment]) from exc
        except BaseException:
            # Ctrl-C mid-deploy: the endpoint stays live, so the session-end teardown runs.
            self._event(experiment, "deploy", start, "interrupted", endpoint)
            raise
        self._event(experiment, "deploy", start, "", endpoint)
        return endpoint

    def _journal_intent(self, experiment: str, endpoint: Endpoint) -> None:
        """Before anything is created: what the reaper deletes if this process dies."""
        if self._journal is None or not isinstance(endpoint, SupportsReaping):
            return
        plan = endpoint.reap_plan()
        if plan is not None:
            self._entries[experiment] = self._journal.intent(experiment, plan)

    def _journal_update(self, experiment: str, endpoint: Endpoint) -> None:
        entry = self._entries.get(experiment)
        if entry is None or self._journal is None or not isinstance(endpoint, SupportsReaping):
            return
        plan = endpoint.reap_plan()
        if plan is not None:
            self._journal.update(entry, plan)

    def _event(self, experiment: str, event: str, start: int, error: str,
               endpoint: Endpoint | None) -> None:
        if event == "deploy" and endpoint is not None:
            self._ours[experiment] = bool(endpoint.deployed_by_us)
        row: dict[str, Any] = {
            "experiment": experiment, "event": event, "start_ns": start, "end_ns": now_ns(),
            "ok": not error, "error": error,
            "deployed_by_us": self._ours.get(experiment, False),
        }
        if endpoint is not None and experiment not in self._described:
            try:
                self._described[experiment] = endpoint.describe()
            except Exception:  # noqa: BLE001 - describing must never break lifecycle
                self._described[experiment] = {}
        row["endpoint"] = self._described.get(experiment, {})
        self._events_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._events_path, "a", encoding="utf-8") as handle:
            # Descriptions and error texts (a log tail, a URL) may quote a secret.
            handle.write(json.dumps(redact(row), default=str) + "\n")


def read_endpoint_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.endswith("\n")]


def orphaned_deploys(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deploys of one process's events file that no successful teardown followed (a crashed
    worker, or a teardown that failed): the last deploy event of each such experiment."""
    last: dict[str, dict[str, Any]] = {}
    deploys: dict[str, dict[str, Any]] = {}
    for event in events:
        last[event["experiment"]] = event
        if event["event"] == "deploy":
            deploys[event["experiment"]] = event
    orphans = []
    for experiment, event in last.items():
        finished = event["event"] == "teardown" and event["ok"]
        deploy = deploys.get(experiment)
        if finished or deploy is None or not event.get("deployed_by_us"):
            continue
        if event["event"] == "deploy" and not event["ok"]:
            continue  # a failed deploy whose cleanup never logged: the journal covers it
        orphans.append(deploy)
    return orphans


def record_teardown(events_path: Path, experiment: str, start: int, error: str,
                    endpoint: dict[str, Any]) -> None:
    """A teardown done on another process's behalf (so cost sees when the endpoint ended)."""
    row = {"experiment": experiment, "event": "teardown", "start_ns": start, "end_ns": now_ns(),
           "ok": not error, "error": error, "deployed_by_us": True, "endpoint": endpoint,
           "orphan": True}
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with open(events_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(redact(row), default=str) + "\n")
