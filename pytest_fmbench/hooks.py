"""pytest-fmbench's hook specifications, for users' conftest files and plugins.

Like pytest-xdist's ``newhooks.py``: registered in ``pytest_addhooks``, called on the
controller (a plain run, or the xdist controller under ``-n``, where every worker's results
arrive), so an implementation sees every case of the run once. Implement them in a
``conftest.py`` or a plugin to push results to a dashboard without parsing files:

.. code-block:: python

    def pytest_fmbench_case_finished(case, summary):
        dashboard.send(case.id, summary["tpm"], summary["latency_p95"])

    def pytest_fmbench_session_report(report, results_dir):
        dashboard.verdict(report.passed, results_dir / "results.json")

An implementation may take any subset of the arguments. An exception raised by one is
reported as a warning line and never fails or stops the benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_fmbench.cases import Case
    from pytest_fmbench.report.session import SessionReport


def pytest_fmbench_case_finished(case: Case, summary: dict[str, Any], config: pytest.Config) -> None:
    """A benchmark case finished measuring (called once per case, on the controller).

    :param case: the case (``case.id``, ``case.experiment``, ``case.payload_file``,
        ``case.concurrency``).
    :param summary: the case's summary: ``requests``, ``errors``, ``error_classes``, ``tpm``,
        latency and TTFT percentiles in seconds (the keys of the ``[fmbench]`` line after
        each case).
    :param config: the pytest config.
    """


def pytest_fmbench_session_report(report: SessionReport, results_dir: Path,
                                  config: pytest.Config) -> None:
    """The run's report was written and its budgets judged (once, on the controller).

    :param report: the outcome: ``passed`` (the gate verdict and every check), ``ran``,
        ``report_path`` (``report.md``), ``lines`` (the terminal summary).
    :param results_dir: the run's results directory: ``results.json`` holds every metric,
        the budgets and the verdict; ``all_metrics.csv`` one row per combination.
    :param config: the pytest config.
    """
