"""Accuracy end to end through pytest: a scripted candidate, a panel of deterministic judges
on the OpenAI test server, the brief's 10-item oracle, the gate, the cache, the marker."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.testing.judges import ScriptedCandidate, ScriptedJudges
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS

C, I = "correct", "incorrect"
# The brief's oracle: judge verdicts per item (item 5 of J3 does not parse).
ORACLE = {
    "J1": [C, C, C, C, C, C, I, I, I, I],
    "J2": [C, C, C, C, C, C, C, C, C, I],
    "J3": [C, I, C, C, "garbage", C, C, I, I, I],
}


# Printed before judging: the priced judges' most, and who is unpriced.
ESTIMATE = ("*judging 10 answers with 3 judge(s): at most $0.0000 before cache hits, "
            "plus unpriced judges J1, J2, J3*")


def answer(i: int) -> str:
    return f"candidate answer {i}"


def replies() -> tuple[ScriptedCandidate, ScriptedJudges]:
    candidate = ScriptedCandidate({f"Question number {i} please": answer(i) for i in range(1, 11)})
    judges = ScriptedJudges({name: {answer(i + 1): v for i, v in enumerate(verdicts)}
                             for name, verdicts in ORACLE.items()})
    return candidate, judges


def write_inputs(path: Path, url: str, *, budget: float = 0.8) -> None:
    rows = [{"_id": f"item-{i}", "input": f"Question number {i} please", "context": "ctx",
             "answers": [f"reference {i}", f"alias {i}"], "language": "en"} for i in range(1, 11)]
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judges = "\n".join(
        f"    - {{model_id: {name}, endpoint: {{backend: openai, "
        f"openai: {{base_url: \"{url}\", api: chat}}}}}}" for name in ORACLE)
    (path / "cfg.yml").write_text(textwrap.dedent(f"""\
        general: {{name: acc}}
        datasets:
          source_files: [data.jsonl]
          filters:
            - {{payload_file: payload_all.jsonl, min_length_in_tokens: 1, max_length_in_tokens: 100000}}
        inference_parameters:
          p: {{max_tokens: 16}}
        load: {{min_iters_per_combination: 1, max_iters_per_combination: 1, request_timeout_s: 5}}
        experiments:
          - name: cand
            backend: openai
            deploy: no
            price_per_hour: 3.6
            openai: {{base_url: "{url}", model: cand}}
            inference_spec: {{parameter_set: p}}
            payload_files: [payload_all.jsonl]
            concurrency_levels: [1]
        report:
          accuracy_budget: {budget}
        accuracy:
          quorum: 2
          tie: incorrect
          per_combination: true
          cache: {path / 'judge-cache.sqlite'}
          judges:
        """) + judges + "\n")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*INNER_ARGS, "--fmbench-config=cfg.yml",
                              "--fmbench-results-dir=out", *args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_oracle_panel_through_pytest_gate_and_cache(pytester: pytest.Pytester) -> None:
    candidate, judges = replies()

    def reply(model: str, prompt: str) -> str:
        return judges.reply(model, prompt) or candidate.reply(model, prompt)

    with FakeOpenAIServer(ServerBehaviour(reply=reply)) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        write_inputs(pytester.path, server.url)
        result = run(pytester)
        # The load case and the accuracy pass passed; the accuracy gate fails the run
        # (0.7 < 0.8).
        result.assert_outcomes(passed=2)
        assert result.ret == 1
        result.stdout.fnmatch_lines([
            ("*accuracy: cand: majority accuracy 0.700 ?0.397, 0.892? n=10, undecided 0,"
            " Krippendorff α 0.378*"),
            "*accuracy budget FAIL*: cand majority accuracy 0.700 vs accuracy_budget 0.800 (n=10)*",
        ])
        assert dict(judges.calls) == {"J1": 10, "J2": 10, "J3": 10}
        out = pytester.path / "out" / "accuracy"
        model = read_csv(out / "PoLL_per_model_accuracy.csv")
        assert [(r["candidate_model"], r["correct_count"], r["incorrect_count"], r["n"])
                for r in model] == [("cand", "7", "3", "10")]
        per_judge = {r["judge_model_id"]: r for r in read_csv(out / "per_model_per_eval_judge_accuracy.csv")}
        assert per_judge["J3"]["parse_failed"] == "1" and per_judge["J2"]["accuracy"] == "0.9"
        costs = {r["judge_model_id"]: r for r in read_csv(out / "eval_cost_per_llm_evaluator.csv")}
        assert costs["J1"]["total_cost"] == "unpriced"  # never $0
        assert (out / "accuracy_trajectory_per_payload.png").stat().st_size > 0
        assert (out / "overall_candidate_model_majority_voting_accuracy.png").stat().st_size > 0
        report = (pytester.path / "out" / "report.md").read_text()
        assert "### Model evaluations" in report and "#### Model Evaluation Cost" in report
        assert "| cand | J1 – J2 | 0.286 | 10 |" in report and "| cand | J3 | 9 | 0.556 | 1 (0.10) | 0 | 0 |" in report
        # cost per 10k correct answers = cost_per_10k_txn / 0.7 (the panel's accuracy)
        (cost_row,) = read_csv(out / "cost_per_10k_correct_answers.csv")
        assert float(cost_row["cost_per_10k_correct_answers"]) == pytest.approx(
            float(cost_row["cost_per_10k_txn"]) / 0.7)
        assert "#### Cost per 10k correct answers" in report
        # The load case's own answer, scored per combination (per_combination: true).
        (combination,) = read_csv(out / "scores_per_combination.csv")
        assert (combination["concurrency"], combination["n_scored"], combination["errored"],
                combination["distinct_answers_per_prompt"]) == ("1", "1", "0", "1.0")
        assert combination["exact_match"] == "0.0"  # "candidate answer i" vs "reference i"
        assert "#### Accuracy per combination" in report
        scores = {r["scorer"]: r for r in read_csv(out / "scores.csv")}
        assert scores["exact_match"]["value"] == "0.0" and scores["exact_match"]["n"] == "10"

        # A rerun: every verdict from the cache, not one judge call, the same numbers.
        again = run(pytester)
        assert dict(judges.calls) == {"J1": 10, "J2": 10, "J3": 10}
        again.stdout.fnmatch_lines([ESTIMATE,
                                    "*judges made 0 calls (30 from the cache)*",
                                    "*cand: majority accuracy 0.700 ?0.397, 0.892? n=10*"])

        # Re-score the saved run: no endpoint, no load, no judge call, the same verdict.
        requests = server.stats.requests
        rescored = run(pytester, "--fmbench-rescore=out")
        assert rescored.ret == 1 and server.stats.requests == requests
        rescored.stdout.fnmatch_lines(["*pytest-fmbench rescore*",
                                       ESTIMATE,
                                    "*judges made 0 calls (30 from the cache)*",
                                       "*accuracy budget FAIL*cand majority accuracy 0.700*"])
        nothing = run(pytester, f"--fmbench-rescore={pytester.path}")
        assert nothing.ret == 1
        nothing.stdout.fnmatch_lines(["*no saved answers to re-score*"])

        # Performance only: no accuracy item, no answers, no judging.
        perf = run(pytester, "-m", "not fmbench_accuracy")
        perf.assert_outcomes(passed=1)
        assert perf.ret == 0
        # Accuracy only: the one accuracy item.
        only = run(pytester, "-m", "fmbench_accuracy", "--fmbench-set=unused=1")
        only.assert_outcomes(passed=1, deselected=1)


def test_under_xdist_answers_merge_and_the_controller_judges_once(pytester: pytest.Pytester) -> None:
    """-n 2: each worker runs its experiment's accuracy pass; the controller judges every
    answer once and compares the two models on the same items (McNemar)."""
    answers = {"a": {f"Question number {i} please": f"A {i}" for i in range(1, 11)},
               "b": {f"Question number {i} please": f"B {i}" for i in range(1, 11)}}
    verdicts = {**{f"A {i}": C for i in range(1, 11)},
                **{f"B {i}": (C if i <= 6 else I) for i in range(1, 11)}}
    judges = ScriptedJudges({"J1": verdicts, "J2": verdicts})

    def reply(model: str, prompt: str) -> str:
        return judges.reply(model, prompt) or ScriptedCandidate(answers[model]).reply(model, prompt)

    with FakeOpenAIServer(ServerBehaviour(reply=reply)) as server:
        pytester.makepyfile(test_bench=BENCHMARK_TEST)
        write_inputs(pytester.path, server.url)
        text = (pytester.path / "cfg.yml").read_text()
        head, judges_part = text.split("accuracy:\n", 1)
        experiments = "".join(textwrap.indent(textwrap.dedent(f"""\
            - name: {name}
              backend: openai
              deploy: no
              openai: {{base_url: "{server.url}", model: {name}}}
              inference_spec: {{parameter_set: p}}
              payload_files: [payload_all.jsonl]
              concurrency_levels: [1]
            """), "  ") for name in ("a", "b"))
        head = head.split("experiments:\n", 1)[0] + "experiments:\n" + experiments
        judges_part = judges_part.replace("    - {model_id: J3", "    # - {model_id: J3")
        (pytester.path / "cfg.yml").write_text(
            head + "accuracy:\n" + judges_part.replace("accuracy_budget: 0.8", ""))
        result = pytester.runpytest_subprocess(
            "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2", "--fmbench-config=cfg.yml",
            "--fmbench-results-dir=out")
        result.assert_outcomes(passed=4)
        assert dict(judges.calls) == {"J1": 20, "J2": 20}
        out = pytester.path / "out" / "accuracy"
        assert sorted(p.name for p in out.glob("answers*.jsonl")) == ["answers-gw0.jsonl",
                                                                      "answers-gw1.jsonl"]
        (row,) = read_csv(out / "model_comparison.csv")
        assert (row["model_a"], row["model_b"], row["n"]) == ("a", "b", "10")
        assert (row["only_a_correct"], row["only_b_correct"]) == ("4", "0")
        assert float(row["mcnemar_p"]) == pytest.approx(0.125)
