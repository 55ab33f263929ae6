"""Unit tests of pytest_fmbench.metrics against the hand-computed vector (tests/metrics_vector.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pytest_fmbench.budgets import Budget, BudgetSet, gate
from pytest_fmbench.metrics import (
    METRICS,
    ExperimentInfo,
    compute_metrics,
    dataset_of_interest_mask,
    experiment_costs,
    slo_thresholds,
)
from tests.metrics_vector import DATASET_OF_INTEREST, EVENTS, P1, P2, PRICES, vector_records

INFO = {"alpha": ExperimentInfo(instance_type="ml.test.xlarge", instance_count=2, order=0),
        "beta": ExperimentInfo(instance_type="vendor.model-v1:0", order=1),
        "gamma": ExperimentInfo(instance_type="g5.test", order=2)}
EXACT = {"rel": 1e-12, "abs": 1e-12}


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return compute_metrics(vector_records(), prices=PRICES, info=INFO,
                           slos={"alpha": {"latency": 3.0}})


def row(metrics: pd.DataFrame, experiment: str, payload: str, concurrency: int) -> dict:
    match = metrics[(metrics.experiment == experiment) & (metrics.payload_file == payload)
                    & (metrics.concurrency == concurrency)]
    assert len(match) == 1
    return match.iloc[0].to_dict()


def test_one_row_per_combination_in_config_order(metrics: pd.DataFrame) -> None:
    assert list(zip(metrics.experiment, metrics.payload_file, metrics.concurrency)) == [
        ("alpha", P1, 2), ("alpha", P1, 4), ("alpha", P1, 8), ("alpha", P1, 16),
        ("beta", P1, 1), ("gamma", P2, 1)]


def test_all_successes_combination_exactly(metrics: pd.DataFrame) -> None:
    a = row(metrics, "alpha", P1, 2)
    expected = {
        "requests": 4, "successes": 4, "failures": 0, "error_rate": 0.0, "duration_s": 7.5,
        # latency [2, 3, 2, 4] → sorted [2, 2, 3, 4]; linear interpolation at rank q·(n−1)
        "latency_mean": 2.75, "latency_p50": 2.5, "latency_p90": 3.7, "latency_p95": 3.85,
        "latency_p99": 3.97, "latency_count": 4,
        # TTFT [0.5, 1, 0.5, 1]
        "ttft_mean": 0.75, "ttft_p50": 0.75, "ttft_p90": 1.0, "ttft_p99": 1.0, "ttft_count": 4,
        # TPOT: (2−0.5)/10, (3−1)/20, (5−3.5)/10; the 1-token answer has none
        "tpot_mean": 0.4 / 3, "tpot_p50": 0.15, "tpot_p90": 0.15, "tpot_count": 3,
        # ITL pooled: [0.1, 0.2, 0.3, 0.4] s
        "itl_mean": 0.25, "itl_p50": 0.25, "itl_p90": 0.37, "itl_p95": 0.385, "itl_p99": 0.397, "itl_count": 4,
        # client queue [0, 0, 0, 0.5]
        "client_queue_mean": 0.125, "client_queue_p95": 0.425, "client_queue_max": 0.5,
        # the last request was sent late (saturated) with a 12 ms loop lag
        "client_saturated": 1, "client_loop_lag_max": 0.012,
        # TPM = 4 / 7.5 × 60; throughputs = Σ tokens / 7.5
        "transactions_per_minute": 32.0, "prompt_token_throughput": 80.0,
        "completion_token_throughput": 44 / 7.5, "prompt_token_count_mean": 150.0,
        "completion_token_count_mean": 11.0,
        # goodput: latency SLO 3 s met by 3 requests (2, 3, 2) / 7.5 s
        "goodput": 0.4,
        # 6 USD/h / (32 × 60) per transaction
        "price_per_hour": 6.0, "price_per_txn": 0.003125, "price_per_token": 0.003125 / 161,
        "cost_per_10k_txn": 31.25,
    }
    for name, value in expected.items():
        assert a[name] == pytest.approx(value, **EXACT), name
    assert a["pricing"] == "instance"
    assert a["instance_type"] == "ml.test.xlarge" and a["instance_count"] == 2
    assert a["error_classes"] == ""


def test_combination_with_errors(metrics: pd.DataFrame) -> None:
    b = row(metrics, "alpha", P1, 4)
    assert (b["requests"], b["successes"], b["failures"]) == (4, 3, 1)
    assert b["error_rate"] == 0.25
    assert b["duration_s"] == pytest.approx(10.0, **EXACT)  # the timeout's last byte counts
    assert b["transactions_per_minute"] == pytest.approx(18.0, **EXACT)
    # latency over successful requests only: [1, 1.5, 2]
    assert b["latency_mean"] == pytest.approx(1.5, **EXACT)
    assert b["latency_p90"] == pytest.approx(1.9, **EXACT)
    assert b["latency_p95"] == pytest.approx(1.95, **EXACT)
    assert b["latency_count"] == 3
    assert b["ttft_count"] == 3
    assert b["prompt_token_throughput"] == pytest.approx(30.0, **EXACT)  # 300 tokens of successes / 10 s
    assert b["price_per_txn"] == pytest.approx(6 / 1080, **EXACT)
    assert b["cost_per_10k_txn"] == pytest.approx(60000 / 1080, **EXACT)
    assert b["error_classes"] == "timeout 1"


def test_zero_successes_leave_price_undefined(metrics: pd.DataFrame) -> None:
    c = row(metrics, "alpha", P1, 8)
    assert (c["requests"], c["successes"], c["error_rate"]) == (2, 0, 1.0)
    assert c["transactions_per_minute"] == 0.0
    for name in ("latency_p95", "ttft_p50", "tpot_mean", "itl_p50", "price_per_txn", "price_per_token",
                 "cost_per_10k_txn", "prompt_token_count_mean"):
        assert math.isnan(c[name]), name
    assert c["price_per_hour"] == 6.0  # the hour still costs; the transaction price is undefined
    assert c["latency_count"] == 0 and c["itl_count"] == 0
    assert c["goodput"] == 0.0
    assert c["error_classes"] == "http_5xx 2"


def test_token_priced_combination(metrics: pd.DataFrame) -> None:
    d = row(metrics, "beta", P1, 1)
    assert d["pricing"] == "token"
    assert math.isnan(d["price_per_hour"])
    # 2000/1000 × 0.001 + 200/1000 × 0.002
    assert d["price_per_txn"] == pytest.approx(0.0024, **EXACT)
    assert d["price_per_token"] == pytest.approx(0.0024 / 2200, **EXACT)
    assert d["cost_per_10k_txn"] == pytest.approx(24.0, **EXACT)
    assert d["transactions_per_minute"] == pytest.approx(60.0, **EXACT)
    # no SLO configured for beta: goodput = successes / duration
    assert d["goodput"] == pytest.approx(1.0, **EXACT)


def test_experiment_costs_from_endpoint_lifetime_tokens_and_span() -> None:
    costs = experiment_costs(vector_records(), EVENTS, PRICES, INFO).set_index("experiment")
    # alpha: 6 USD/h × 200 s (deploy start −100 s to teardown end 100 s)
    assert costs.loc["alpha", "hours"] == pytest.approx(200 / 3600, **EXACT)
    assert costs.loc["alpha", "cost"] == pytest.approx(6.0 * 200 / 3600, **EXACT)
    assert costs.loc["alpha", "basis"].startswith("endpoint lifetime")
    # beta: Σ tokens of successful requests × rates: 4000/1000 × 0.001 + 400/1000 × 0.002
    assert costs.loc["beta", "cost"] == pytest.approx(0.0048, **EXACT)
    # gamma: bring your own: benchmarking span 60 s → 70 s at 3.6 USD/h
    assert costs.loc["gamma", "hours"] == pytest.approx(10 / 3600, **EXACT)
    assert costs.loc["gamma", "cost"] == pytest.approx(0.01, **EXACT)
    assert "bring your own" in costs.loc["gamma", "basis"]


def test_lifetime_without_teardown_counts_to_the_last_response() -> None:
    events = [e for e in EVENTS if e["event"] != "teardown"]
    costs = experiment_costs(vector_records(), events, PRICES, INFO).set_index("experiment")
    # deploy start −100 s to alpha's last response at 51 s
    assert costs.loc["alpha", "hours"] == pytest.approx(151 / 3600, **EXACT)
    assert "no teardown" in costs.loc["alpha", "basis"]


def test_unpriced_experiment_has_undefined_cost() -> None:
    prices = {**PRICES, "gamma": None}
    metrics = compute_metrics(vector_records(), prices=prices, info=INFO)
    assert metrics[metrics.experiment == "gamma"]["price_per_txn"].isna().all()
    costs = experiment_costs(vector_records(), EVENTS, prices, INFO).set_index("experiment")
    assert math.isnan(costs.loc["gamma", "cost"])


def test_recommendation_rule(metrics: pd.DataFrame) -> None:
    budgets = BudgetSet({"latency_p95": Budget("latency_p95", 3.0, "test"),
                         "cost_per_10k_txn": Budget("cost_per_10k_txn", 40.0, "test"),
                         "error_rate": Budget("error_rate", 0.0, "test")})
    verdict = gate(metrics, budgets, "best", DATASET_OF_INTEREST)
    meets = dict(zip(zip(metrics.experiment, metrics.concurrency), verdict.meets))
    # A: p95 3.85 > 3; B: errors and 55.6 USD; C: undefined; F, D: within; G: p95 10 s
    assert meets == {("alpha", 2): False, ("alpha", 4): False, ("alpha", 8): False,
                     ("alpha", 16): True, ("beta", 1): True, ("gamma", 1): False}
    # best for the dataset of interest: lowest price_per_txn among F (6/7200) and D (0.0024)
    best = verdict.recommendation.best
    assert (best["experiment"], best["concurrency"]) == ("alpha", 16)
    assert best["price_per_txn"] == pytest.approx(6 / 7200, **EXACT)
    assert verdict.passed
    per = verdict.recommendation.per_payload.set_index(["experiment", "payload_file"])
    assert per.loc[("alpha", P1), "recommended_concurrency"] == 16
    assert per.loc[("beta", P1), "recommended_concurrency"] == 1
    assert pd.isna(per.loc[("gamma", P2), "recommended_concurrency"])
    lines = [v.line() for v in verdict.violations]
    assert "latency_p95 3.85 s > 3.00 s: alpha payload_en_1-500 c=2" in lines
    assert "error_rate 25.00 % > 0 %: alpha payload_en_1-500 c=4" in lines
    assert "cost_per_10k_txn 55.56 USD > 40.00 USD: alpha payload_en_1-500 c=4" in lines
    assert "cost_per_10k_txn undefined > 40.00 USD: alpha payload_en_1-500 c=8" in lines


def test_recommendation_ties_prefer_lower_cost_then_higher_tpm() -> None:
    frame = pd.DataFrame({
        "experiment": ["x"] * 3, "payload_file": [P1] * 3, "concurrency": [1, 2, 4],
        "instance_type": [None] * 3, "transactions_per_minute": [60.0, 60.0, 30.0],
        "cost_per_10k_txn": [2.0, 1.0, 0.5], "price_per_txn": [0.0002, 0.0001, 0.0001],
        "latency_p95": [1.0, 1.0, 1.0], "error_rate": [0.0] * 3, "requests": [4] * 3})
    from pytest_fmbench.metrics import recommend

    rec = recommend(frame, pd.Series([True] * 3), None)
    assert rec.per_payload.iloc[0]["recommended_concurrency"] == 2  # TPM tie → lower cost
    assert rec.best["concurrency"] == 2  # price tie (c=2, c=4) → higher TPM


def test_nothing_meets_budgets_names_the_nearest_miss(metrics: pd.DataFrame) -> None:
    budgets = BudgetSet({"latency_p95": Budget("latency_p95", 0.5, "test")})
    verdict = gate(metrics, budgets, "best", DATASET_OF_INTEREST)
    assert not verdict.passed
    assert verdict.recommendation.best is None
    (miss,) = verdict.recommendation.nearest_misses
    assert (miss["metric"], miss["experiment"], miss["concurrency"], miss["value"]) == ("latency_p95", "alpha", 16, 1.0)
    assert "no combination meets every budget" in verdict.summary


def test_dataset_of_interest_matches_fmbench_names(metrics: pd.DataFrame) -> None:
    assert dataset_of_interest_mask(metrics, "en_500-1000").tolist() == [False] * 5 + [True]
    assert dataset_of_interest_mask(metrics, "payload_en_500-1000.jsonl").sum() == 1
    assert dataset_of_interest_mask(metrics, None).all()


def test_slo_thresholds_take_the_loosest_budget_per_family() -> None:
    assert slo_thresholds({"latency_p50": 1.0, "latency_p95": 2.0, "ttft_p95": 0.5,
                           "error_rate": 0.1, "transactions_per_minute": 10}) == {"latency": 2.0, "ttft": 0.5}


def test_every_metric_has_a_unit_and_a_direction() -> None:
    for metric in METRICS.values():
        assert metric.unit and metric.definition
        assert metric.better in ("lower", "higher", "none")
    assert METRICS["transactions_per_minute"].better == "higher"
    assert METRICS["goodput"].better == "higher"
    assert METRICS["cost_per_10k_txn"].better == "lower"


def test_empty_records_give_an_empty_table() -> None:
    assert compute_metrics([]).empty
