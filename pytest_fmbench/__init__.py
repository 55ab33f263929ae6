"""pytest-fmbench: price/performance benchmarks of foundation-model endpoints, the pytest way."""

__version__ = "0.1.0"
