"""FMBench's own configs load and collect offline (issue 10 item 1): benchmarks/fmbench_corpus.py.

The wheels are downloaded from PyPI at test time (cached in the temporary directory); the
test skips only when PyPI cannot be reached.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "pytest-fmbench-corpus"
# version → (benchmark configs in the wheel, at least this many must pass).
# 2.0.26: the issue counted 216 files; 3 of them are not benchmark configs (pricing.yml,
# pricing_fallback.yml, model_eval_all_info.yml), so 213 remain, and 3 misses are allowed.
THRESHOLDS = {"2.1.6": (233, 230), "2.0.26": (213, 210), "1.0.52": (75, 73)}


def corpus_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fmbench_corpus", ROOT / "benchmarks" / "fmbench_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    module = corpus_module()
    for version in THRESHOLDS:
        try:
            module.pypi_wheel(version, CACHE)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"PyPI unreachable, cannot download fmbench=={version}: "
                        f"{exc.stderr.decode(errors='replace')[-300:]}")
    return module


@pytest.mark.parametrize("version", list(THRESHOLDS))
def test_every_fmbench_config_loads_and_collects_offline(corpus: ModuleType, version: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert importlib.util.find_spec("sagemaker") is None, "the corpus must load without the SDK"
    total, least = THRESHOLDS[version]
    result = corpus.run_version(version, CACHE, collect=1)
    print("\n".join(corpus.report(result)))
    assert len(result.outcomes) == total
    assert result.passed >= least, corpus.report(result)
    # The plugin path: pytest benchmarks/ --collect-only, no credentials, as a user runs it.
    assert result.collected and all(o.ok for o in result.collected), corpus.report(result)


def test_a_miss_is_named_with_its_reason(corpus: ModuleType, tmp_path: Path) -> None:
    # A config we cannot load is a miss with the loader's message, never a crash.
    configs = tmp_path / "fmbench" / "configs"
    configs.mkdir(parents=True)
    (configs / "broken.yml").write_text(
        "experiments:\n  - name: a\n    no_such_key: 1\n    payload_files: [p.jsonl]\n"
        "    concurrency_levels: [1, 2]\n", encoding="utf-8")
    (configs / "pricing.yml").write_text("pricing:\n  instance_based: {}\n", encoding="utf-8")
    [outcome] = [corpus.check_config(p, configs) for p in corpus.extract_configs_in(tmp_path)]
    assert not outcome.ok
    assert outcome.expected == 2
    assert "unknown key 'no_such_key'" in outcome.reason


def test_the_corpus_script_runs_as_a_command(corpus: ModuleType) -> None:
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fmbench_corpus.py"),
                              "--cache", str(CACHE), "--collect", "0", "--keys", "1.0.52"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "fmbench 1.0.52: 75/75" in process.stdout
    assert "keys missing" not in process.stdout


def test_fmbench_keys_cover_what_fmbench_code_reads(corpus: ModuleType) -> None:
    read = corpus.source_keys(corpus.pypi_wheel("2.1.6", CACHE))
    # The scanner finds reads in modules and notebooks alike...
    assert {"latency_latitude", "generate_html_report"} <= read["report"]
    assert {"split_input_and_parameters", "stop_token", "headers"} <= read["experiments.inference_spec"]
    # ...and every key FMBench's code reads is in fmbench_keys.py (the keys its configs carry
    # are, or those configs would not load in the test above).
    for version in THRESHOLDS:
        for section, keys in corpus.source_keys(corpus.pypi_wheel(version, CACHE)).items():
            assert keys <= FMBENCH_KEYS[section], (version, section, keys - FMBENCH_KEYS[section])
