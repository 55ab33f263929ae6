"""Live progress (pytest_fmbench/progress.py): the lines, in place and in CI logs, and the
wiring through real pytest runs (plain, under -n, quiet with -q)."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from pytest_fmbench.progress import (
    Display,
    SnapshotFile,
    Tracker,
    choose_interval,
    choose_mode,
    describe,
    read_snapshots,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_deploy_shows_its_status_elapsed_time_and_cost_so_far() -> None:
    clock = Clock()
    tracker = Tracker(clock=clock)
    tracker.price_of = lambda experiment: {"llama": 7.2}.get(experiment)
    with tracker.deploying("llama"):
        tracker.note("[fmbench] llama: endpoint 'llama-ep' is Creating (30 s of at most 3600 s)")
        snapshot = tracker.snapshot()
        assert snapshot is not None
        clock.now += 150
        assert describe(snapshot, clock.now) == (
            "[fmbench] deploying 'llama': endpoint 'llama-ep' is Creating (30 s of at most "
            "3600 s), 2m30s elapsed, ~0.3000 USD so far")
    assert tracker.snapshot() is None


def test_a_case_shows_done_total_in_flight_rate_errors_elapsed_and_eta() -> None:
    clock = Clock()
    tracker = Tracker("gw1", clock=clock)
    with tracker.case("llama-payload_en_1-500-c8", total=400, duration_s=None) as counter:
        counter.watch(lambda: 8)
        for index in range(120):
            counter.count(failed=index % 60 == 0)
        clock.now += 10
        snapshot = tracker.snapshot()
        assert snapshot is not None
        line = describe(snapshot, clock.now)
    assert line == ("[gw1] [fmbench] llama-payload_en_1-500-c8: 120/400 requests, 8 in flight, "
                    "12.0 req/s, 2 errors, 10 s elapsed, ETA 23 s")


def test_a_duration_bound_case_counts_down_its_duration() -> None:
    snapshot = {"kind": "case", "label": "c", "started": 0.0, "total": None, "duration_s": 60,
                "done": 5, "errors": 1, "in_flight": None}
    assert describe(snapshot, 20.0) == ("[fmbench] c: 5 requests, 0.2 req/s, 1 error, "
                                        "20 s elapsed, ETA 40 s")


def test_on_a_terminal_one_line_is_redrawn_in_place_and_cleared() -> None:
    out: list[str] = []
    clock = Clock()
    tracker = Tracker(clock=clock)
    display = Display(out.append, "tty", 1.0, lambda: [s for s in [tracker.snapshot()] if s],
                      clock=clock, width=lambda: 60)
    tracker.on_end = display.clear
    display.tick()
    assert out == []  # nothing running: nothing drawn
    with tracker.case("a-very-long-case-id-that-does-not-fit", total=10, duration_s=None) as counter:
        counter.count(False)
        clock.now += 1
        display.tick()
        counter.count(False)
        clock.now += 1
        display.tick()
    assert out[0].startswith("\n[fmbench] a-very-long")  # a fresh line, pytest may be mid-line
    assert out[1].startswith("\r[fmbench] a-very-long") and out[1].endswith("…\x1b[K")
    assert len(out[1]) - len("\r\x1b[K") == 59  # cut to the terminal's width
    assert out[2] == "\r\x1b[K"  # the phase ended: the line is gone before the next output
    display.tick()
    assert len(out) == 3


def test_a_clear_before_other_output_holds_the_line_off_for_an_interval() -> None:
    out: list[str] = []
    clock = Clock()
    snapshot = {"kind": "case", "label": "c", "started": clock.now, "total": 4, "done": 1}
    display = Display(out.append, "tty", 1.0, lambda: [snapshot], clock=clock)
    display.tick()
    display.clear(hold=True)
    display.tick()  # the controller is writing its line: not redrawn yet
    assert out == [out[0], "\r\x1b[K"]
    clock.now += 1
    display.tick()
    assert out[-1].startswith("\n[fmbench] c: 1/4 requests")


def test_in_ci_logs_each_phase_prints_a_line_every_interval() -> None:
    out: list[str] = []
    clock = Clock()
    snapshots = [{"worker": "gw0", "kind": "deploy", "label": "alpha", "started": clock.now,
                  "status": "", "price_per_hour": None},
                 {"worker": "gw1", "kind": "case", "label": "beta-p-c1", "started": clock.now,
                  "total": 8, "done": 0, "errors": 0, "in_flight": 1}]
    display = Display(out.append, "lines", 15.0, lambda: snapshots, clock=clock)
    display.tick()
    assert out == []  # a phase shorter than the interval prints nothing
    clock.now += 15
    display.tick()
    clock.now += 5
    display.tick()
    assert out == ["[gw0] [fmbench] deploying 'alpha', 15 s elapsed\n",
                   ("[gw1] [fmbench] beta-p-c1: 0/8 requests, 1 in flight, 0.0 req/s, 0 errors, "
                    "15 s elapsed\n")]
    clock.now += 10
    display.tick()
    assert len(out) == 4 and all(line.endswith("\n") and "\r" not in line for line in out)


def test_a_workers_phase_reaches_the_controller_through_its_snapshot_file(tmp_path: Path) -> None:
    tracker = Tracker("gw3")
    snapshots = SnapshotFile(tracker, tmp_path / "progress")
    with tracker.case("c", total=4, duration_s=None) as counter:
        counter.count(False)
        snapshots.write()
        assert [s["done"] for s in read_snapshots(tmp_path / "progress")] == [1]
    snapshots.write()  # idle: no phase
    assert read_snapshots(tmp_path / "progress") == []
    snapshots.stop()
    assert not (tmp_path / "progress" / "gw3.json").exists()


def test_quiet_or_off_shows_nothing_and_a_terminal_draws_in_place() -> None:
    assert choose_mode(quiet=True, isatty=True, environ={}) == "off"
    assert choose_mode(quiet=False, isatty=True, environ={"FMBENCH_PROGRESS": "off"}) == "off"
    assert choose_mode(quiet=False, isatty=True, environ={}) == "tty"
    assert choose_mode(quiet=False, isatty=False, environ={}) == "lines"
    assert choose_interval("tty", {}) == 1.0 and choose_interval("lines", {}) == 15.0
    assert choose_interval("lines", {"FMBENCH_PROGRESS_INTERVAL": "0.5"}) == 0.5


def test_counting_a_request_is_two_integer_increments() -> None:
    """The load loop's only progress cost: no formatting, no I/O, no lock per request."""
    tracker = Tracker()
    with tracker.case("c", total=None, duration_s=None) as counter:
        started = time.perf_counter()
        for _ in range(100_000):
            counter.count(False)
        assert counter.done == 100_000
    # Not a speed target (those live in benchmarks/perf): just that nothing heavy runs.
    assert time.perf_counter() - started < 5


SLOW_BACKEND = '''
import asyncio
import time
from pytest_fmbench.clock import now_ns
from pytest_fmbench.endpoints.base import InferenceResult


class Client:
    async def invoke(self, request):
        sent = now_ns()
        await asyncio.sleep(0.1)
        return InferenceResult(sent_ns=sent, first_token_ns=now_ns(), last_byte_ns=now_ns(),
                               prompt_tokens=5, completion_tokens=4, token_source="server")

    async def aclose(self):
        pass


class SlowEndpoint:
    """Deploys in about a second, saying its status like SageMaker does."""

    def __init__(self, config, experiment, context):
        self.name, self.log, self.up = experiment.name, context.log, False

    @property
    def deployed_by_us(self):
        return self.up

    def deploy(self):
        self.log(f"[fmbench] {self.name}: endpoint '{self.name}-ep' is Creating")
        time.sleep(0.8)
        self.up = True

    def teardown(self):
        self.up = False

    def client(self):
        return Client()

    def describe(self):
        return {"backend": "slow"}
'''

SLOW_CONFIG = textwrap.dedent("""\
    general: {name: slow}
    datasets:
      synthetic: {records: 20, seed: 2}
      max_prompts_per_file: 4
      filters:
        - {payload_file: payload_a.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}
    load: {min_iters_per_combination: 6, max_iters_per_combination: 6, warmup_requests: 0}
    experiments:
      - name: alpha
        backend: "slow_backend:SlowEndpoint"
        price_per_hour: 36.0
        payload_files: [payload_a.jsonl]
        concurrency_levels: [2]
      - name: beta
        backend: "slow_backend:SlowEndpoint"
        price_per_hour: 36.0
        payload_files: [payload_a.jsonl]
        concurrency_levels: [2]
    """)


@pytest.fixture
def slow_bench(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(slow_backend=SLOW_BACKEND,
                        test_bench="def test_benchmark(fmbench_load):\n    fmbench_load()\n")
    pytester.makefile(".yml", cfg=SLOW_CONFIG)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path), prepend=":")
    monkeypatch.setenv("FMBENCH_PROGRESS", "lines")  # as in CI logs (pytester's stdout is a file)
    monkeypatch.setenv("FMBENCH_PROGRESS_INTERVAL", "0.2")
    return pytester


def _progress_lines(result: pytest.RunResult) -> list[str]:
    """Progress lines (the case summary lines and the deploy's own log lines have no "elapsed")."""
    return [line for line in result.outlines if " elapsed" in line]


def test_ci_logs_get_deploy_and_case_progress_lines(slow_bench: pytest.Pytester) -> None:
    result = slow_bench.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                             "-p", "no:xdist", "--fmbench-config=cfg.yml",
                                             "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "[[]fmbench[]] deploying 'alpha': endpoint 'alpha-ep' is Creating, * elapsed, ~0.0* USD so far",
        "[[]fmbench[]] alpha-payload_a-c2: */12 requests, 2 in flight, * req/s, 0 errors, * elapsed, ETA *",
        "*[[]fmbench[]] alpha-payload_a-c2: 12 requests, 0 errors,*",  # the case's own summary line
    ])
    assert not (slow_bench.path / "out" / "progress").exists()


def test_under_xdist_the_workers_progress_reaches_the_controller(slow_bench: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = slow_bench.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                             "-n", "2", "--fmbench-config=cfg.yml",
                                             "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    lines = _progress_lines(result)
    # Timing-tolerant (a loaded machine): each experiment's deploy or case, from a worker.
    for experiment in ("alpha", "beta"):
        assert any(line.startswith("[gw") and f"'{experiment}'" in line or
                   f"{experiment}-payload_a-c2: " in line for line in lines), lines
    assert any(line.startswith("[gw") and "/12 requests" in line for line in lines), lines
    assert not (slow_bench.path / "out" / "progress").exists()


def test_quiet_runs_show_no_progress(slow_bench: pytest.Pytester) -> None:
    result = slow_bench.runpytest_subprocess("-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                                             "-p", "no:xdist", "--fmbench-config=cfg.yml",
                                             "--fmbench-results-dir=out")
    assert result.ret == 0, result.stdout.str()
    assert _progress_lines(result) == []
    assert json.loads((slow_bench.path / "out" / "results.json").read_text())["requests"] == 24
