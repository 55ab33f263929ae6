"""The judge parser fails closed; the template carries every section; cache keys by content."""

from __future__ import annotations

from pathlib import Path

from pytest_fmbench.accuracy.cache import CachedReply, JudgeCache, cache_key
from pytest_fmbench.accuracy.judging import DEFAULT_TEMPLATE, JudgePrice, parse_verdict, render_prompt
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
