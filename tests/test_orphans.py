"""Endpoints left by a crashed worker: found from its events file and torn down."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pytest_fmbench.endpoints import process
from pytest_fmbench.endpoints.base import SupportsOrphanCleanup
from pytest_fmbench.endpoints.lifecycle import orphaned_deploys
from pytest_fmbench.endpoints.local import LocalEndpoint
from pytest_fmbench.endpoints.openai import OpenAIEndpoint
from pytest_fmbench.endpoints.sagemaker import SageMakerEndpoint
from tests.e2e_support import alive


def event(experiment: str, kind: str, ok: bool = True, ours: bool = True) -> dict:
    return {"experiment": experiment, "event": kind, "ok": ok, "deployed_by_us": ours,
            "start_ns": 0, "end_ns": 1, "endpoint": {"pid": 1}}


def test_only_deploys_without_a_later_successful_teardown_are_orphans() -> None:
    events = [event("a", "deploy"), event("a", "teardown"), event("b", "deploy"),
              event("c", "deploy", ok=False), event("c", "teardown"),
              event("d", "deploy", ours=False),
              event("e", "deploy"), event("e", "teardown", ok=False)]
    assert [e["experiment"] for e in orphaned_deploys(events)] == ["b", "e"]


def shell_server(cookie: str) -> int:
    """Like a crashed worker's ``sh -c 'server; true'``: a session leader that is not our
    child, whose real server is a grandchild carrying the cookie."""
    started = subprocess.run(
        ["sh", "-c", "setsid sh -c 'sleep 300; true' >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
        env={**os.environ, process.COOKIE_ENV: cookie})
    time.sleep(0.2)
    return int(started.stdout)


@pytest.mark.parametrize("backend", [LocalEndpoint, OpenAIEndpoint])
def test_a_server_process_group_left_behind_is_stopped(backend: type) -> None:
    assert isinstance(backend, SupportsOrphanCleanup)
    cookie = process.new_cookie()
    pid = shell_server(cookie)
    identity = process.identify(pid, cookie)
    members = process.processes_of(identity)
    assert pid in members and len(members) == 2  # the shell and its sleep
    backend.cleanup_orphan(None, None, None, {"process": identity.to_json()})
    assert not any(alive(p) for p in members)
    backend.cleanup_orphan(None, None, None, {"process": identity.to_json()})  # gone: no error
    backend.cleanup_orphan(None, None, None, {})  # nothing logged: nothing to do


def test_a_reused_pid_is_never_signalled() -> None:
    # A process with our pid but another start time and no cookie is someone else's.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        real = process.identify(stranger.pid, "cookie-of-a-server-long-gone")
        stale = process.ProcessIdentity(real.cookie, stranger.pid, (real.start_time or 0) - 1)
        assert process.processes_of(stale) == []
        assert process.reap(stale, timeout_s=0.5) == []
        assert stranger.poll() is None
        assert process.processes_of(real) == [stranger.pid]  # the matching start time
    finally:
        stranger.kill()
        stranger.wait()


def test_sagemaker_has_an_orphan_cleanup() -> None:
    assert isinstance(SageMakerEndpoint, SupportsOrphanCleanup)
