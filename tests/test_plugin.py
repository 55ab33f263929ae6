"""End-to-end runs of the plugin through pytester, the way users run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import (
    BENCHMARK_TEST,
    INNER_ARGS,
    RECORDING_BACKEND,
    openai_config,
    read_lines,
    recording_config,
    rows,
)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as running:
        yield running


@pytest.fixture
def bench(pytester: pytest.Pytester, server: FakeOpenAIServer) -> pytest.Pytester:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=openai_config(server.url))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*INNER_ARGS, *args)


def test_collect_only_lists_every_case_by_id(bench: pytest.Pytester) -> None:
    result = run(bench, "--fmbench-config=cfg.yml", "--collect-only", "-q")
    assert result.ret == 0
    ids = [line for line in result.outlines if "test_benchmark[" in line]
    assert ids == [
        f"test_bench.py::test_benchmark[{exp}-{payload}-c{c}]"
        for exp in ("alpha", "beta")
        for payload in ("payload_en_1-300", "payload_en_300-5000")
        for c in (1, 2)
    ]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (("-m", "g5"), 4),
        (("-m", "p4d and openai"), 4),
        (("-m", "nightly"), 4),
        (("-m", "not nightly"), 4),
        (("-k", "c2"), 4),
        (("-k", "alpha and 300-5000"), 2),
    ],
)
def test_markers_and_keywords_select_subsets(bench: pytest.Pytester, selection: tuple[str, str],
                                             expected: int) -> None:
    result = run(bench, "--fmbench-config=cfg.yml", "--collect-only", "-q", "--strict-markers",
                 *selection)
    assert result.ret == 0
    assert sum("test_benchmark[" in line for line in result.outlines) == expected


def test_without_config_the_benchmarks_skip_saying_how_to_give_one(bench: pytest.Pytester) -> None:
    result = run(bench, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*--fmbench-config=PATH*"])


def test_config_from_environment_and_ini(bench: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_CONFIG", "cfg.yml")
    assert sum("test_benchmark[" in l for l in run(bench, "--collect-only", "-q").outlines) == 8
    monkeypatch.delenv("FMBENCH_CONFIG")
    bench.makeini("[pytest]\nfmbench_config = cfg.yml\n")
    assert sum("test_benchmark[" in l for l in run(bench, "--collect-only", "-q").outlines) == 8


def test_full_run_records_every_request(bench: pytest.Pytester, server: FakeOpenAIServer) -> None:
    before = server.stats.requests
    result = run(bench, "--fmbench-config=cfg.yml", "--fmbench-results-dir=out")
    result.assert_outcomes(passed=8)
    records = rows(bench.path / "out" / "records.jsonl")
    # 2 waves per combination: c1 sends 2 requests, c2 sends 4; 2 experiments x 2 payload files.
    assert len(records) == 2 * 2 * (2 + 4)
    assert server.stats.requests - before == len(records) + 2  # + one warm-up per experiment
    assert all(r["error"] == "" and r["token_source"] == "server" for r in records)
    assert all(r["first_token_ns"] > r["sent_ns"] >= r["scheduled_ns"] for r in records)
    assert {r["case_id"] for r in records} == {
        f"{e}-{p}-c{c}" for e in ("alpha", "beta")
        for p in ("payload_en_1-300", "payload_en_300-5000") for c in (1, 2)}
    result.stdout.fnmatch_lines(["*[[]fmbench[]] alpha-payload_en_1-300-c2: 4 requests, 0 errors, TPM *"])
    assert (bench.path / "out" / "payloads" / "payload_en_1-300.jsonl").exists()
    assert (bench.path / "out" / "run.json").exists()


def test_default_results_dir_is_named_after_the_config_and_run(bench: pytest.Pytester) -> None:
    run(bench, "--fmbench-config=cfg.yml", "-k", "alpha and c1").assert_outcomes(passed=2)
    (run_dir,) = (bench.path / "results" / "e2e").glob("2*")
    assert len(read_lines(run_dir / "records.jsonl")) == 4
    payload = bench.path / "results" / "e2e" / "payloads" / "payload_en_1-300.jsonl"
    built = payload.stat().st_mtime_ns
    run(bench, "--fmbench-config=cfg.yml", "-k", "alpha and c1").assert_outcomes(passed=2)
    assert len(list((bench.path / "results" / "e2e").glob("2*"))) == 2
    assert payload.stat().st_mtime_ns == built  # reused by the next run


def test_collect_only_writes_nothing(bench: pytest.Pytester) -> None:
    run(bench, "--fmbench-config=cfg.yml", "--collect-only")
    assert not (bench.path / "results").exists()


# -- bad input: one clear usage error (exit 4), no traceback ----------------------------

BAD_INPUTS = {
    "unknown key": (
        lambda text: text.replace("concurrency_levels", "concurency_levels", 1),
        ["cfg.yml", "experiments[0] (alpha).concurency_levels",
         "did you mean 'concurrency_levels'?", "fix:"],
    ),
    "wrong type": (
        lambda text: text.replace("max_iters_per_combination: 2", "max_iters_per_combination: many"),
        ["cfg.yml", "load.max_iters_per_combination", "valid integer", "fix:"],
    ),
    "unknown backend": (
        lambda text: text.replace("backend: openai", "backend: opnai", 1),
        ["cfg.yml", "experiments[0] (alpha).backend", "unknown backend 'opnai'",
         "did you mean 'openai'?"],
    ),
    "unfilled placeholder": (
        lambda text: text.replace("name: e2e", "name: {run_name}"),
        ["cfg.yml", "{run_name}", "--fmbench-set run_name=VALUE"],
    ),
    "empty experiment list": (
        lambda text: text.split("experiments:")[0] + "experiments: []\n",
        ["cfg.yml", "experiments", "at least 1", "fix:"],
    ),
}


@pytest.mark.parametrize("problem", sorted(BAD_INPUTS))
def test_bad_config_is_one_clear_usage_error(bench: pytest.Pytester, problem: str) -> None:
    mutate, expected = BAD_INPUTS[problem]
    path = bench.path / "cfg.yml"
    path.write_text(mutate(path.read_text()))
    result = run(bench, "--fmbench-config=cfg.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    for fragment in expected:
        assert fragment in error, (fragment, error)
    assert "Traceback" not in error + result.stdout.str()


def test_missing_config_file_is_a_usage_error(bench: pytest.Pytester) -> None:
    result = run(bench, "--fmbench-config=nope.yml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert "nope.yml" in error and "config file not found" in error and "fix:" in error
    assert "Traceback" not in error


def test_placeholders_are_filled_from_the_command_line(bench: pytest.Pytester) -> None:
    path = bench.path / "cfg.yml"
    path.write_text(path.read_text().replace("name: e2e", "name: {run_name}"))
    result = run(bench, "--fmbench-config=cfg.yml", "--fmbench-set", "run_name=filled",
                 "-k", "alpha and c1 and 1-300")
    result.assert_outcomes(passed=1)
    assert (bench.path / "results" / "filled").is_dir()


def test_bad_fmbench_set_is_a_usage_error(bench: pytest.Pytester) -> None:
    result = run(bench, "--fmbench-config=cfg.yml", "--fmbench-set", "novalue")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "KEY=VALUE" in result.stderr.str()


# -- endpoint lifecycle -------------------------------------------------------------------

@pytest.fixture
def recording(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytester.makepyfile(recording_backend=RECORDING_BACKEND, test_bench=BENCHMARK_TEST)
    pytester.syspathinsert()
    log = pytester.path / "lifecycle.log"
    monkeypatch.setenv("FMBENCH_TEST_LOG", str(log))
    return log


def test_each_endpoint_is_deployed_once_and_torn_down_after_its_last_case(
        pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config())
    run(pytester, "--fmbench-config=cfg.yml", "-v").assert_outcomes(passed=4)
    assert read_lines(recording) == ["deploy alpha", "teardown alpha", "deploy beta", "teardown beta"]


def test_endpoints_are_torn_down_when_cases_fail(pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config())
    pytester.makepyfile(test_bench="def test_benchmark(fmbench_load):\n"
                        "    fmbench_load()\n    assert False, 'budget blown'\n")
    run(pytester, "--fmbench-config=cfg.yml").assert_outcomes(failed=4)
    assert read_lines(recording) == ["deploy alpha", "teardown alpha", "deploy beta", "teardown beta"]


def test_a_failed_deploy_fails_its_cases_and_the_others_still_run(
        pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config(fail_beta=True))
    result = run(pytester, "--fmbench-config=cfg.yml")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*deploying 'beta' failed: RuntimeError: the instance type is not available*"])
    # deployed once (not once per case) and cleaned up
    assert read_lines(recording) == ["deploy alpha", "teardown alpha", "deploy beta", "teardown beta"]
    events = rows(next((pytester.path / "results" / "rec").glob("2*")) / "endpoints.jsonl")
    assert [(e["experiment"], e["event"], e["ok"]) for e in events] == [
        ("alpha", "deploy", True), ("alpha", "teardown", True),
        ("beta", "deploy", False), ("beta", "teardown", True)]


def test_exitfirst_still_tears_down(pytester: pytest.Pytester, recording: Path) -> None:
    pytester.makefile(".yml", cfg=recording_config())
    pytester.makepyfile(test_bench="def test_benchmark(fmbench_load):\n"
                        "    fmbench_load()\n    assert False\n")
    run(pytester, "--fmbench-config=cfg.yml", "-x").assert_outcomes(failed=1)
    assert read_lines(recording) == ["deploy alpha", "teardown alpha"]
