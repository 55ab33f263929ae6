"""The project's own test-suite timeout: for tests/ only.

It is not an ini ``timeout``: pytest-timeout applies that to every item under the rootdir, and
users running ``pytest benchmarks/`` from this repository would have their benchmark cases
(deploys of 5-15 minutes) killed by it. A ``--timeout`` or ``PYTEST_TIMEOUT`` given by hand wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_fmbench.testing.aws_emulator import moto_server

TEST_TIMEOUT_S = 300


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        return
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


# -- AWS without AWS: one moto server per test module, shared by its tests -------------------

@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's S3, empty, with boto3 pointed at it."""
    import boto3

    from tests.fmbench_support import empty_s3, s3_environment

    for key, value in s3_environment(moto_url).items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    empty_s3(client)
    return client
