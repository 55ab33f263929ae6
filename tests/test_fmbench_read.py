"""Unit tests of pytest_fmbench.data.fmbench_read: FMBench's read dir and read bucket (moto S3)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from pytest_fmbench.config.model import Config
from pytest_fmbench.data.fmbench_read import (
    LocalReadDir,
    S3ReadBucket,
    configured_read_dir,
    hf_dataset_parts,
    load_hf_dataset,
    read_source,
    resolve_inputs,
    use_read_dir_pricing,
    uses_read_data,
)
from pytest_fmbench.errors import ConfigError
from tests.fmbench_support import (
    fill_bucket,
    read_layout_files,
    write_read_dir,
)

SECTION: dict[str, Any] = {
    "read_bucket": "sagemaker-fmbench-read-us-east-1-123456789012",
    "scripts_prefix": "scripts", "script_files": ["hf_token.txt"],  # FMBench-only keys: kept
    "configs_prefix": "configs", "config_files": ["pricing.yml"],
    "source_data_prefix": "source_data",
    "source_data_files": ["2wikimqa_e.jsonl", "hotpotqa_e.jsonl"],
    "tokenizer_prefix": "llama3_tokenizer",
    "prompt_template_dir": "prompt_template",
    "prompt_template_file": "prompt_template_llama3.txt",
}


def config(section: dict[str, Any] | None = None, **datasets: Any) -> Config:
    return Config.model_validate({
        "s3_read_data": SECTION if section is None else section,
        "datasets": {"filters": [{"payload_file": "p.jsonl"}], **datasets},
        "experiments": [{"name": "e", "backend": "openai", "payload_files": ["p.jsonl"],
                         "concurrency_levels": [1]}],
    })


def with_tokenizer(files: dict[str, bytes]) -> dict[str, bytes]:
    return {**files, "llama3_tokenizer/tokenizer.json": b"{}", "llama3_tokenizer/config.json": b"{}"}


def no_s3() -> Any:
    raise AssertionError("the read dir wins: S3 must not be touched")


def test_fmbench_read_section_applies_unless_our_own_data_is_named() -> None:
    assert uses_read_data(config())
    assert not uses_read_data(config(source_files=["mine.jsonl"]))
    assert not uses_read_data(config(synthetic={"records": 10}))
    assert not uses_read_data(config({**SECTION, "source_data_files": None}))


def test_read_dir_in_fmbench_layout_resolves_data_template_and_tokenizer(tmp_path: Path) -> None:
    root = write_read_dir(tmp_path / "fmbench-read", with_tokenizer(read_layout_files(SECTION)))
    cfg = config()
    source = read_source(cfg, read_dir=root, cache_dir=tmp_path / "cache", s3_client=no_s3)
    inputs = resolve_inputs(cfg, source, cache_dir=tmp_path / "cache")
    assert inputs.source_files == [root / "source_data/2wikimqa_e.jsonl",
                                   root / "source_data/hotpotqa_e.jsonl"]
    assert inputs.prompt_template == root / "prompt_template/prompt_template_llama3.txt"
    assert inputs.tokenizer_dir == root / "llama3_tokenizer"


def test_fmbench_local_mode_keys_name_the_read_dir(tmp_path: Path) -> None:
    local = {**SECTION, "s3_or_local_file_system": "local", "local_file_system_path": str(tmp_path)}
    assert configured_read_dir(config(local).s3_read_data) == tmp_path
    assert isinstance(read_source(config(local), read_dir=None, cache_dir=tmp_path,
                                  s3_client=no_s3), LocalReadDir)
    default = configured_read_dir(config({**SECTION, "s3_or_local_file_system": "local"}).s3_read_data)
    assert default is not None and default.name == "fmbench-read"
    assert configured_read_dir(config().s3_read_data) is None


def test_a_missing_file_names_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    files = read_layout_files(SECTION)
    del files["source_data/hotpotqa_e.jsonl"]
    root = write_read_dir(tmp_path, files)
    cfg = config()
    with pytest.raises(ConfigError) as error:
        resolve_inputs(cfg, LocalReadDir(root), cache_dir=tmp_path)
    text = error.value.render()
    assert str(root / "source_data/hotpotqa_e.jsonl") in text
    assert "s3_read_data.source_data_files" in text and "--fmbench-read-dir" in text

    (root / "source_data/hotpotqa_e.jsonl").write_text("{}\n")
    (root / "prompt_template/prompt_template_llama3.txt").unlink()
    with pytest.raises(ConfigError, match="prompt_template/prompt_template_llama3.txt"):
        resolve_inputs(cfg, LocalReadDir(root), cache_dir=tmp_path)


def test_no_read_dir_and_no_bucket_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        read_source(config({**SECTION, "read_bucket": None}), read_dir=None, cache_dir=tmp_path,
                    s3_client=no_s3)
    assert "--fmbench-read-dir" in error.value.render() and "synthetic" in error.value.render()
    with pytest.raises(ConfigError, match="does not exist"):
        read_source(config(), read_dir=tmp_path / "nope", cache_dir=tmp_path, s3_client=no_s3)


def test_tokenizer_is_optional_like_in_fmbench(tmp_path: Path) -> None:
    root = write_read_dir(tmp_path, read_layout_files(SECTION))
    assert resolve_inputs(config(), LocalReadDir(root), cache_dir=tmp_path).tokenizer_dir is None


# -- the read bucket on moto's S3 ---------------------------------------------------------------



def test_read_bucket_is_downloaded_once_into_the_cache(s3: Any, tmp_path: Path) -> None:
    fill_bucket(s3, SECTION["read_bucket"], with_tokenizer(read_layout_files(SECTION)))
    cfg = config()
    calls: list[str] = []

    def client() -> Any:
        calls.append("client")
        return boto3.client("s3")

    source = read_source(cfg, read_dir=None, cache_dir=tmp_path, s3_client=client)
    assert isinstance(source, S3ReadBucket)
    inputs = resolve_inputs(cfg, source, cache_dir=tmp_path)
    cached = tmp_path / SECTION["read_bucket"]
    assert inputs.origin == f"s3://{SECTION['read_bucket']}"
    assert inputs.source_files == [cached / "source_data/2wikimqa_e.jsonl",
                                   cached / "source_data/hotpotqa_e.jsonl"]
    assert inputs.source_files[0].read_bytes() == read_layout_files(SECTION)["source_data/2wikimqa_e.jsonl"]
    assert inputs.prompt_template is not None and inputs.prompt_template.read_text().startswith("Context:")
    assert inputs.tokenizer_dir == cached / "llama3_tokenizer/"
    assert sorted(p.name for p in inputs.tokenizer_dir.glob("*.json")) == ["config.json", "tokenizer.json"]
    assert calls == ["client"]

    # Unchanged objects are not downloaded again; a changed one is.
    stamp = inputs.source_files[0].stat().st_mtime_ns
    s3.put_object(Bucket=SECTION["read_bucket"], Key="source_data/hotpotqa_e.jsonl", Body=b"{}\n")
    again = resolve_inputs(cfg, read_source(cfg, read_dir=None, cache_dir=tmp_path, s3_client=client),
                           cache_dir=tmp_path)
    assert again.source_files[0].stat().st_mtime_ns == stamp
    assert again.source_files[1].read_bytes() == b"{}\n"


def test_a_file_missing_from_the_bucket_names_its_s3_uri(s3: Any, tmp_path: Path) -> None:
    files = read_layout_files(SECTION)
    del files["source_data/2wikimqa_e.jsonl"]
    fill_bucket(s3, SECTION["read_bucket"], files)
    source = read_source(config(), read_dir=None, cache_dir=tmp_path, s3_client=lambda: boto3.client("s3"))
    with pytest.raises(ConfigError) as error:
        resolve_inputs(config(), source, cache_dir=tmp_path)
    assert f"s3://{SECTION['read_bucket']}/source_data/2wikimqa_e.jsonl" in error.value.render()


def test_an_unreadable_bucket_is_one_usage_error(s3: Any, tmp_path: Path) -> None:
    source = read_source(config(), read_dir=None, cache_dir=tmp_path, s3_client=lambda: boto3.client("s3"))
    with pytest.raises(ConfigError) as error:
        resolve_inputs(config(), source, cache_dir=tmp_path)  # the bucket does not exist
    text = error.value.render()
    assert "s3_read_data.read_bucket" in text and "credentials" in text


# -- Hugging Face datasets ------------------------------------------------------------------------

def test_hf_dataset_ids_follow_fmbench() -> None:
    assert hf_dataset_parts("hf:THUDM/LongBench") == ("THUDM/LongBench", "default", "train")
    assert hf_dataset_parts("hf:THUDM/LongBench/2wikimqa_e/test") == ("THUDM/LongBench", "2wikimqa_e", "test")
    with pytest.raises(ConfigError, match="not a Hugging Face dataset id"):
        hf_dataset_parts("hf:justone")


def test_hf_sources_load_through_the_loader_or_a_stored_copy(tmp_path: Path) -> None:
    section = {**SECTION, "source_data_files": ["hf:org/data/sub/test", "hf:org/stored"]}
    files = read_layout_files({**section, "source_data_files": []})
    files["source_data/hf:org/stored.jsonl"] = b'{"input": "q", "context": "c"}\n'
    root = write_read_dir(tmp_path / "read", files)
    asked: list[tuple[str, int]] = []

    def loader(name: str, records: int) -> list[dict[str, Any]]:
        asked.append((name, records))
        return [{"input": "q", "context": "c", "language": "en"}]

    inputs = resolve_inputs(config(section), LocalReadDir(root), cache_dir=tmp_path / "cache",
                            hf_loader=loader)
    assert asked == [("hf:org/data/sub/test", 100)]
    assert inputs.source_files[0].read_text().startswith('{"input": "q"')
    assert inputs.source_files[1] == root / "source_data/org/stored.jsonl"  # FMBench's local layout


def test_hf_without_the_datasets_library_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError) as error:
        load_hf_dataset("hf:org/data", 10)
    assert "pip install datasets" in error.value.render()


def test_a_custom_pricing_file_is_taken_from_the_read_dir_configs(tmp_path: Path) -> None:
    root = write_read_dir(tmp_path / "read", {"configs/custom_pricing.yml": b"pricing: {}\n"})
    cfg = config()
    cfg.pricing = "custom_pricing.yml"
    assert use_read_dir_pricing(cfg, root) == root / "configs/custom_pricing.yml"
    assert cfg.pricing == str((root / "configs/custom_pricing.yml").resolve())
    cfg.pricing = "absent.yml"
    assert use_read_dir_pricing(cfg, root) is None and cfg.pricing == "absent.yml"
    assert use_read_dir_pricing(cfg, None) is None


def test_a_run_takes_data_template_and_tokenizer_from_the_read_dir(tmp_path: Path) -> None:
    from pytest_fmbench.run import BenchmarkRun

    files = with_tokenizer(read_layout_files(SECTION, records=5, template="Q: {input}\nC: {context}"))
    root = write_read_dir(tmp_path / "read", files)
    logs: list[str] = []
    run = BenchmarkRun(config(), run_id="r", results_dir=tmp_path / "out", read_dir=root,
                       log=logs.append)
    try:
        assert run._tokenizer_spec() == str(root / "llama3_tokenizer")
        assert run._template() == "Q: {input}\nC: {context}"
        assert len(run._dataset_records()) == 10  # two files of five
        assert any("from the FMBench read dir" in line for line in logs)
        # Our own keys win over FMBench's section.
        run.config.datasets.tokenizer = "mine"
        assert run._tokenizer_spec() == "mine"
    finally:
        run.close()
