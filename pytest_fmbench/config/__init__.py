"""The typed config model (FMBench-compatible), YAML loading and placeholders."""

from pytest_fmbench.config.loader import load_config
from pytest_fmbench.config.model import Config, Experiment

__all__ = ["Config", "Experiment", "load_config"]
