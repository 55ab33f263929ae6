"""Datasets, prompt templates, token counting and payload files.

Records (LongBench-shaped dicts) are rendered through a prompt template, counted with the
configured tokenizer and split by FMBench-style token-length filters into payload files.
"""
