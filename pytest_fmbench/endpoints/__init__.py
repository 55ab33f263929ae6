"""Endpoints: one module per backend behind the interface in ``base``."""
