"""The users' benchmark run skips benchmarks/perf unless it is named on the command line."""

from pathlib import Path

import pytest

PERF = Path(__file__).parent / "perf"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path != PERF:
        return None
    for arg in config.args:
        target = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if target == PERF or PERF in target.parents:
            return None
    return True
