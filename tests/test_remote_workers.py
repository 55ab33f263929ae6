"""xdist workers on other hosts (--tx ssh=/socket=) are refused until records travel over
xdist's channel: never a silently empty report."""

from __future__ import annotations

import pytest

from pytest_fmbench.xdist import remote_gateways
from tests.e2e_support import BENCHMARK_TEST, recording_config


def test_only_popen_gateways_count_as_local() -> None:
    specs = ["popen", "3*popen", "popen//python=python3//chdir=/tmp", "ssh=bench-host//python=/venv/bin/python",
             "2*ssh=u@h", "socket=10.0.0.5:8888", "4*popen//via=proxy"]
    assert remote_gateways(specs) == specs[3:]


@pytest.mark.parametrize("spec", ["ssh=bench-host//python=/venv/bin/python", "socket=127.0.0.1:1"])
def test_a_remote_tx_is_a_usage_error_naming_the_alternatives(pytester: pytest.Pytester,
                                                              spec: str) -> None:
    pytester.makepyfile(test_bench=BENCHMARK_TEST)
    pytester.makefile(".yml", cfg=recording_config())
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider",
                                "--fmbench-config=cfg.yml", "--tx", spec, "--dist", "load")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--tx {spec}: workers on other hosts are not supported yet*",
                                 "*fix: run whole experiments per host with --fmbench-shard K/N*"])
