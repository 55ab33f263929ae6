"""The configuration reference, generated from the config model (``config/model.py``).

The documentation site builds its "Configuration reference" page from ``render()`` at build
time (``docs/hooks.py``), so the page lists every key the model accepts, with its type, its
default and whether FMBench knows it, however many keys are added later: nothing is copied by
hand that could go stale.

Each section model is described once (``LoadSettings`` appears at three places in a config),
with the places where it appears. A key's notes are the comments written above its field in
``model.py``; the FMBench keys a section accepts without acting on them are listed below its
table (``fmbench_keys.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pytest_fmbench.config.fmbench_keys import FMBENCH_KEYS, OPAQUE_SECTIONS
from pytest_fmbench.config.model import Config

FMBENCH = "FMBench"
OURS = "ours"


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of one section model."""

    name: str
    type: str
    default: str
    origin: str  # FMBENCH or OURS
    notes: str


@dataclasses.dataclass
class SectionDoc:
    """One section model: where it appears in a config, and its keys."""

    model: type[BaseModel]
    places: list[str]
    keys: list[Key]
    # FMBench keys accepted here and not acted on (kept, listed in the report).
    fmbench_only: list[str]
    open_ended: bool


def sections(root: type[BaseModel] = Config) -> list[SectionDoc]:
    """Every section model reachable from ``root``, in the order a config reads."""
    found: dict[type[BaseModel], SectionDoc] = {}
    _walk(root, "", found)
    return list(found.values())


def accepted_keys(root: type[BaseModel] = Config) -> dict[str, set[str]]:
    """Section model name → every key it accepts by name (aliases as written in YAML)."""
    return {doc.model.__name__: {key.name for key in doc.keys} for doc in sections(root)}


def _walk(model: type[BaseModel], place: str, found: dict[type[BaseModel], SectionDoc]) -> None:
    if model in found:
        found[model].places.append(place or "(top level)")
        return
    section = _fmbench_section(place)
    doc = SectionDoc(model, [place or "(top level)"], [], [],
                     open_ended=model.model_config.get("extra") == "allow")
    found[model] = doc
    comments = _field_comments(model)
    fmbench_known = FMBENCH_KEYS.get(section, frozenset())
    whole_section_fmbench = section.split(".", 1)[0] in OPAQUE_SECTIONS
    names: set[str] = set()
    children: list[tuple[type[BaseModel], str]] = []
    for attribute, field in model.model_fields.items():
        if field.exclude:  # set by the loader, never read from YAML
            continue
        name = field.alias or attribute
        names.add(name)
        origin = FMBENCH if (name in fmbench_known or whole_section_fmbench) else OURS
        doc.keys.append(Key(name, type_name(field.annotation), _default(model, attribute, field),
                            origin, comments.get(attribute, "")))
        for child, suffix in _models_in(field.annotation):
            children.append((child, f"{place}.{name}{suffix}".lstrip(".")))
    doc.fmbench_only = sorted(fmbench_known - names)
    for child, child_place in children:
        _walk(child, child_place, found)


def _fmbench_section(place: str) -> str:
    """``experiments[].inference_spec`` → ``experiments.inference_spec`` (FMBENCH_KEYS' form)."""
    return place.replace("[]", "").replace(".*", "")


def _models_in(annotation: Any) -> Iterator[tuple[type[BaseModel], str]]:
    """Section models inside an annotation, with the path suffix of a list or mapping entry."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation, ""
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _models_in(args[0])
    elif origin is list:
        yield from ((model, "[]" + suffix) for model, suffix in _models_in(args[0]))
    elif origin is dict:
        yield from ((model, ".*" + suffix) for model, suffix in _models_in(args[1]))
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _models_in(arg)


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``int | None`` → ``int``, ``list[str]``, a section."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        shown = [type_name(arg) for arg in args if arg is not type(None)]
        return " \\| ".join(shown) if shown else "null"
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return f"mapping[{type_name(args[0])}, {type_name(args[1])}]"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(model: type[BaseModel], attribute: str, field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "its defaults"
    shown = "unset" if value is None else f"`{json.dumps(value)}`"
    # Some sections leave a key unset so a narrower section can override it, and fill the
    # effective default when merging (LoadSettings.DEFAULTS).
    effective = getattr(model, "DEFAULTS", {})
    if value is None and isinstance(effective, dict) and attribute in effective:
        shown = f"unset (then `{json.dumps(effective[attribute])}`)"
    return shown


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name → the ``#`` comment lines right above it in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    found: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            comment.insert(0, lines[row].strip().lstrip("#").strip())
            row -= 1
        text = " ".join(comment)
        # The origin has its own column: "Ours: x" → "x".
        for prefix in ("Ours.", "Ours:", "ours:", "FMBench:"):
            text = text.removeprefix(prefix).strip()
        found[node.target.id] = text
    return found


def render(root: type[BaseModel] = Config) -> str:
    """The reference page (markdown)."""
    out = [
        "# Configuration reference",
        "",
        ("Generated from the config model (`pytest_fmbench/config/model.py`) when the docs are "
         "built, so it lists every key the current version accepts. **FMBench** marks a key "
         "FMBench's configs use (same meaning); **ours** a pytest-fmbench key. A key known to "
         "neither is a usage error naming the file, the key and the closest known key."),
        "",
    ]
    for doc in sections(root):
        out += [f"## {doc.model.__name__}", ""]
        out += [f"Where: {', '.join(f'`{place}`' for place in doc.places)}.", ""]
        summary = inspect.getdoc(doc.model) if doc.model.__doc__ else None
        if summary and doc.model.__doc__ is not BaseModel.__doc__:
            out += [summary.split("\n\n", 1)[0].replace("\n", " "), ""]
        out += ["| key | type | default | from | notes |", "|---|---|---|---|---|"]
        for key in doc.keys:
            notes = key.notes.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            out.append(f"| `{key.name}` | {key.type} | {key.default} | {key.origin} | {notes} |")
        out.append("")
        if doc.fmbench_only:
            out += ["FMBench keys accepted here and not acted on (kept, and listed in the "
                    "report): " + ", ".join(f"`{key}`" for key in doc.fmbench_only) + ".", ""]
        if doc.open_ended:
            out += [("Open-ended, as in FMBench: any other key is accepted and handed on; "
                     "those pytest-fmbench does not act on are listed in the report."), ""]
    out += ["## Sections accepted whole", "",
            "FMBench sections pytest-fmbench has no use for; accepted with any content: "
            + ", ".join(f"`{name}`" for name in sorted(OPAQUE_SECTIONS)
                        if name not in Config.model_fields) + ".", ""]
    return "\n".join(out)
