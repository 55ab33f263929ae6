"""Optional backend hooks are Protocols in ``endpoints/base.py``, not ``getattr`` probes (M12)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pytest_fmbench
from pytest_fmbench.endpoints.base import EnforcesTimeout, InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.load.monitor import LoopLagMonitor
from pytest_fmbench.load.patterns import Dispatcher, LoadPlan


class Client:
    async def invoke(self, request: InferenceRequest) -> InferenceResult:
        return InferenceResult(sent_ns=0, last_byte_ns=0)

    async def aclose(self) -> None:
        pass


class SelfBounded(Client):
    enforces_timeout = True


class SaysNo(Client):
    enforces_timeout = False


PLAN = LoadPlan(pattern="waves", concurrency=1, waves=1, timeout_s=1.0)


@pytest.mark.parametrize("client, guarded", [
    (Client(), True), (SaysNo(), True), (SelfBounded(), False)])
def test_only_a_client_that_bounds_its_requests_goes_without_the_dispatchers_timer(
        client: Client, guarded: bool) -> None:
    dispatcher = Dispatcher(client, lambda done: None, PLAN, LoopLagMonitor())
    assert dispatcher.guarded is guarded


def test_the_openai_client_declares_that_it_bounds_its_requests() -> None:
    assert isinstance(OpenAIClient("http://127.0.0.1:1"), EnforcesTimeout)


def test_no_optional_hook_is_found_with_getattr() -> None:
    probe = re.compile(r"getattr\([^)]*(preflight|cleanup_orphan|enforces_timeout)")
    root = Path(pytest_fmbench.__file__).parent
    found = [f"{path.relative_to(root)}:{number}" for path in root.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if probe.search(line)]
    assert found == []
