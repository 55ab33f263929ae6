"""Shared pieces of the pytester end-to-end tests: a config writer and a recording backend."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web

from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.endpoints.openai_http import OpenAIClient
from pytest_fmbench.run import run_async

BENCHMARK_TEST = '''
def test_benchmark(fmbench_load):
    result = fmbench_load()
    assert result.successes > 0, result.summary["error_classes"]
'''

INNER_ARGS = ("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist")


def openai_config(url: str, *, name: str = "e2e", report: str = "") -> str:
    """Two bring-your-own OpenAI-compatible experiments x 2 payload files x c1, c2."""
    return textwrap.dedent(f"""\
        general:
          name: {name}
        datasets:
          synthetic: {{records: 60, seed: 1}}
          max_prompts_per_file: 6
          filters:
            - {{payload_file: payload_en_1-300.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 300}}
            - {{payload_file: payload_en_300-5000.jsonl, min_length_in_tokens: 300, max_length_in_tokens: 5000}}
        inference_parameters:
          fast: {{max_new_tokens: 4}}
        load:
          min_iters_per_combination: 2
          max_iters_per_combination: 2
          warmup_requests: 1
          request_timeout_s: 5
        experiments:
          - name: alpha
            backend: openai
            deploy: no
            instance_type: ml.g5.xlarge
            price_per_hour: 1.0
            openai: {{base_url: "{url}"}}
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_en_1-300.jsonl, payload_en_300-5000.jsonl]
            concurrency_levels: [1, 2]
          - name: beta
            backend: openai
            deploy: no
            instance_type: ml.p4d.24xlarge
            price_per_hour: 2.0
            openai: {{base_url: "{url}"}}
            inference_spec: {{parameter_set: fast}}
            payload_files: [payload_en_1-300.jsonl, payload_en_300-5000.jsonl]
            concurrency_levels: [1, 2]
            markers: [nightly]
        """) + textwrap.dedent(report)


RECORDING_BACKEND = '''
"""A backend that records its lifecycle to a file and answers instantly."""
import json, os, signal, subprocess, time
from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceResult

LOG = os.environ["FMBENCH_TEST_LOG"]


def note(*words):
    with open(LOG, "a") as handle:
        handle.write(" ".join(words) + "\\n")


class Client:
    def __init__(self, name, delay):
        self.name, self.delay = name, delay

    async def invoke(self, request):
        import asyncio
        sent = now_ns()
        await asyncio.sleep(self.delay)
        return InferenceResult(sent_ns=sent, first_token_ns=now_ns(), last_byte_ns=now_ns(),
                               prompt_tokens=request.prompt_tokens, completion_tokens=4,
                               token_source="server")

    async def aclose(self):
        pass


class CrashingClient(Client):
    """Kills its own process (an xdist worker) once, on its first request."""

    async def invoke(self, request):
        flag = os.environ["FMBENCH_TEST_CRASH_FLAG"]
        if not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().invoke(request)


class RecordingEndpoint:
    """Its "server" is a real process (sleep), so a leftover endpoint is visible."""

    def __init__(self, config, experiment, context):
        self.name = experiment.name
        self._server = None
        self.fail = "fail" in experiment.markers
        self.crash = "crash" in experiment.markers
        self.delay = float(os.environ.get("FMBENCH_TEST_DELAY", "0"))

    @property
    def deployed_by_us(self):
        return self._server is not None

    def deploy(self):
        note("deploy", self.name)
        self._server = subprocess.Popen(["sleep", "300"], start_new_session=True)
        if self.fail:
            raise RuntimeError("the instance type is not available")

    def teardown(self):
        note("teardown", self.name)
        server, self._server = self._server, None
        if server is not None:
            server.kill()
            server.wait()

    @classmethod
    def cleanup_orphan(cls, config, experiment, context, description):
        note("orphan-teardown", experiment.name)
        os.killpg(description["pid"], signal.SIGKILL)

    def client(self):
        return (CrashingClient if self.crash else Client)(self.name, self.delay)

    def describe(self):
        return {"backend": "recording", "pid": self._server.pid if self._server else None}
'''


def recording_config(*, fail_beta: bool = False, concurrency: str = "[1, 2]",
                     iters: int = 2, extra: str = "") -> str:
    markers = "[fail]" if fail_beta else "[]"
    return textwrap.dedent(f"""\
        general: {{name: rec}}
        datasets:
          synthetic: {{records: 40, seed: 2}}
          max_prompts_per_file: 4
          filters:
            - {{payload_file: payload_a.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}
        load: {{min_iters_per_combination: {iters}, max_iters_per_combination: {iters}, warmup_requests: 0}}
        experiments:
          - name: alpha
            backend: "recording_backend:RecordingEndpoint"
            price_per_hour: 1.0
            payload_files: [payload_a.jsonl]
            concurrency_levels: {concurrency}
          - name: beta
            backend: "recording_backend:RecordingEndpoint"
            price_per_hour: 1.0
            payload_files: [payload_a.jsonl]
            concurrency_levels: {concurrency}
            markers: {markers}
        """) + extra


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def count_rows(path: Path) -> int:
    return len(read_lines(path))


def rows(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in read_lines(path)]


def experiment_block(name: str, *, concurrency: str = "[1, 2]", markers: str = "[]") -> str:
    """One more recording experiment, indented to follow ``recording_config``'s list."""
    return textwrap.indent(textwrap.dedent(f"""\
          - name: {name}
            backend: "recording_backend:RecordingEndpoint"
            price_per_hour: 1.0
            payload_files: [payload_a.jsonl]
            concurrency_levels: {concurrency}
            markers: {markers}
        """), "  ")


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie not yet reaped counts as dead)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The command name may hold spaces or parentheses: the state follows the last ")".
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def serve_raw(parts: list[bytes], gap_s: float = 0.0, requests: int = 1,
              client: dict[str, Any] | None = None) -> list[InferenceResult]:
    """Write ``parts`` as one response body, each part its own write (so its own read)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(gap_s)
        await response.write_eof()
        return response

    async def go() -> list[InferenceResult]:
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        openai = OpenAIClient(f"http://127.0.0.1:{port}", timeout_s=5, **(client or {}))
        try:
            return [await openai.invoke(InferenceRequest("x", prompt_tokens=1))
                    for _ in range(requests)]
        finally:
            await openai.aclose()
            await runner.cleanup()

    return run_async(go)
