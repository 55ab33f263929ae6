"""Deploy each experiment's endpoint once, tear it down after its last case, always.

Teardown happens when the last expected case of the experiment is done, and in any case
when the session ends (failure, Ctrl-C, SIGTERM): ``teardown_all`` is idempotent. Only what
was deployed here is torn down. Deploy and teardown times are appended to a JSON-lines file
so cost can be computed from how long each endpoint existed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import Endpoint
from pytest_fmbench.errors import FmbenchError
from pytest_fmbench.redaction import redact, scrub

Factory = Callable[[str], Endpoint]
Warmup = Callable[[str, Endpoint], None]


class DeployFailed(Exception):
    """Raised for every case of an experiment whose endpoint could not be deployed."""


class EndpointManager:
    def __init__(self, factory: Factory, events_path: Path, *, warmup: Warmup | None = None,
                 log: Callable[[str], None] = print) -> None:
        self._factory = factory
        self._events_path = events_path
        self._warmup = warmup
        self._log = log
        self._live: dict[str, Endpoint] = {}
        self._failed: dict[str, str] = {}
        # What each endpoint said of itself when deployed (teardown clears live state).
        self._described: dict[str, dict[str, Any]] = {}
        # Whether deploy created something (read before teardown resets the endpoint).
        self._ours: dict[str, bool] = {}
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
        with self._lock:
            endpoint = self._live.pop(experiment, None)
        if endpoint is None:
            return
        start = now_ns()
        error = ""
        try:
            endpoint.teardown()
        except Exception as exc:  # noqa: BLE001 - keep tearing down the others
            error = f"{type(exc).__name__}: {exc}"
            self._log(f"[fmbench] teardown of '{experiment}' failed: {error}")
        self._event(experiment, "teardown", start, error, endpoint)

    def teardown_all(self) -> None:
        for experiment in list(self._live):
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
            # Registered before deploy returns, so a Ctrl-C mid-deploy still tears down.
            self._live[experiment] = endpoint
            endpoint.deploy()
            if self._warmup is not None:
                self._warmup(experiment, endpoint)
        except (FmbenchError, Exception) as exc:
            message = exc.render() if isinstance(exc, FmbenchError) else f"{type(exc).__name__}: {exc}"
            message = scrub(message)  # it may quote the server log's tail or a URL
            self._failed[experiment] = f"deploying '{experiment}' failed: {message}"
            self._event(experiment, "deploy", start, message, endpoint)
            self.teardown(experiment)
            raise DeployFailed(self._failed[experiment]) from exc
        self._event(experiment, "deploy", start, "", endpoint)
        return endpoint

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
    """Deploys of one process's events file that no teardown followed (a crashed worker)."""
    last: dict[str, dict[str, Any]] = {}
    for event in events:
        last[event["experiment"]] = event
    return [e for e in last.values()
            if e["event"] == "deploy" and e["ok"] and e.get("deployed_by_us")]


def record_teardown(events_path: Path, experiment: str, start: int, error: str,
                    endpoint: dict[str, Any]) -> None:
    """A teardown done on another process's behalf (so cost sees when the endpoint ended)."""
    row = {"experiment": experiment, "event": "teardown", "start_ns": start, "end_ns": now_ns(),
           "ok": not error, "error": error, "deployed_by_us": True, "endpoint": endpoint,
           "orphan": True}
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with open(events_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(redact(row), default=str) + "\n")
