"""Unit tests of pytest_fmbench.data: datasets, templates, token counting, payload files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pytest_fmbench.data.longbench import load_longbench_jsonl
from pytest_fmbench.data.payloads import (
    Payload,
    PayloadFilter,
    build_payload_files,
    load_payloads,
)
from pytest_fmbench.data.synthetic import synthetic_longbench
from pytest_fmbench.data.template import DEFAULT_PROMPT_TEMPLATE, load_template, render_prompt
from pytest_fmbench.data.tokens import WordEstimateCounter, load_token_counter
from pytest_fmbench.errors import ConfigError

FMBENCH_RANGES = [(1, 500), (500, 1000), (1000, 2000), (2000, 3000)]
KEYS = ["input", "context"]


def fmbench_filters() -> list[PayloadFilter]:
    return [PayloadFilter(f"payload_en_{low}-{high}.jsonl", low, high, "en")
            for low, high in FMBENCH_RANGES]


def record(_id: str, words: int, language: str = "en") -> dict[str, object]:
    return {"_id": _id, "input": "Why?", "context": " ".join(["word"] * words),
            "language": language, "answers": ["because"]}


# --- synthetic dataset ------------------------------------------------------------------

def test_synthetic_is_deterministic_by_seed() -> None:
    assert synthetic_longbench(50, seed=3) == synthetic_longbench(50, seed=3)
    assert synthetic_longbench(50, seed=3) != synthetic_longbench(50, seed=4)


def test_synthetic_records_have_the_longbench_shape() -> None:
    records = synthetic_longbench(20)
    assert len({r["_id"] for r in records}) == 20
    for r in records:
        assert set(r) == {"_id", "dataset", "language", "input", "context", "answers", "length"}
        assert (r["dataset"], r["language"]) == ("synthetic", "en")
        assert r["length"] == len(r["context"].split())
        assert r["input"].endswith('"') and r["answers"][0] in r["context"]
        assert "::=" not in r["context"] and "****" not in r["context"]


def test_synthetic_spreads_over_every_fmbench_filter_range(tmp_path: Path) -> None:
    started = time.perf_counter()
    records = synthetic_longbench(300)
    assert time.perf_counter() - started < 2  # < 0.5 s here; loose for slow CI machines
    lengths = [r["length"] for r in records]
    assert min(lengths) < 30 and 3000 < max(lengths) <= 3600
    paths = build_payload_files(records, template=DEFAULT_PROMPT_TEMPLATE, keys=KEYS,
                                filters=fmbench_filters(), counter=WordEstimateCounter(),
                                out_dir=tmp_path)
    for name, path in paths.items():
        assert len(load_payloads(path)) >= 15, name


# --- LongBench files --------------------------------------------------------------------

def test_load_longbench_reads_records_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "2wikimqa.jsonl"
    path.write_text(json.dumps(record("a", 3)) + "\n\n" + json.dumps(record("b", 4)) + "\n")
    assert [r["_id"] for r in load_longbench_jsonl(path)] == ["a", "b"]


def test_load_longbench_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record("a", 3)) + "\n{not json\n")
    with pytest.raises(ConfigError) as error:
        load_longbench_jsonl(path)
    assert str(path) in str(error.value) and "line 2" in str(error.value)
    assert error.value.fix and "line 2" in error.value.fix


def test_load_longbench_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as error:
        load_longbench_jsonl(tmp_path / "nope.jsonl")
    assert error.value.file == str(tmp_path / "nope.jsonl") and error.value.fix


# --- prompt templates -------------------------------------------------------------------

def test_render_prompt_leaves_other_braces_untouched() -> None:
    template = ('{"a": 1} {{ jinja }} {{context}} {other}\n'
                "Context: {context}\nQuestion: {input}")
    prompt = render_prompt(template, {"context": "C {input}", "input": "Q"}, KEYS)
    assert prompt == '{"a": 1} {{ jinja }} {{context}} {other}\nContext: C {input}\nQuestion: Q'


def test_render_prompt_default_template() -> None:
    prompt = render_prompt(DEFAULT_PROMPT_TEMPLATE, record("x", 2), KEYS)
    assert "word word" in prompt and "Why?" in prompt and "{" not in prompt


def test_render_prompt_missing_key_names_it() -> None:
    with pytest.raises(ConfigError, match="'context'") as error:
        render_prompt("{context}", {"_id": "r1", "input": "Q"}, KEYS)
    assert "r1" in str(error.value) and error.value.key == "datasets.prompt_template_keys"


def test_load_template(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Q: {input}")
    assert load_template(path) == "Q: {input}"
    with pytest.raises(ConfigError, match="not found") as error:
        load_template(tmp_path / "missing.txt")
    assert error.value.file == str(tmp_path / "missing.txt")


# --- token counters ---------------------------------------------------------------------

def test_estimate_warns_once_and_counts_750_words_as_1000() -> None:
    warnings: list[str] = []
    counter = load_token_counter(None, warn=warnings.append)
    assert counter.source == "estimate"
    assert counter.count(" ".join(["word"] * 750)) == 1000
    assert counter.count_many(["one two", "", "a b c d"]) == [3, 0, 6]
    assert len(warnings) == 1
    assert "estimated" in warnings[0] and "datasets.tokenizer" in warnings[0]


def train_tiny_tokenizer(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]", "[BOS]"])
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "A benchmark measures latency and throughput of an endpoint.",
                 "Tokens are counted with the configured tokenizer."] * 5
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    # A BOS post-processor, like real chat models: it must not be counted.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", tokenizer.token_to_id("[BOS]"))])
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def test_tokenizer_json_directory_uses_the_fast_path(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    directory = train_tiny_tokenizer(tmp_path / "tok")
    warnings: list[str] = []
    counter = load_token_counter(directory, warn=warnings.append)
    text = "The lazy fox measures latency."
    expected = len(Tokenizer.from_file(str(directory / "tokenizer.json"))
                   .encode(text, add_special_tokens=False).ids)
    assert (counter.source, warnings) == ("tokenizer", [])
    assert counter.count(text) == expected
    assert counter.count_many([text, text + " " + text]) == [expected, 2 * expected]
    assert "tokenizer.json" in counter.name


def test_directory_without_tokenizer_json_goes_through_transformers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(["The quick brown fox jumps over the lazy dog."] * 5,
                                vocab_size=300)
    trained.save_model(str(tmp_path))  # vocab.json + merges.txt only: no tokenizer.json
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    warnings: list[str] = []
    counter = load_token_counter(tmp_path, warn=warnings.append)
    assert (counter.source, warnings) == ("tokenizer", [])
    assert counter.count_many(["The lazy fox", ""]) == [
        len(trained.encode("The lazy fox").ids), 0]


def test_bogus_hub_id_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: patch it too if an earlier test
    # imported it already (otherwise the lookup retries an unreachable network for ~45 s).
    try:
        from huggingface_hub import constants as hub_constants
    except ImportError:
        pass
    else:
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    warnings: list[str] = []
    started = time.perf_counter()
    counter = load_token_counter("no-such-org/no-such-model-xyz", warn=warnings.append)
    assert time.perf_counter() - started < 30
    assert counter.source == "estimate"
    assert len(warnings) == 1 and "no-such-org/no-such-model-xyz" in warnings[0]
    assert "estimated" in warnings[0]


def test_missing_local_directory_falls_back_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    counter = load_token_counter(tmp_path / "absent", warn=warnings.append)
    assert counter.source == "estimate"
    assert len(warnings) == 1 and "no such file or directory" in warnings[0]


# --- payload files ----------------------------------------------------------------------

def build(records: list[dict[str, object]], out_dir: Path, *,
          template: str = "{context}", filters: list[PayloadFilter] | None = None,
          max_prompts_per_file: int | None = None) -> dict[str, Path]:
    return build_payload_files(records, template=template, keys=["context"],
                               filters=filters or [PayloadFilter("payload_en_1-10.jsonl", 1, 10),
                                                   PayloadFilter("payload_en_11-99.jsonl", 11, 99)],
                               counter=WordEstimateCounter(), out_dir=out_dir,
                               max_prompts_per_file=max_prompts_per_file)


def test_dataset_name_is_fmbench_name() -> None:
    assert PayloadFilter("payload_en_1-500.jsonl").dataset_name == "en_1-500"
    assert PayloadFilter("custom.jsonl").dataset_name == "custom"


def test_payload_files_filter_by_tokens_and_language(tmp_path: Path) -> None:
    # word counts 3, 6, 9 -> 4, 8, 12 estimated tokens
    records = [record("a", 3), record("b", 6, "zh"), record("c", 9), record("d", 3)]
    filters = [PayloadFilter("payload_en_1-8.jsonl", 1, 8, "en"),
               PayloadFilter("payload_any_8-12.jsonl", 8, 12)]
    paths = build(records, tmp_path, filters=filters)
    assert list(paths) == ["payload_en_1-8.jsonl", "payload_any_8-12.jsonl"]
    english = load_payloads(paths["payload_en_1-8.jsonl"])
    assert english == [Payload("a", "word word word", 4, "estimate", "en"),
                       Payload("d", "word word word", 4, "estimate", "en")]
    assert [p.id for p in load_payloads(paths["payload_any_8-12.jsonl"])] == ["b", "c"]
    limited = build(records, tmp_path / "limited", filters=filters, max_prompts_per_file=1)
    assert [p.id for p in load_payloads(limited["payload_en_1-8.jsonl"])] == ["a"]


def test_payload_files_are_reused_when_unchanged(tmp_path: Path) -> None:
    records = [record("a", 3), record("b", 30)]
    paths = build(records, tmp_path)
    mtimes = {name: path.stat().st_mtime_ns for name, path in paths.items()}
    time.sleep(0.01)
    assert build(records, tmp_path) == paths
    assert {name: path.stat().st_mtime_ns for name, path in paths.items()} == mtimes
    assert not list(tmp_path.glob("*.tmp"))


def test_payload_files_are_rewritten_when_the_template_changes(tmp_path: Path) -> None:
    records = [record("a", 3), record("b", 30)]
    paths = build(records, tmp_path)
    build(records, tmp_path, template="Context: {context}")
    for path in paths.values():
        assert load_payloads(path)[0].prompt.startswith("Context: ")


def test_payload_file_is_rebuilt_when_deleted(tmp_path: Path) -> None:
    records = [record("a", 3), record("b", 30)]
    paths = build(records, tmp_path)
    paths["payload_en_1-10.jsonl"].unlink()
    build(records, tmp_path)
    assert [p.id for p in load_payloads(paths["payload_en_1-10.jsonl"])] == ["a"]


def test_filter_without_prompts_explains_range_and_fix(tmp_path: Path) -> None:
    records = [record("a", 3), record("b", 30)]  # 4 and 40 tokens
    empty = PayloadFilter("payload_en_3000-4000.jsonl", 3000, 4000, "en")
    with pytest.raises(ConfigError) as error:
        build(records, tmp_path, filters=[empty])
    message = str(error.value)
    assert "payload_en_3000-4000.jsonl" in message and "3000-4000 tokens" in message
    assert "4-40 tokens" in message
    assert error.value.fix and "widen" in error.value.fix and "longer" in error.value.fix


def test_filter_with_unknown_language_says_which_languages_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="language 'fr'.*en"):
        build([record("a", 3)], tmp_path, filters=[PayloadFilter("payload_fr.jsonl",
                                                                  language="fr")])


def test_load_payloads_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_payloads(tmp_path / "payload_en_1-500.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no prompts") as error:
        load_payloads(tmp_path / "empty.jsonl")
    assert error.value.file == str(tmp_path / "empty.jsonl")
