"""Endpoints left by a crashed worker: found from its events file and torn down."""

from __future__ import annotations

import subprocess
import time

import pytest

from pytest_fmbench.endpoints.lifecycle import orphaned_deploys
from pytest_fmbench.endpoints.local import LocalEndpoint
from pytest_fmbench.endpoints.openai import OpenAIEndpoint
from tests.e2e_support import alive


def event(experiment: str, kind: str, ok: bool = True, ours: bool = True) -> dict:
    return {"experiment": experiment, "event": kind, "ok": ok, "deployed_by_us": ours,
            "start_ns": 0, "end_ns": 1, "endpoint": {"pid": 1}}


def test_only_deploys_without_a_later_teardown_are_orphans() -> None:
    events = [event("a", "deploy"), event("a", "teardown"), event("b", "deploy"),
              event("c", "deploy", ok=False), event("c", "teardown"),
              event("d", "deploy", ours=False)]
    assert [e["experiment"] for e in orphaned_deploys(events)] == ["b"]


@pytest.mark.parametrize("backend", [LocalEndpoint, OpenAIEndpoint])
def test_a_server_process_group_left_behind_is_stopped(backend: type) -> None:
    # Like a crashed worker's server: a session leader that is not our child.
    started = subprocess.run(["sh", "-c", "setsid sh -c 'sleep 300 & sleep 300' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    pid = int(started.stdout)
    time.sleep(0.2)
    assert alive(pid)
    backend.cleanup_orphan(None, None, None, {"pid": pid})
    assert not alive(pid)
    backend.cleanup_orphan(None, None, None, {"pid": pid})  # already gone: no error
    backend.cleanup_orphan(None, None, None, {})  # nothing logged: nothing to do
