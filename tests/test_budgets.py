"""Unit tests of pytest_fmbench.budgets: sources and precedence, parsing errors, verdicts, gate."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pytest_fmbench.budgets import (
    Budget,
    BudgetSet,
    Violation,
    budget_set,
    evaluate,
    format_value,
    gate,
    parse_cli_budgets,
    require_prices,
)
from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import Config
from pytest_fmbench.config.pricing import check_prices
from pytest_fmbench.errors import ConfigError


def config(tmp_path: Path, top: str = "", exp_a: str = "", exp_b: str = "") -> Config:
    path = tmp_path / "cfg.yml"
    path.write_text(textwrap.dedent(f"""\
        datasets:
          filters: [{{payload_file: p.jsonl}}]
        experiments:
          - name: a
            backend: openai
            deploy: no
            openai: {{base_url: "http://127.0.0.1:9"}}
            price_per_hour: 1.0
            payload_files: [p.jsonl]
            concurrency_levels: [1]
            {exp_a}
          - name: b
            backend: openai
            deploy: no
            openai: {{base_url: "http://127.0.0.1:9"}}
            payload_files: [p.jsonl]
            concurrency_levels: [1]
            {exp_b}
        """) + textwrap.dedent(top))
    return load_config(path)


def test_fmbench_report_keys_become_budgets(tmp_path: Path) -> None:
    cfg = config(tmp_path, "report: {latency_budget: 2, cost_per_10k_txn_budget: 50, error_rate_budget: 0}\n")
    budgets = budget_set(cfg)
    assert {m: (b.threshold, b.direction, b.source) for m, b in budgets.common.items()} == {
        "latency_p95": (2.0, "max", "report.latency_budget"),
        "cost_per_10k_txn": (50.0, "max", "report.cost_per_10k_txn_budget"),
        "error_rate": (0.0, "max", "report.error_rate_budget"),
    }


def test_precedence_report_then_budgets_then_experiment_then_command_line(tmp_path: Path) -> None:
    cfg = config(tmp_path, "report: {latency_budget: 2}\nbudgets: {latency_p95: 3, ttft_p95: 0.5}\n",
                 exp_a="budgets: {ttft_p95: 0.2, transactions_per_minute: 100}")
    budgets = budget_set(cfg)
    assert budgets.for_experiment("b")["latency_p95"].threshold == 3.0
    assert budgets.for_experiment("a")["ttft_p95"].threshold == 0.2
    assert budgets.for_experiment("b")["ttft_p95"].threshold == 0.5
    assert budgets.for_experiment("a")["transactions_per_minute"].direction == "min"
    assert "transactions_per_minute" not in budgets.for_experiment("b")
    cli = budget_set(cfg, ["ttft_p95=1.5", "latency_p95=9"])
    assert cli.for_experiment("a")["ttft_p95"].threshold == 1.5
    assert cli.for_experiment("a")["ttft_p95"].source == "--fmbench-budget"
    assert cli.for_experiment("b")["latency_p95"].threshold == 9.0


def test_fmbench_key_names_are_accepted_in_budgets(tmp_path: Path) -> None:
    cfg = config(tmp_path, "budgets: {latency_budget: 1.5}\n")
    assert budget_set(cfg).common["latency_p95"].threshold == 1.5


@pytest.mark.parametrize(("top", "exp_a", "message", "key"), [
    ("budgets: {ttft_p96: 0.5}\n", "", "budget on unknown metric 'ttft_p96'", "budgets.ttft_p96"),
    ("budgets: {ttft_p95: fast}\n", "", "budget 'fast' for ttft_p95 is not a number", "budgets.ttft_p95"),
    ("budgets: {ttft_p95: true}\n", "", "budget True for ttft_p95 is not a number", "budgets.ttft_p95"),
    ("budgets: {ttft_p95: [1]}\n", "", "is not a number", "budgets.ttft_p95"),
    ("budgets: {latency_p95: -1}\n", "", "is negative", "budgets.latency_p95"),
    ("budgets: {error_rate: 5}\n", "", "a fraction above 1", "budgets.error_rate"),
    ("budgets: {requests: 5}\n", "", "is a count, not a metric", "budgets.requests"),
    ("", "budgets: {latncy_p95: 1}", "unknown metric 'latncy_p95'", "experiments[0] (a).budgets.latncy_p95"),
])
def test_budget_mistakes_are_one_clear_message(tmp_path: Path, top: str, exp_a: str, message: str,
                                               key: str) -> None:
    with pytest.raises(ConfigError) as info:
        budget_set(config(tmp_path, top, exp_a=exp_a))
    assert message in info.value.message
    assert info.value.key == key
    assert info.value.fix


def test_unknown_metric_suggests_the_closest_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        budget_set(config(tmp_path, "budgets: {latncy_p50: 1}\n"))
    assert "did you mean 'latency_p50'?" in info.value.fix
    assert "latency_{mean,p50,p90,p95,p99}" in info.value.fix


@pytest.mark.parametrize(("pairs", "message"), [
    (["latency_p95"], "expects METRIC=VALUE"),
    (["=2"], "expects METRIC=VALUE"),
    (["latency_p95=abc"], "'abc' for latency_p95 is not a number"),
    (["tpm=100"], "unknown metric 'tpm'"),
])
def test_command_line_budget_mistakes(pairs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cli_budgets(pairs)


def test_command_line_budgets_parse() -> None:
    assert parse_cli_budgets(["latency_p95=2.0", "goodput=0.5", "error_rate_budget=0.01"]) == {
        "latency_p95": 2.0, "goodput": 0.5, "error_rate": 0.01}


def test_cost_budget_needs_a_price(tmp_path: Path) -> None:
    cfg = config(tmp_path, "report: {cost_per_10k_txn_budget: 5}\n")
    with pytest.raises(ConfigError) as info:
        require_prices(cfg, budget_set(cfg), check_prices(cfg))
    assert info.value.key == "experiments[1] (b).price_per_hour"
    cfg = config(tmp_path, "report: {latency_budget: 5}\n")
    require_prices(cfg, budget_set(cfg), check_prices(cfg))  # no cost budget: fine


def table(rows: list[dict]) -> pd.DataFrame:
    base = {"payload_file": "payload_en_1-500.jsonl", "instance_type": None, "requests": 10,
            "price_per_txn": 0.001, "cost_per_10k_txn": 10.0, "error_rate": 0.0,
            "transactions_per_minute": 60.0, "latency_p95": 1.0}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_directions_and_undefined_values() -> None:
    budgets = BudgetSet({"latency_p95": Budget("latency_p95", 2.0, "t"),
                         "transactions_per_minute": Budget("transactions_per_minute", 50.0, "t")})
    frame = table([{"experiment": "x", "concurrency": 1},
                   {"experiment": "x", "concurrency": 2, "latency_p95": 3.21},
                   {"experiment": "x", "concurrency": 4, "transactions_per_minute": 10.0},
                   {"experiment": "x", "concurrency": 8, "latency_p95": float("nan")}])
    meets, violations = evaluate(frame, budgets)
    assert meets.tolist() == [True, False, False, False]
    assert [v.line() for v in violations] == [
        "latency_p95 3.21 s > 2.00 s: x payload_en_1-500 c=2",
        "transactions_per_minute 10.00 txn/min < 50.00 txn/min: x payload_en_1-500 c=4",
        "latency_p95 undefined > 2.00 s: x payload_en_1-500 c=8",
    ]


def test_violation_line_matches_the_issue_example() -> None:
    v = Violation("llama-g5-xlarge", "payload_en_1000-2000.jsonl", 4, "latency_p95", 3.2149, 2.0, "max", "s")
    assert v.line() == "latency_p95 3.21 s > 2.00 s: llama-g5-xlarge payload_en_1000-2000 c=4"


def test_gate_modes() -> None:
    budgets = BudgetSet({"latency_p95": Budget("latency_p95", 2.0, "t")})
    frame = table([{"experiment": "x", "concurrency": 1}, {"experiment": "x", "concurrency": 2, "latency_p95": 3.0}])
    best = gate(frame, budgets, "best")
    assert best.passed and best.recommendation.best["concurrency"] == 1
    every = gate(frame, budgets, "every")
    assert not every.passed and "1 of 2 combinations" in every.summary
    strict = BudgetSet({"latency_p95": Budget("latency_p95", 0.5, "t")})
    assert not gate(frame, strict, "best").passed


def test_no_budgets_pass_and_still_pick_the_cheapest() -> None:
    frame = table([{"experiment": "x", "concurrency": 1, "price_per_txn": 0.002},
                   {"experiment": "x", "concurrency": 2, "price_per_txn": 0.001}])
    verdict = gate(frame, BudgetSet(), "best")
    assert verdict.passed and verdict.recommendation.best["concurrency"] == 2
    assert "no budgets configured" in verdict.summary


def test_format_value_units() -> None:
    assert format_value(3.2149, "s") == "3.21 s"
    assert format_value(0.0451, "s") == "0.0451 s"
    assert format_value(0.125, "fraction") == "12.50 %"
    assert format_value(12.3456, "USD") == "12.35 USD"
    assert format_value(float("nan"), "s") == "undefined"
