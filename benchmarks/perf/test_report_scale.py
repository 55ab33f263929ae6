"""Scale benchmark: metrics, report and plots from 1,000,000 request records.

    pytest benchmarks/perf/test_report_scale.py -p no:randomly -s
    FMBENCH_PERF_RECORDS=10000000 pytest benchmarks/perf/test_report_scale.py -p no:randomly -s

Not part of the benchmark suite users run (``benchmarks/conftest.py`` skips this folder unless
it is named). The records are written the way the plugin writes them (per process a JSON-lines
file plus its Arrow copy); the report is then built in a fresh process, so its time and peak
memory (max RSS) are the report's own. Targets (issue 18, 2-core machine): the report (after
the imports, printed apart) within 2 s per million records (1 M ≤ 2 s, 10 M ≤ 20 s), peak
memory ≤ 2 GiB. Each figure is printed beside its target and the previous run's and asserted;
the ``smoke`` test (CI) allows ``SMOKE_REPORT_MARGIN`` x the time. ``FMBENCH_PERF_MARGIN`` loosens the full targets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_fmbench.report.plots import PLOTS

sys.path.insert(0, str(Path(__file__).parent))

from guard import check, margin
from synthetic import EXPERIMENTS, PAYLOADS, synthetic_table, write_results_dir

RECORDS = int(os.environ.get("FMBENCH_PERF_RECORDS", "1000000"))
TARGET_S_PER_MILLION = 2.0
TARGET_BYTES = 2 * 1024**3

INSTANCE_TYPES = ["ml.g5.xlarge", "ml.g5.2xlarge", "ml.p4d.24xlarge", "ml.inf2.xlarge"]

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    started = time.perf_counter()
    from pathlib import Path
    from pytest_fmbench.config.loader import load_config
    from pytest_fmbench.report import build_report
    from pytest_fmbench.report.session import prepare
    imported = time.perf_counter()
    folder, config_path = Path(sys.argv[1]), Path(sys.argv[2])
    config = load_config(config_path)
    settings = prepare(config)
    outcome = build_report(folder, config, settings.prices, settings.budgets, settings.mode)
    done = time.perf_counter()
    print(json.dumps({
        "requests": outcome.analysis.requests,
        "combinations": len(outcome.analysis.metrics),
        "errors": outcome.errors,
        "import_s": imported - started,
        "build_s": done - imported,
        "total_s": done - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
    }))
""")


def _config(folder: Path) -> Path:
    filters = "\n".join(
        f"    - {{payload_file: {p}, min_length_in_tokens: 1, max_length_in_tokens: 5000}}" for p in PAYLOADS)
    experiments = "\n".join(textwrap.dedent(f"""\
          - name: {name}
            backend: openai
            deploy: no
            instance_type: {instance}
            openai: {{base_url: "http://127.0.0.1:9"}}
            payload_files: [{", ".join(PAYLOADS)}]
            concurrency_levels: [1, 2, 4, 8, 16]""") for name, instance in zip(EXPERIMENTS, INSTANCE_TYPES))
    path = folder / "scale.yml"
    path.write_text(
        "general: {name: scale}\n"
        f"datasets:\n  filters:\n{filters}\n"
        "metrics: {dataset_of_interest: en_500-1000}\n"
        "report: {latency_budget: 1.0, cost_per_10k_txn_budget: 20, error_rate_budget: 0.05}\n"
        "budgets: {ttft_p95: 0.5}\n"
        "experiments:\n" + textwrap.indent(experiments, "  ") + "\n")
    return path


@pytest.fixture(scope="session")
def million(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scale")
    write_results_dir(folder, synthetic_table(RECORDS), processes=2)
    return folder, _config(folder)


def build(folder: Path, config: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(config)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def judge(result: dict, folder: Path, label: str, loosen: float) -> list[bool]:
    millions = result["requests"] / 1e6
    print(f"\n[scale] {result['requests']:,} records, {result['combinations']} combinations: "
          f"{result['total_s']:.2f} s end to end (imports {result['import_s']:.2f} s, "
          f"report {result['build_s']:.2f} s; CPU {result['cpu_s']:.2f} s), peak memory "
          f"{result['peak_rss_bytes'] / 1024**3:.2f} GiB", flush=True)
    assert result["requests"] == RECORDS
    assert not result["errors"]
    for name in ("report.md", "results.json", "all_metrics.csv", "per_inference_request_results.csv"):
        assert (folder / name).is_file()
    drawn = {p.name for p in (folder / "plots").glob("*.png")}
    # every plot of report/plots.py (telemetry's timeline and box plot come beside them)
    assert {name for name, _ in PLOTS} <= drawn, sorted(drawn)
    return [
        check(f"{label}report_{millions:g}M_s", result["build_s"], TARGET_S_PER_MILLION * max(millions, 1.0),
              "s", higher_is_better=False, margin=loosen),
        # Memory does not depend on a busy machine: never loosened.
        check(f"{label}report_{millions:g}M_peak_gib", result["peak_rss_bytes"] / 1024**3,
              TARGET_BYTES / 1024**3, "GiB", higher_is_better=False),
    ]


def test_report_from_a_million_records(benchmark, million: tuple[Path, Path]) -> None:
    folder, config = million
    result = benchmark.pedantic(lambda: build(folder, config), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert all(judge(result, folder, "", margin()))


# The CI smoke's allowance. Meant to be 3x the target once the target is met; today a 1 M
# report takes ~5.9 s on a quiet 2-core machine (the 8 plots are ~3 s of it), so 3x (6 s)
# would fail by noise: 6x (12 s) fails a doubling of today's time instead.
SMOKE_REPORT_MARGIN = 6.0


@pytest.mark.smoke
def test_smoke_report(million: tuple[Path, Path]) -> None:
    """CI: the same report of 1 M records within SMOKE_REPORT_MARGIN x the time target
    (memory: the target itself)."""
    folder, config = million
    assert all(judge(build(folder, config), folder, "smoke_", SMOKE_REPORT_MARGIN))
