"""Unit tests of pytest_fmbench.report: files, sections, exports and robustness, from the vector."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import Config
from pytest_fmbench.load.columnar import ColumnarRecordWriter
from pytest_fmbench.report import build_report, plots, timeline
from pytest_fmbench.report.exports import FMBENCH_METRIC_COLUMNS, REDACTED, redact
from pytest_fmbench.report.session import finish, prepare
from tests.metrics_vector import EVENTS, vector_records

CONFIG = """\
general: {name: vector}
datasets:
  filters:
    - {payload_file: payload_en_1-500.jsonl, max_length_in_tokens: 500}
    - {payload_file: payload_en_500-1000.jsonl, min_length_in_tokens: 500, max_length_in_tokens: 1000}
metrics: {dataset_of_interest: en_1-500}
pricing:
  instance_based: {ml.test.xlarge: 3.0}
  token_based: {vendor.model-v1:0: {input-per-1k-tokens: 0.001, output-per-1k-tokens: 0.002}}
report: {latency_budget: 3, cost_per_10k_txn_budget: 40, error_rate_budget: 0}
experiments:
  - name: alpha
    backend: openai
    deploy: no
    instance_type: ml.test.xlarge
    instance_count: 2
    openai: {base_url: "http://127.0.0.1:9", api_key_env: VECTOR_KEY, headers: {Authorization: "Bearer sekrit-header"}}
    payload_files: [payload_en_1-500.jsonl]
    concurrency_levels: [2, 4, 8, 16]
  - name: beta
    backend: bedrock
    model_id: vendor.model-v1:0
    payload_files: [payload_en_1-500.jsonl]
    concurrency_levels: [1]
  - name: gamma
    backend: openai
    deploy: no
    instance_type: g5.test
    price_per_hour: 3.6
    openai: {base_url: "http://user:pw@127.0.0.1:9"}
    payload_files: [payload_en_500-1000.jsonl]
    concurrency_levels: [1]
"""


def results_dir(tmp_path: Path) -> tuple[Path, Config]:
    folder = tmp_path / "results"
    writer = ColumnarRecordWriter(folder / "records.jsonl")
    records = vector_records()
    writer.write_many(records[:8])
    writer.checkpoint()
    writer.close()
    other = ColumnarRecordWriter(folder / "records-gw1.jsonl")  # a second process
    other.write_many(records[8:])
    other.close()
    (folder / "endpoints.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    path = tmp_path / "cfg.yml"
    path.write_text(CONFIG)
    return folder, load_config(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp_path = tmp_path_factory.mktemp("report")
    folder, config = results_dir(tmp_path)
    settings = prepare(config)
    outcome = build_report(folder, config, settings.prices, settings.budgets, settings.mode)
    return folder, outcome


def test_every_file_is_written(built) -> None:
    folder, outcome = built
    assert outcome.errors == []
    for name in ("report.md", "results.json", "all_metrics.csv", "per_inference_request_results.csv"):
        assert (folder / name).is_file(), name
    # The eight plots, the prompt-length box plot and one timeline per experiment (telemetry).
    experiments = json.loads((folder / "results.json").read_text())["metrics"]
    expected = [name for name, _ in plots.PLOTS] + [timeline.BOX_PLOT] + sorted(
        {timeline.timeline_name(row["experiment_name"]) for row in experiments})
    assert sorted(p.name for p in (folder / "plots").glob("*.png")) == sorted(expected)
    assert not list(folder.glob("*.tmp"))


def test_report_sections(built) -> None:
    folder, _ = built
    text = (folder / "report.md").read_text()
    for heading in ("## Best option", "## Budgets", "### Violations", "## Results",
                    "### How many requests back each figure",
                    "## Recommended concurrency per instance type and payload file",
                    "## Cost per experiment", "## Plots", "## Prices used", "## Glossary",
                    "## Config used (secrets redacted)"):
        assert heading in text, heading
    assert "**Budget gate (best): PASSED**" in text
    assert "For the dataset of interest `en_1-500`" in text
    for name, _ in plots.PLOTS:
        assert f"](plots/{name})" in text
    # the FMBench results table
    assert "| experiment_name | payload_file | instance_type | concurrency | requests | error_rate |" in text
    assert "price_per_hour | price_per_txn | price_per_token |" in text
    # total cost: 6 USD/h × 200 s + 0.0048 USD of tokens + 3.6 USD/h × 10 s
    assert f"**{6 * 200 / 3600 + 0.0048 + 0.01:.3g} USD**" in text
    assert "`latency_p95 3.85 s > 3.00 s: alpha payload_en_1-500 c=2`" in text
    assert "TPOT" in text and "time per output token" in text  # glossary
    # the client's own overhead, per case where it was saturated
    assert "**Client saturated** in these cases" in text
    assert "| alpha | payload_en_1-500.jsonl | 2 | 1 of 4 | 0.012 s |" in text


def test_config_is_redacted(built, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = built
    text = (folder / "report.md").read_text()
    assert "sekrit-header" not in text and "user:pw@" not in text
    assert REDACTED in text
    assert "api_key_env: VECTOR_KEY" in text  # the variable's name is no secret


def test_redact_env_values_and_secret_keys() -> None:
    data = {"openai": {"api_key_env": "MY_KEY", "extra_body": {"note": "prefix-hunter2-suffix"}},
            "env": {"HF_TOKEN": "hf_abc", "MAX_TOTAL_TOKENS": "4096"}, "password": "p",
            "inference_parameters": {"max_new_tokens": 32}, "aws_secret_access_key": "x"}
    out = redact(data, {"MY_KEY": "hunter2"})
    assert out["openai"]["extra_body"]["note"] == f"prefix-{REDACTED}-suffix"
    # allow-list: every env value, whatever its name
    assert out["env"] == {"HF_TOKEN": REDACTED, "MAX_TOTAL_TOKENS": REDACTED}
    assert out["password"] == REDACTED and out["aws_secret_access_key"] == REDACTED
    assert out["inference_parameters"] == {"max_new_tokens": 32}
    assert out["openai"]["api_key_env"] == "MY_KEY"


def test_csv_exports_use_fmbench_names(built) -> None:
    folder, _ = built
    with open(folder / "all_metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[: len(FMBENCH_METRIC_COLUMNS)] == list(FMBENCH_METRIC_COLUMNS)
    assert {"ttft_p95", "goodput", "cost_per_10k_txn", "meets_budgets"} <= set(rows[0])
    assert len(rows) == 6
    first = rows[0]
    assert (first["experiment_name"], first["concurrency"], first["transactions"]) == ("alpha", "2", "4")
    assert float(first["transactions_per_second"]) == pytest.approx(32 / 60)
    with open(folder / "per_inference_request_results.csv", newline="") as handle:
        requests = list(csv.DictReader(handle))
    assert len(requests) == len(vector_records())
    for column in ("endpoint_name", "experiment_name", "concurrency", "payload_file", "instance_type",
                   "prompt_tokens", "completion_tokens", "latency", "time_to_first_token",
                   "time_per_output_token", "time_to_last_token", "uuid", "error", "client_queue_s"):
        assert column in requests[0], column
    failed = [r for r in requests if r["error"]]
    assert failed and all(r["latency"] == "" and r["elapsed_s"] for r in failed)


def test_results_json(built) -> None:
    folder, _ = built
    data = json.loads((folder / "results.json").read_text())
    assert data["gate"]["passed"] is True
    assert (data["gate"]["best"]["experiment"], data["gate"]["best"]["concurrency"]) == ("alpha", 16)
    assert data["requests"] == len(vector_records())
    assert data["total_cost"] == pytest.approx(6 * 200 / 3600 + 0.0048 + 0.01)
    assert set(data["budgets"]["common"]) == {"latency_p95", "cost_per_10k_txn", "error_rate"}
    assert {"versions", "config_hash", "finished", "host"} <= set(data["run"])
    zero = next(m for m in data["metrics"] if m["experiment_name"] == "alpha" and m["concurrency"] == 8)
    assert zero["price_per_txn"] is None and zero["successes"] == 0  # undefined, not a number
    assert "latency_p95" in data["metric_definitions"]
    assert len(data["gate"]["violations"]) >= 4


def test_a_broken_plot_loses_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, config = results_dir(tmp_path)

    def broken(inputs, path):
        raise RuntimeError("no ink")

    monkeypatch.setitem(plots.RENDERERS, "latency_cdf.png", broken)
    settings = prepare(config)
    outcome = build_report(folder, config, settings.prices, settings.budgets)
    assert outcome.errors == ["plot latency_cdf.png: RuntimeError: no ink"]
    assert (folder / "report.md").is_file() and (folder / "results.json").is_file()
    assert not (folder / "plots" / "latency_cdf.png").exists()
    assert (folder / "plots" / "latency_percentiles.png").is_file()
    assert (folder / "plots" / timeline.BOX_PLOT).is_file()
    assert "could not be built" in (folder / "report.md").read_text()
    assert (folder / "records.jsonl").is_file()


def test_nothing_ran_writes_no_report(tmp_path: Path) -> None:
    _, config = results_dir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = prepare(config)
    assert build_report(empty, config, settings.prices, settings.budgets) is None
    outcome = finish(empty, config, settings)
    assert outcome.passed and not outcome.ran
    assert not (empty / "report.md").exists()


def test_finish_fails_the_gate_and_summarizes(tmp_path: Path) -> None:
    folder, config = results_dir(tmp_path)
    settings = prepare(config, ["latency_p95=0.5"])
    outcome = finish(folder, config, settings)
    assert not outcome.passed and outcome.ran
    text = "\n".join(outcome.lines)
    assert "best option (dataset of interest en_1-500): none meets every budget" in text
    assert "budget gate (best): FAILED" in text
    assert "latency_p95 3.85 s > 0.5 s: alpha payload_en_1-500 c=2" in text
    assert f"report: {folder / 'report.md'}" in text
    assert "VIOLATES latency_p95" in text


def test_finish_survives_a_broken_analysis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, config = results_dir(tmp_path)
    from pytest_fmbench import report

    monkeypatch.setattr(report, "analyze", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
    outcome = finish(folder, config, prepare(config))
    assert not outcome.passed  # budgets were configured and could not be judged
    assert "records are intact" in "\n".join(outcome.lines)
    assert (folder / "records.jsonl").stat().st_size > 0


def test_undefined_values_show_as_dashes(built) -> None:
    folder, _ = built
    text = (folder / "report.md").read_text()
    line = next(l for l in text.splitlines() if l.startswith("| alpha | payload_en_1-500 |") and "| 8 |" in l)
    assert "nan" not in line.lower() and "—" in line
