"""The judge parser fails closed; the template carries every section; cache keys by content."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_fmbench.accuracy.cache import CachedReply, JudgeCache, cache_key
from pytest_fmbench.accuracy.judging import (
    DEFAULT_TEMPLATE,
    Judge,
    JudgeItem,
    JudgePrice,
    parse_verdict,
    render_prompt,
    run_judges,
)
from pytest_fmbench.endpoints.base import InferenceRequest, InferenceResult
from pytest_fmbench.testing.judges import ScriptedJudges


def test_parser_reads_json_fences_grades_and_fails_closed() -> None:
    assert parse_verdict('{"reasoning": "x", "verdict": "correct"}') == "correct"
    assert parse_verdict('Sure:\n```json\n{"Verdict": "Incorrect"}\n```') == "incorrect"
    assert parse_verdict("blah GRADE: C then GRADE: I") == "incorrect"
    assert parse_verdict("Correct.") == "correct"
    # Prose is never guessed: "INCORRECT" in a sentence, "correct" in prose, truncated JSON.
    assert parse_verdict("The answer is INCORRECT because ...") is None
    assert parse_verdict("I think this is correct overall") is None
    assert parse_verdict('{"verdict": "corr') is None
    assert parse_verdict('{"verdict": "maybe"}') is None
    assert parse_verdict("") is None


def test_template_has_every_section_and_scripted_judges_read_it() -> None:
    prompt = render_prompt(DEFAULT_TEMPLATE, "Where?", ["Paris", "City of Light"], "Paris, France")
    assert "<question>\nWhere?\n</question>" in prompt
    assert "- Paris\n- City of Light" in prompt and '{"reasoning"' in prompt
    judges = ScriptedJudges({"j": {"Paris, France": "prose-incorrect"}})
    assert parse_verdict(judges.reply("j", prompt) or "") is None
    assert judges.reply("other", prompt) is None and judges.calls["j"] == 1


def test_cache_round_trip_and_key_by_content(tmp_path: Path) -> None:
    key = cache_key({"backend": "bedrock", "model": "m"}, "prompt", {"temperature": 0})
    assert key != cache_key({"backend": "bedrock", "model": "m"}, "prompt", {"temperature": 1})
    cache = JudgeCache(tmp_path / "c.sqlite")
    cache.put(key, CachedReply('{"verdict": "correct"}', 10, 5))
    cache.close()
    again = JudgeCache(tmp_path / "c.sqlite")
    assert again.get(key) == CachedReply('{"verdict": "correct"}', 10, 5)
    assert again.get("other") is None
    again.close()


def test_token_price() -> None:
    assert JudgePrice(0.003, 0.015).cost(1000, 100) == 0.003 + 0.0015


# -- run_judges: pricing, the spend limit, errors, the cache ---------------------------------


@dataclasses.dataclass
class FakeJudgeEndpoint:
    """Answers ``correct`` with fixed usage; item answers starting "err" fail."""

    name: str = "fake"
    calls: int = 0

    @property
    def deployed_by_us(self) -> bool:
        return False

    def deploy(self) -> None: ...

    def teardown(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {}

    def client(self) -> Any:
        endpoint = self

        class Client:
            async def invoke(self, request: InferenceRequest) -> InferenceResult:
                endpoint.calls += 1
                if "<candidate_answer>\nerr" in request.prompt:
                    return InferenceResult(0, 1, error="http_5xx")
                return InferenceResult(0, 1, text='{"verdict": "correct"}', prompt_tokens=1000,
                                       completion_tokens=100)

            async def aclose(self) -> None: ...

        return Client()


def items(n: int, prefix: str = "answer") -> list[JudgeItem]:
    return [JudgeItem(f"k{i}", "q", ("r",), f"{prefix} {i}") for i in range(n)]


def test_cost_spend_limit_errors_and_cache(tmp_path: Path) -> None:
    endpoint = FakeJudgeEndpoint()
    priced = Judge("priced", endpoint, {"model": "p"}, {"max_tokens": 100},
                   price=JudgePrice(0.003, 0.015), concurrency=1)
    per_call = 1000 / 1000 * 0.003 + 100 / 1000 * 0.015  # 0.0045 USD
    cache = JudgeCache(tmp_path / "c.sqlite")
    # The limit admits 3 calls; the estimate (prompt chars / 4, max_tokens) is below the
    # real cost here, so the guard stops on what was really spent.
    calls = run_judges([priced], items(6), cache=cache, spend_limit_usd=3 * per_call + 1e-9)
    statuses = [c.status for c in calls["priced"]]
    assert statuses == ["ok"] * 3 + ["skipped"] * 3 and endpoint.calls == 3
    assert sum(c.cost or 0 for c in calls["priced"]) == pytest.approx(3 * per_call, abs=1e-12)
    # Rerun: the three answered come from the cache at $0; the rest are asked now.
    again = run_judges([priced], items(6), cache=cache)
    assert [c.cached for c in again["priced"]] == [True] * 3 + [False] * 3
    assert endpoint.calls == 6 and sum(c.cost or 0 for c in again["priced"][:3]) == 0
    # Errors are abstentions and are not cached; an unpriced judge costs None, never 0.
    unpriced = Judge("unpriced", FakeJudgeEndpoint(), {"model": "u"}, {}, price=None)
    failed = run_judges([unpriced], items(2, "err"), cache=cache)["unpriced"]
    assert [c.status for c in failed] == ["error", "error"] and all(c.cost is None for c in failed)
    assert run_judges([unpriced], items(2, "err"), cache=cache)["unpriced"][0].cached is False
    cache.close()


def test_judges_served_differently_never_share_cached_verdicts(tmp_path: Path) -> None:
    from pytest_fmbench.accuracy.phase import build_judges
    from pytest_fmbench.accuracy.settings import resolve
    from pytest_fmbench.config.model import Config

    config = Config.model_validate({
        "experiments": [{"name": "x", "backend": "openai", "deploy": False,
                         "openai": {"base_url": "http://127.0.0.1:9"},
                         "payload_files": ["p.jsonl"], "concurrency_levels": [1]}],
        "accuracy": {"judges": [
            {"name": "a", "model_id": "tiny", "endpoint": {"backend": "local", "local": {"model": "tiny"}}},
            {"name": "b", "model_id": "tiny",
             "endpoint": {"backend": "local", "local": {"model": "tiny", "seed": 1}}}]}})
    first, second = build_judges(config, resolve(config).judges, tmp_path, "run", print)
    prompt_params = ("prompt", {"max_tokens": 1})
    assert cache_key(first.identity, *prompt_params) != cache_key(second.identity, *prompt_params)
    assert first.deploys and second.deploys  # local judges start for judging, stop after


def test_evaluate_counts_failed_requests_apart_and_names_an_incompetent_judge(tmp_path: Path) -> None:
    import json

    from pytest_fmbench.accuracy.phase import evaluate
    from pytest_fmbench.accuracy.settings import resolve
    from pytest_fmbench.config.model import Config

    answers = tmp_path / "accuracy" / "answers.jsonl"
    answers.parent.mkdir()
    rows = [{"experiment": "e", "payload_file": "p.jsonl", "item": str(i), "question": "q",
             "references": ["Paris"], "answer": answer, "error": error, "truncated": i == 0}
            for i, (answer, error) in enumerate([("Paris", ""), ("<think>x</think>paris", ""),
                                                 ("", "timeout")])]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Config.model_validate({
        "experiments": [{"name": "e", "backend": "openai", "deploy": False,
                         "openai": {"base_url": "http://127.0.0.1:9"},
                         "payload_files": ["p.jsonl"], "concurrency_levels": [1]}],
        "accuracy": {"quorum": 1, "cache": False}})
    endpoint = FakeJudgeEndpoint()
    judge = Judge("tiny-judge", endpoint, {"backend": "local", "endpoint": {"local": {"model": "tiny"}}}, {})
    outcome = evaluate(config, resolve(config), tmp_path, judges=[judge])
    assert outcome is not None and endpoint.calls == 2  # the failed request is never judged
    exact = next(r for r in outcome.scores if r["scorer"] == "exact_match")
    assert (exact["value"], exact["n"], exact["errored"], exact["truncated"]) == (1.0, 2, 1, 1)
    assert any("tiny-judge serve the embedded random-weight model" in line for line in outcome.lines)
    assert outcome.passed
    # Scorer budgets (minimums per experiment x payload file) join the gate.
    config.accuracy = {"quorum": 1, "cache": False, "budgets": {"exact_match": 1.0, "rouge_l": 1.01}}
    gated = evaluate(config, resolve(config), tmp_path, judges=[])
    assert gated is not None and not gated.passed
    assert [line for line in gated.lines if "FAIL" in line] == [
        "[fmbench] accuracy budget FAIL: e p.jsonl rouge_l 1.000 < 1.01"]


def test_the_answer_tap_passes_everything_through_and_keeps_the_answers() -> None:
    import asyncio

    from pytest_fmbench.accuracy.combination import AnswerTap

    sink: list[tuple[str, str, str]] = []
    tap = AnswerTap(FakeJudgeEndpoint().client(), sink)
    result = asyncio.run(tap.invoke(InferenceRequest("<candidate_answer>\nx", {}, None, "id-1")))
    assert result.text == '{"verdict": "correct"}' and result.prompt_tokens == 1000
    assert sink == [("id-1", '{"verdict": "correct"}', "")]
    assert tap.enforces_timeout is False  # the fake client bounds nothing: the engine guards it
