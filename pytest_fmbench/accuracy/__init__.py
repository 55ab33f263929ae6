"""Accuracy beside price and performance: deterministic scorers, a panel of LLM judges,
their statistics, cost and cache. Pytest-free; runs after the load, on the controller."""
