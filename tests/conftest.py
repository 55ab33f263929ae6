"""The project's own test-suite timeout: for tests/ only.

It is not an ini ``timeout``: pytest-timeout applies that to every item under the rootdir, and
users running ``pytest benchmarks/`` from this repository would have their benchmark cases
(deploys of 5-15 minutes) killed by it. A ``--timeout`` or ``PYTEST_TIMEOUT`` given by hand wins.
"""

from __future__ import annotations

import os

import pytest

TEST_TIMEOUT_S = 300


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))
