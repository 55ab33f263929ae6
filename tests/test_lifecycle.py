"""Unit tests of pytest_fmbench.endpoints.lifecycle: deploy once, tear down always."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.endpoints.base import Endpoint, EndpointClient
from pytest_fmbench.endpoints.lifecycle import DeployFailed, EndpointManager, read_endpoint_events
from pytest_fmbench.errors import EndpointError


class FakeEndpoint:
    def __init__(self, name: str, journal: list[tuple[str, str]], *, fail_deploy: bool = False,
                 fail_teardown: bool = False, byo: bool = False, fail_teardowns: int = 0,
                 interrupt_teardown: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail_deploy = fail_deploy
        self.fail_teardown = fail_teardown
        self.byo = byo
        self.fail_teardowns = fail_teardowns  # fail this many times, then succeed
        self.interrupt_teardown = interrupt_teardown
        self._created = False

    @property
    def deployed_by_us(self) -> bool:
        return self._created

    def deploy(self) -> None:
        self.journal.append(("deploy", self.name))
        if not self.byo:
            self._created = True  # created something before failing, like a real backend
        time.sleep(0.001)
        if self.fail_deploy:
            raise EndpointError("server did not become healthy", key="local",
                                fix="look at the server log")

    def teardown(self) -> None:
        self.journal.append(("teardown", self.name))
        if self.interrupt_teardown:
            self.interrupt_teardown = False
            raise KeyboardInterrupt
        if self.fail_teardown:
            raise RuntimeError("delete failed")
        if self.fail_teardowns:
            self.fail_teardowns -= 1
            raise RuntimeError("ThrottlingException: Rate exceeded (DeleteEndpoint)")
        self._created = False

    def client(self) -> EndpointClient:  # pragma: no cover - not used here
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"url": f"http://127.0.0.1/{self.name}"}

    def reap_plan(self) -> dict[str, Any] | None:
        return None if self.byo else {"kind": "process", "process": {"cookie": self.name}}


class Harness:
    def __init__(self, tmp_path: Path, **per_name: dict[str, Any]) -> None:
        self.journal: list[tuple[str, str]] = []
        self.created: list[str] = []
        self.warmed: list[str] = []
        self.logs: list[str] = []
        self.per_name = per_name
        self.events_path = tmp_path / "endpoints.jsonl"
        self.manager = EndpointManager(self.factory, self.events_path, warmup=self.warmup,
                                       log=self.logs.append, teardown_deadline_s=0.2,
                                       retry_backoff_s=0.01)

    def factory(self, name: str) -> Endpoint:
        self.created.append(name)
        options = dict(self.per_name.get(name.replace("-", "_"), {}))
        if options.pop("fail_factory", False):
            raise RuntimeError("bad settings")
        return FakeEndpoint(name, self.journal, **options)

    def warmup(self, name: str, endpoint: Endpoint) -> None:
        assert ("deploy", name) in self.journal
        self.warmed.append(name)

    def events(self) -> list[dict[str, Any]]:
        return read_endpoint_events(self.events_path)


def test_deploys_once_per_experiment_until_torn_down(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = h.manager.acquire("a")
    assert h.manager.acquire("a") is first
    assert h.manager.acquire("a") is first
    assert h.manager.live == ["a"]
    h.manager.teardown("a")  # after the last case of 'a'
    assert h.manager.live == []
    h.manager.acquire("b")
    h.manager.teardown("b")
    assert h.created == ["a", "b"]
    assert h.warmed == ["a", "b"]
    assert h.journal == [("deploy", "a"), ("teardown", "a"), ("deploy", "b"), ("teardown", "b")]


def test_teardown_of_what_is_not_live_does_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.manager.acquire("a")
    h.manager.teardown("b")
    assert h.manager.live == ["a"]
    h.manager.teardown("a")
    h.manager.teardown("a")
    assert h.journal == [("deploy", "a"), ("teardown", "a")]


def test_teardown_all_is_idempotent(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for name in ("a", "b"):
        h.manager.acquire(name)
    h.manager.teardown_all()
    h.manager.teardown_all()
    h.manager.teardown("a")
    assert sorted(e for e in h.journal if e[0] == "teardown") == [
        ("teardown", "a"), ("teardown", "b")]
    assert [e["event"] for e in h.events()].count("teardown") == 2


def test_concurrent_acquire_deploys_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    got: list[Endpoint] = []
    threads = [threading.Thread(target=lambda: got.append(h.manager.acquire("a")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert h.created == ["a"]
    assert len({id(e) for e in got}) == 1


def test_failing_deploy_tears_down_and_never_redeploys(tmp_path: Path) -> None:
    h = Harness(tmp_path, bad={"fail_deploy": True})
    with pytest.raises(DeployFailed) as info:
        h.manager.acquire("bad")
    message = str(info.value)
    assert "deploying 'bad' failed" in message
    assert "server did not become healthy" in message and "fix: look at the server log" in message
    assert h.journal == [("deploy", "bad"), ("teardown", "bad")]
    assert h.manager.live == []

    for _ in range(3):
        with pytest.raises(DeployFailed, match="deploying 'bad' failed"):
            h.manager.acquire("bad")
    assert h.created == ["bad"]
    assert h.journal == [("deploy", "bad"), ("teardown", "bad")]
    assert h.warmed == []

    # Other experiments are unaffected.
    h.manager.acquire("good")
    assert h.manager.live == ["good"]

    events = h.events()
    assert [(e["experiment"], e["event"], e["ok"]) for e in events] == [
        ("bad", "deploy", False), ("bad", "teardown", True), ("good", "deploy", True)]
    assert "server did not become healthy" in events[0]["error"]


def test_failing_factory_creates_nothing_to_tear_down(tmp_path: Path) -> None:
    h = Harness(tmp_path, bad={"fail_factory": True})
    with pytest.raises(DeployFailed, match="RuntimeError: bad settings"):
        h.manager.acquire("bad")
    with pytest.raises(DeployFailed):
        h.manager.acquire("bad")
    assert h.created == ["bad"]
    assert h.journal == []
    events = h.events()
    assert [(e["event"], e["ok"], e["deployed_by_us"]) for e in events] == [
        ("deploy", False, False)]


def test_failing_warmup_counts_as_failed_deploy(tmp_path: Path) -> None:
    h = Harness(tmp_path)

    def warmup(name: str, endpoint: Endpoint) -> None:
        raise ConnectionError("first request failed")

    manager = EndpointManager(h.factory, h.events_path, warmup=warmup, log=h.logs.append)
    with pytest.raises(DeployFailed, match="first request failed"):
        manager.acquire("a")
    assert h.journal == [("deploy", "a"), ("teardown", "a")]
    assert manager.live == []


def test_events_file_rows(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.manager.acquire("a")
    h.manager.teardown("a")
    deploy, teardown = h.events()
    for row, event in ((deploy, "deploy"), (teardown, "teardown")):
        assert row["experiment"] == "a"
        assert row["event"] == event
        assert row["ok"] is True and row["error"] == ""
        assert isinstance(row["start_ns"], int) and isinstance(row["end_ns"], int)
        assert row["start_ns"] <= row["end_ns"]
        assert row["endpoint"] == {"url": "http://127.0.0.1/a"}
    assert deploy["deployed_by_us"] is True
    # Deploy includes the 1 ms the fake spends deploying; teardown follows deploy.
    assert deploy["end_ns"] - deploy["start_ns"] >= 1_000_000
    assert teardown["start_ns"] >= deploy["end_ns"]


def test_events_file_missing_reads_empty(tmp_path: Path) -> None:
    assert read_endpoint_events(tmp_path / "none.jsonl") == []


def test_failing_teardown_does_not_stop_the_others_and_stays_live(tmp_path: Path) -> None:
    h = Harness(tmp_path, b={"fail_teardown": True})
    for name in ("a", "b", "c"):
        h.manager.acquire(name)
    h.manager.teardown_all()
    teardowns = [e for e in h.journal if e[0] == "teardown"]
    assert teardowns[0] == ("teardown", "a") and teardowns[-1] == ("teardown", "c")
    assert teardowns.count(("teardown", "b")) > 1  # retried until its deadline
    # REVIEW H1: it stays live, and is reported as left running.
    assert h.manager.live == ["b"]
    assert list(h.manager.left_running) == ["b"]
    assert h.manager.left_running["b"].error == "RuntimeError: delete failed"
    assert any("ENDPOINT STILL RUNNING" in line and "'b'" in line for line in h.logs)
    h.manager.teardown_all()  # given up on: not retried for another deadline
    assert [e for e in h.journal if e[0] == "teardown"] == teardowns
    rows = {(e["experiment"], e["event"]): e for e in h.events()}
    assert rows[("b", "teardown")]["ok"] is False
    assert rows[("b", "teardown")]["error"] == "RuntimeError: delete failed"
    assert rows[("a", "teardown")]["ok"] is True
    assert rows[("c", "teardown")]["ok"] is True


def test_a_teardown_that_fails_twice_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    h = Harness(tmp_path, a={"fail_teardowns": 2})
    h.manager.acquire("a")
    h.manager.teardown("a")
    assert h.journal.count(("teardown", "a")) == 3
    assert h.manager.live == [] and not h.manager.left_running
    assert [(e["event"], e["ok"]) for e in h.events()] == [("deploy", True), ("teardown", True)]


def test_ctrl_c_during_teardown_keeps_the_endpoint_live_for_a_retry(tmp_path: Path) -> None:
    # REVIEW L1: popped only after success; BaseException recorded and re-raised.
    h = Harness(tmp_path, a={"interrupt_teardown": True})
    h.manager.acquire("a")
    with pytest.raises(KeyboardInterrupt):
        h.manager.teardown("a")
    assert h.manager.live == ["a"]
    h.manager.teardown_all()  # the session-end teardown
    assert h.manager.live == []
    assert [(e["event"], e["ok"], e["error"]) for e in h.events()] == [
        ("deploy", True, ""), ("teardown", False, "interrupted"), ("teardown", True, "")]


def test_intent_is_journaled_before_deploy_and_closed_by_teardown(tmp_path: Path) -> None:
    from pytest_fmbench.safety.journal import Journal, open_entries_in, read_journal

    journal = Journal(tmp_path / "journal.jsonl", run_id="r1")
    seen: list[int] = []
    h = Harness(tmp_path)

    def factory(name: str) -> Endpoint:
        endpoint = h.factory(name)
        original = endpoint.deploy

        def deploy() -> None:
            seen.append(len(read_journal(tmp_path / "journal.jsonl")))
            original()

        endpoint.deploy = deploy  # type: ignore[method-assign]
        return endpoint

    manager = EndpointManager(factory, h.events_path, log=h.logs.append, journal=journal)
    manager.acquire("a")
    assert seen == [1]  # the intent was on disk when deploy started
    assert [e["experiment"] for e in open_entries_in(tmp_path)] == ["a"]
    manager.teardown("a")
    assert open_entries_in(tmp_path) == []
    assert [line["op"] for line in read_journal(tmp_path / "journal.jsonl")] == [
        "intent", "update", "torn_down"]
