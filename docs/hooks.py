"""MkDocs hook: the configuration reference page, generated from the config model at build
time (pytest_fmbench/config/reference.py), so it cannot go stale."""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files

REFERENCE_PAGE = "reference/configuration.md"


def on_files(files: Files, config: Any) -> Files:
    from pytest_fmbench.config.reference import render

    files.append(File.generated(config, REFERENCE_PAGE, content=render()))
    return files
