"""The documentation site: the configuration reference lists every key the config model
accepts (generated at build time, so keys added later appear by themselves), and the site
builds in strict mode (broken links and anchors fail)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from pytest_fmbench.config import reference
from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS
from pytest_fmbench.config.model import Config, Experiment

ROOT = Path(__file__).resolve().parent.parent


def _models(annotation: object) -> list[type[BaseModel]]:
    """Every pydantic model inside an annotation, found independently of reference.py."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _every_model_key() -> dict[type[BaseModel], set[str]]:
    found: dict[type[BaseModel], set[str]] = {}
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found[model] = {f.alias or name for name, f in model.model_fields.items() if not f.exclude}
        for field in model.model_fields.values():
            todo += _models(field.annotation)
    return found


def _section(page: str, model: type[BaseModel]) -> str:
    start = page.index(f"\n## {model.__name__}\n")
    end = page.find("\n## ", start + 1)
    return page[start:end if end > 0 else None]


def test_the_reference_lists_every_key_of_every_section_in_its_own_table() -> None:
    page = reference.render()
    keys = _every_model_key()
    assert len(keys) >= 15  # Config, General, ..., LoadSettings, RetrySettings, ...
    for model, names in keys.items():
        section = _section(page, model)
        for name in names:
            assert f"| `{name}` |" in section, f"{model.__name__}.{name} missing from the reference"


def test_a_key_added_to_the_model_appears_without_touching_the_docs() -> None:
    class Extended(Config):
        brand_new_key: int = 7

    page = reference.render(Extended)
    assert "| `brand_new_key` | int | `7` | ours |" in page


def test_keys_say_type_default_and_whether_fmbench_knows_them() -> None:
    page = reference.render()
    experiment = _section(page, Experiment)
    # optional since load levels (rates, sweep, SLO search) can stand in for it
    assert "| `concurrency_levels` | list[int] | `[]` | FMBench |" in experiment
    assert "| `price_per_hour` | float | unset | ours |" in experiment
    assert "| `serving.properties` | str | unset | FMBench |" in experiment  # an alias
    load = page[page.index("\n## LoadSettings\n"):]
    assert '| `pattern` | "waves" \\| "concurrency" \\| "rate" | `"waves"` | ours |' in load
    assert "| `min_iters_per_combination` | int | unset (then `5`) | ours |" in load
    # FMBench keys accepted without a field of ours are listed under their section.
    for key in sorted(FMBENCH_KEYS["experiments"] - set(Experiment.model_fields) - {"serving.properties"}):
        assert f"`{key}`" in experiment, key


def test_the_site_builds_in_strict_mode_with_the_generated_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                            "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, check=False,
                           env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                "PYTHONPATH": str(ROOT)}, timeout=240)
    assert build.returncode == 0, build.stdout + build.stderr
    built = (site / "reference" / "configuration" / "index.html").read_text()
    assert "request_timeout_s" in built and "serving.properties" in built


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [nowhere](missing.md) and [here](#no-such-anchor).\n")
    (tmp_path / "mkdocs.yml").write_text(
        (ROOT / "mkdocs.yml").read_text().split("\nnav:")[0].replace("docs/hooks.py", str(ROOT / "docs/hooks.py"))
        + "\nnav:\n  - Home: index.md\n")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
                           env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                "PYTHONPATH": str(ROOT)})
    assert build.returncode != 0
    assert "missing.md" in build.stdout + build.stderr
    assert "no-such-anchor" in build.stdout + build.stderr
