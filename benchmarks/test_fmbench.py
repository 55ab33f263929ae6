"""The benchmark suite: one test per case (experiment x payload file x concurrency).

    pytest benchmarks/ --fmbench-config=configs/quickstart.yml

The plugin deploys each experiment's endpoint once, fires the configured load for each case,
records every request, and tears the endpoint down after the experiment's last case.
"""


def test_benchmark(fmbench_load):
    result = fmbench_load()
    assert result.successes > 0, (
        f"no request of {result.case.id} succeeded: {result.summary['error_classes']}"
    )
