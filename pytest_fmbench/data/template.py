"""Prompt templates: text with ``{key}`` placeholders filled from a dataset record.

Only the configured keys are substituted. Templates often hold JSON or Jinja braces, so
``str.format`` (which parses every brace) is not used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.errors import ConfigError

TEMPLATE_KEY = "s3_read_data.prompt_template"
TEMPLATE_KEYS_KEY = "datasets.prompt_template_keys"

DEFAULT_PROMPT_TEMPLATE = """\
Answer the question using only the context below. Keep the answer short.

Context:
{context}

Question: {input}
Answer:"""


def render_prompt(template: str, record: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The template with each ``{key}`` of ``keys`` replaced by ``record[key]``.

    Substitution is a single pass, so a record value that itself contains ``{input}`` is
    never substituted again; ``{{key}}`` (a doubled, Jinja-style brace) is left alone.
    """
    if not keys:
        return template
    missing = [key for key in keys if key not in record]
    if missing:
        record_id = record.get("_id", "?")
        raise ConfigError(
            f"dataset record '{record_id}' has no field '{missing[0]}' "
            f"(it has: {', '.join(sorted(map(str, record))) or 'none'})",
            key=TEMPLATE_KEYS_KEY,
            fix=f"remove '{missing[0]}' from prompt_template_keys or use a dataset whose "
                "records have that field",
        )
    placeholder = re.compile(
        r"(?<!\{)\{(" + "|".join(re.escape(key) for key in keys) + r")\}(?!\})")
    return placeholder.sub(lambda match: str(record[match.group(1)]), template)


def load_template(path: Path) -> str:
    """The text of a prompt template file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "prompt template file not found", file=str(path), key=TEMPLATE_KEY,
            fix="check the path (relative paths are resolved against the directory pytest "
                "was started from), or leave prompt_template unset to use the default",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt template: {exc}", file=str(path),
                          key=TEMPLATE_KEY, fix="give a readable UTF-8 text file") from None
    if not text.strip():
        raise ConfigError("prompt template file is empty", file=str(path), key=TEMPLATE_KEY,
                          fix="write the template, e.g. with {context} and {input} placeholders")
    return text
