"""report.html (pytest_fmbench/report/html.py): self-contained, verdict first, interactive
plots with every metric on hover, the price/performance chart with its budget region; and
checked in real headless Chromium (Debian's package; CI installs it in .ci/run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pytest_fmbench.report import html
from pytest_fmbench.testing.openai_server import FakeOpenAIServer, ServerBehaviour
from tests.browser_support import chromium_missing, visit
from tests.e2e_support import BENCHMARK_TEST, INNER_ARGS, openai_config

BUDGETS = """\
metrics: {dataset_of_interest: en_1-300}
report: {latency_budget: 30, cost_per_10k_txn_budget: 1000, error_rate_budget: 0}
"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run's results (2 experiments × 2 payload files × c1, c2), shared by the tests."""
    pytester_dir = tmp_path_factory.mktemp("html-run")
    with FakeOpenAIServer(ServerBehaviour(ttft_s=0.002, token_delay_s=0.001)) as server:
        (pytester_dir / "test_bench.py").write_text(BENCHMARK_TEST)
        (pytester_dir / "cfg.yml").write_text(openai_config(server.url, report=BUDGETS))
        # In a subprocess: an in-process inner run would leave its state in this worker.
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *INNER_ARGS, "-q", "--rootdir", str(pytester_dir),
             str(pytester_dir / "test_bench.py"), f"--fmbench-config={pytester_dir / 'cfg.yml'}",
             f"--fmbench-results-dir={pytester_dir / 'out'}"],
            cwd=pytester_dir, capture_output=True, text=True, timeout=240, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stdout + result.stderr
    return pytester_dir / "out"


def test_the_page_is_self_contained_with_the_verdict_first(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    # No CDN, no stylesheet or script from elsewhere: plotly.js is inline.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert page.count("<script") >= 2 and "Plotly.newPlot" in page
    verdict = page.index('id="verdict"')
    assert "Budget gate (best): PASSED" in page
    assert verdict < page.index('id="price-performance"') < page.index("<table")
    # The report's own tables, not its PNG plots (the interactive ones replace them).
    for section in ("Best option", "Budgets", "Results", "Cost per experiment", "Glossary"):
        assert f">{section}" in page, section
    assert "plots/price_performance.png" not in page


def test_every_point_hovers_its_combination_request_count_and_every_metric(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    results = json.loads((report_dir / "results.json").read_text())
    for row in results["metrics"]:
        label = f"{row['experiment_name']} · {row['payload_file'].removesuffix('.jsonl')} · c={row['concurrency']}"
        assert label in page or json.dumps(label)[1:-1] in page, label
    metrics = pd.DataFrame([{"experiment": "a", "payload_file": "p.jsonl", "concurrency": 2,
                             "requests": 16, "latency_p50": 0.3, "latency_p95": 0.5,
                             "error_rate": 0.0, "cost_per_10k_txn": 0.04, "price_per_hour": 1.2,
                             "transactions_per_minute": 370.0, "ttft_count": 16}])
    lines = html.hover_lines(metrics.iloc[0].to_dict())
    assert lines[0] == "error_rate: 0 %"  # the request count has its own line
    assert "latency: p50 0.3 s, p95 0.5 s" in lines
    assert "ttft: count 16 requests" in lines and "cost_per_10k_txn: 0.04 USD" in lines


def test_the_price_performance_chart_shades_the_budget_region() -> None:
    metrics = pd.DataFrame([
        {"experiment": e, "payload_file": "p.jsonl", "concurrency": c, "requests": 8,
         "latency_p95": lat, "cost_per_10k_txn": cost, "transactions_per_minute": tpm}
        for e, c, lat, cost, tpm in [("a", 1, 0.4, 0.05, 100.0), ("a", 4, 1.9, 0.02, 380.0)]])
    figure = html.price_performance(metrics, {"latency_p95": 1.0, "cost_per_10k_txn": 0.03}, None)
    regions = [shape for shape in figure.layout.shapes if shape.type == "rect"]
    assert [(r.x0, r.x1, r.y0, r.y1) for r in regions] == [(0, 1.0, 0, 0.03)]
    assert {trace.name for trace in figure.data} == {"within budgets", "a · p"}


def test_names_are_text_never_markup() -> None:
    text = "## Results\n\n| experiment |\n|---|\n| <script>alert(1)</script> |\n\n```text\na <b>\n```\n"
    assert "<script>alert" not in html._escape_outside_code(text)
    assert "a <b>" in html._escape_outside_code(text)  # code blocks are escaped by markdown itself


def test_in_headless_chromium_it_loads_offline_without_console_errors(report_dir: Path,
                                                                      tmp_path: Path) -> None:
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {missing}")
        pytest.skip(missing)
    screenshot = tmp_path / "report.png"
    seen = visit(report_dir / "report.html", screenshot)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.requests_outside == []
    assert seen.plot_ids[0] == "price-performance" and len(seen.plot_ids) == 5
    # Hovering a point shows its combination, its request count and its metrics.
    assert re.search(r"(alpha|beta) · payload_en_1-300 · c=\d", seen.hover_text), seen.hover_text
    assert "requests: " in seen.hover_text and "latency: mean" in seen.hover_text
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
