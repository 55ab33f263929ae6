"""--fmbench-shard K/N, the case ledger, and `python -m pytest_fmbench report|merge`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_fmbench.__main__ import main as cli
from pytest_fmbench.case_ledger import CaseLedger, read_case_plan
from pytest_fmbench.shard import Shard, parse_shard
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

GENEROUS = """\
metrics: {dataset_of_interest: en_1-300}
report: {latency_budget: 30, cost_per_10k_txn_budget: 1000, error_rate_budget: 0}
"""


# -- the shard filter ------------------------------------------------------------------------

def test_shards_are_deterministic_disjoint_balanced_and_cover_everything() -> None:
    names = [f"exp-{i}" for i in (7, 3, 11, 0, 5, 9, 2)]
    for total in (1, 2, 3, 7, 9):
        shares = [Shard(k, total).experiments(names) for k in range(1, total + 1)]
        assert set().union(*shares) == set(names)
        assert sum(len(s) for s in shares) == len(names)  # disjoint
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        # Same share whatever order the config lists the experiments in.
        assert shares == [Shard(k, total).experiments(reversed(names)) for k in range(1, total + 1)]


@pytest.mark.parametrize("raw", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", ""])
def test_a_bad_shard_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(raw)


def test_parse_shard() -> None:
    assert parse_shard(" 2/5 ") == Shard(2, 5) and Shard(2, 5).label == "2/5"


def test_the_case_ledger_survives_a_torn_line_and_a_later_plan(tmp_path: Path) -> None:
    ledger = CaseLedger(tmp_path)
    ledger.plan(expected=["a", "b"], selected=["a"], skipped=[], shard="1/2", run_id="r",
                host="h", config=None)
    ledger.done("a")
    ledger.plan(expected=["a", "b", "c"], selected=["a"], skipped=["c"], shard="1/2",
                run_id="r", host="h", config="/x.yml")
    with open(tmp_path / "cases.jsonl", "a") as handle:
        handle.write('{"kind": "done", "case": "b"')  # torn by a crash
    plan = read_case_plan(tmp_path)
    assert plan is not None
    assert plan.done == ["a"] and plan.expected == ["a", "b", "c"] and plan.missing == ["b"]
    assert plan.config == "/x.yml" and plan.shard == "1/2"
    assert read_case_plan(tmp_path / "none") is None


# -- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as running:
        yield running


def bench(pytester: pytest.Pytester, server: FakeOpenAIServer) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=openai_config(server.url, report=GENEROUS))


def run(pytester: pytest.Pytester, out: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                              f"--fmbench-results-dir={out}", *args)


def combinations(results_dir: Path) -> dict[tuple[str, str, int], int]:
    data = json.loads((results_dir / "results.json").read_text())
    return {(m["experiment_name"], m["payload_file"], m["concurrency"]): m["successes"] + m["errors"]
            for m in data["metrics"]}


def test_two_shards_merged_equal_the_unsplit_run(pytester: pytest.Pytester, server,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bench(pytester, server)
    whole = run(pytester, "whole")
    assert whole.ret == 0, whole.stdout.str()
    first = run(pytester, "s1", "--fmbench-shard=1/2")
    first.assert_outcomes(passed=4, deselected=4)
    second = run(pytester, "s2", "--fmbench-shard=2/2")
    second.assert_outcomes(passed=4, deselected=4)
    base = pytester.path
    # Each shard deployed (measured) one experiment, a different one.
    assert {e for e, _, _ in combinations(base / "s1")} == {"alpha"}
    assert {e for e, _, _ in combinations(base / "s2")} == {"beta"}
    records = [json.loads(line) for line in (base / "s1" / "records.jsonl").read_text().splitlines()]
    assert {r["shard"] for r in records} == {"1/2"} and all(r["host"] for r in records)
    assert len({r["clock_anchor_ns"] for r in records}) == 1 and records[0]["clock_anchor_ns"] > 0
    capsys.readouterr()

    status = cli(["merge", str(base / "s1"), str(base / "s2"), "--out", str(base / "merged")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "merged 2 results dirs (shards 1/2, 2/2)" in printed
    assert "budget gate (best): PASSED" in printed
    merged = base / "merged"
    assert combinations(merged) == combinations(base / "whole")
    assert sum(combinations(merged).values()) == 24
    assert (merged / "benchmark.json").is_file() and (merged / "report.md").is_file()
    run_json = json.loads((merged / "run.json").read_text())
    assert run_json["shards"] == ["1/2", "2/2"] and len(set(run_json["run_ids"])) == 2

    # A merged dir reports again from the shards' records (merge.json names them).
    (merged / "report.md").unlink()
    assert cli(["report", str(merged)]) == 0
    assert (merged / "report.md").is_file() and combinations(merged) == combinations(base / "whole")

    # One shard alone: the other shard's cases are missing, and the verdict fails.
    capsys.readouterr()
    assert cli(["merge", str(base / "s1"), "--out", str(base / "half")]) == 1
    printed = capsys.readouterr().out
    assert "missing cases (4): not measured to the end" in printed
    assert "test_benchmark[beta-payload_en_1-300-c1]" in printed
    assert "missing cases" in (base / "half" / "report.md").read_text()

    # The same cases twice: refused (their requests would count twice), a usage error.
    assert cli(["merge", str(base / "s1"), str(base / "whole"), "--out", str(base / "bad")]) == 4
    assert "measured in both" in capsys.readouterr().out
    assert cli(["merge", str(base / "s1"), str(base / "s1"), "--out", str(base / "bad")]) == 4


def test_report_rebuilds_a_crashed_run_from_its_records(pytester: pytest.Pytester, server,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    bench(pytester, server)
    assert run(pytester, "out").ret == 0
    out = pytester.path / "out"
    expected = combinations(out)
    # What a run killed before session end leaves: records and the ledger, no report, no
    # run.json, and the ledger's last case not done.
    for name in ("report.md", "results.json", "benchmark.json", "run.json"):
        (out / name).unlink()
    shutil.rmtree(out / "plots")
    lines = (out / "cases.jsonl").read_text().splitlines()
    (out / "cases.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    assert cli(["report", str(out)]) == 1  # the case not done is missing
    printed = capsys.readouterr().out
    assert "missing cases (1)" in printed and "budget gate (best): PASSED" in printed
    assert combinations(out) == expected and (out / "benchmark.json").is_file()


def test_without_a_known_config_report_is_a_usage_error(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "records.jsonl").write_text("")
    assert cli(["report", str(tmp_path)]) == 4
    assert "--config" in capsys.readouterr().out
    assert cli(["report", str(tmp_path / "nope")]) == 4


def test_a_bad_shard_option_is_a_usage_error(pytester: pytest.Pytester, server) -> None:
    bench(pytester, server)
    result = run(pytester, "out", "--fmbench-shard=3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fmbench-shard: expected K/N*", "*fix: e.g. --fmbench-shard=1/4*"])


def test_shards_under_xdist_ledger_the_expected_cases(pytester: pytest.Pytester, server,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bench(pytester, server)
    args = ("-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2", "--fmbench-config=cfg.yml")
    for k in (1, 2):
        result = pytester.runpytest_subprocess(*args, f"--fmbench-results-dir=s{k}",
                                               f"--fmbench-shard={k}/2")
        assert result.ret == 0, result.stdout.str()
        plan = read_case_plan(pytester.path / f"s{k}")
        assert plan is not None and len(plan.expected) == 8 and len(plan.selected) == 4
        assert sorted(plan.done) == sorted(plan.selected) and plan.shard == f"{k}/2"
    capsys.readouterr()
    base = pytester.path
    assert cli(["merge", str(base / "s1"), str(base / "s2"), "--out", str(base / "m")]) == 0
    assert sum(combinations(base / "m").values()) == 24
