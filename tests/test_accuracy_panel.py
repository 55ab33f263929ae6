"""Panel voting on the design brief's oracle: quorum, ties, abstentions, agreement."""

from __future__ import annotations

import pytest

from pytest_fmbench.accuracy.panel import Voting, decide, summarize

C, I = "correct", "incorrect"
J1 = [C, C, C, C, C, C, I, I, I, I]
J2 = [C, C, C, C, C, C, C, C, C, I]
J3 = [C, I, C, C, None, C, C, I, I, I]
S3 = ["ok"] * 4 + ["parse_failed"] + ["ok"] * 5


def test_oracle_majority_and_agreement() -> None:
    summary = summarize(["J1", "J2", "J3"], [J1, J2, J3], [["ok"] * 10, ["ok"] * 10, S3],
                        Voting(quorum=2, tie="incorrect"))
    assert [d.verdict for d in summary.decisions] == [C] * 7 + [I] * 3
    assert summary.strict.value == 0.7 and summary.strict.n == 10
    assert summary.strict.low == pytest.approx(0.39678, abs=5e-6)
    assert summary.strict.high == pytest.approx(0.89221, abs=5e-6)
    assert (summary.undecided, summary.ties) == (0, 0)
    assert summary.cohen[("J1", "J2")] == (pytest.approx(2 / 7, abs=1e-12), 10)
    assert summary.cohen[("J1", "J3")] == (pytest.approx(0.55, abs=1e-12), 9)
    assert summary.cohen[("J2", "J3")] == (pytest.approx(10 / 37, abs=1e-12), 9)
    assert summary.fleiss == (pytest.approx(1 / 3, abs=1e-12), 9)
    assert summary.krippendorff == (pytest.approx(17 / 45, abs=1e-12), 29)
    j3 = summary.judges[2]
    assert (j3.votes, j3.parse_failed, j3.parse_failure_rate) == (9, 1, 0.1)
    assert summary.judges[1].leniency == 0.9


def test_quorum_and_ties() -> None:
    assert decide([C, None, None], Voting(quorum=2)).verdict == "undecided"
    assert decide([C, I, None], Voting(quorum=2, tie="incorrect")).verdict == I
    tie = decide([C, I, None], Voting(quorum=2, tie="undecided"))
    assert (tie.verdict, tie.tie) == ("undecided", True)
    # FMBench's statistics.mode would pick the first column here; we never do.
    assert decide([None, C, I], Voting(quorum=2, tie="incorrect")).verdict == I


def test_strict_and_decided_accuracy_differ_by_the_undecided() -> None:
    votes = [[C, C, None, I], [C, None, None, I], [C, C, None, I]]
    summary = summarize(["a", "b", "c"], votes, [["ok"] * 4] * 3, Voting(quorum=2))
    assert (summary.correct, summary.incorrect, summary.undecided) == (2, 1, 1)
    assert summary.strict.value == 0.5 and summary.strict.n == 4
    assert summary.decided.value == pytest.approx(2 / 3) and summary.decided.n == 3


def test_cost_per_10k_correct_answers() -> None:
    from pytest_fmbench.accuracy.session import cost_per_correct

    metrics = [{"experiment_name": "a", "payload_file": "p.jsonl", "concurrency": "2",
                "cost_per_10k_txn": "5.0"},
               {"experiment_name": "a", "payload_file": "q.jsonl", "concurrency": "1",
                "cost_per_10k_txn": "5.0"},
               {"experiment_name": "b", "payload_file": "p.jsonl", "concurrency": "1",
                "cost_per_10k_txn": ""}]
    rows = cost_per_correct(metrics, {("a", "p.jsonl"): 0.5, ("a", "q.jsonl"): 0.0,
                                      ("b", "p.jsonl"): 1.0})
    assert [r["cost_per_10k_correct_answers"] for r in rows] == [10.0, None, None]


def test_paired_model_comparison_uses_mcnemar_on_common_items() -> None:
    from pytest_fmbench.accuracy.panel import compare_models

    a = {f"i{k}": True for k in range(8)}
    b = {f"i{k}": k >= 4 for k in range(8)} | {"only-b": True}
    (row,) = compare_models({"a": a, "b": b})
    assert (row["n"], row["only_a_correct"], row["only_b_correct"]) == (8, 4, 0)
    assert row["difference"] == 0.5 and row["mcnemar_p"] == pytest.approx(0.125)
