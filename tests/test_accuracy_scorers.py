"""Deterministic scorers: hand-computed values and LongBench's rules."""

from __future__ import annotations

import pytest

from pytest_fmbench.accuracy import scorers as s


def test_qa_f1_matches_the_brief_hand_value() -> None:
    # prediction tokens: eiffel tower in paris (4); reference: eiffel tower (2); 2 shared.
    assert s.qa_f1("The Eiffel Tower, in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    assert s.exact_match("The Eiffel Tower, in Paris", "Eiffel Tower") == 0.0
    assert s.exact_match("the  Eiffel tower!", "Eiffel Tower") == 1.0


def test_scores_take_the_best_reference() -> None:
    item = s.score_answer("Paris", ["London", "paris", "Rome"])
    assert item.scores == {"exact_match": 1.0, "qa_f1": 1.0, "rouge_l": 1.0, "contains": 1.0}
    none = s.score_answer("Paris", [])
    assert none.scores["qa_f1"] == 0.0


def test_reasoning_is_stripped_before_scoring() -> None:
    assert s.strip_reasoning("<think>it is London?</think> Paris") == "Paris"
    assert s.strip_reasoning("hmm, London...</think>Paris") == "Paris"
    assert s.strip_reasoning("<think>cut off by max tokens, London") == ""
    item = s.score_answer("<think>London</think>Paris", ["Paris"])
    assert item.scores["exact_match"] == 1.0 and item.answer == "Paris"


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS("a b c d", "a c d e") = 3 (articles removed: use plain words)
    assert s.rouge_l("one two three four", "one three four five") == pytest.approx(0.75)
    assert s.rouge_l("", "x") == 0.0


def test_contains_is_word_bounded() -> None:
    assert s.contains("It was built in Paris, France.", "Paris") == 1.0
    assert s.contains("Parisian", "Paris") == 0.0


def test_longbench_picks_its_metric_and_first_line() -> None:
    assert s.longbench_dataset("hotpotqa_e.jsonl") == "hotpotqa"
    assert s.longbench_dataset("synthetic") is None
    # triviaqa: only the first line counts.
    item = s.score_answer("Paris\nLondon London London", ["Paris"], dataset="triviaqa")
    assert item.scores["longbench"] == 1.0
    assert s.score_answer("Paragraph 3 or 4", ["Paragraph 3"],
                          dataset="passage_retrieval_en").scores["longbench"] == 0.5
    assert s.score_answer("there are 7", ["7"], dataset="passage_count").scores["longbench"] == 1
    assert s.score_answer("Type: NUM", ["NUM"], dataset="trec",
                          all_classes=["NUM", "LOC"]).scores["longbench"] == 1.0
    assert s.score_answer("gov text here", ["gov text"], dataset="gov_report"
                          ).scores["longbench"] == pytest.approx(0.8)


def test_chinese_variants_count_characters() -> None:
    assert s.qa_f1_zh("北京。", "北京") == 1.0
