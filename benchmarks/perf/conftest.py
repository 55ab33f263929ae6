"""The perf suite's marker: ``smoke`` selects the short CI check (``-m smoke``)."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: the short perf check CI runs, with wide margins "
                                       "(deselect with -m 'not smoke')")
