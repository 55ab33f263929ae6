"""FMBench-style ``{placeholder}`` filling that leaves every other brace alone.

FMBench runs ``str.format`` over the whole YAML text, which breaks on JSON or Jinja braces in
prompt templates and env values. Here only ``{identifier}`` tokens are placeholders; ``{{``,
``}}``, ``{"json": 1}`` and ``{ spaced }`` are left untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def find_placeholders(text: str) -> list[str]:
    """Placeholder names in order of first appearance, ignoring YAML comments."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        for match in _PLACEHOLDER.finditer(_strip_comment(line)):
            seen.setdefault(match.group(1), None)
    return list(seen)


def fill_placeholders(text: str, values: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace known placeholders; return the text and the names left unfilled."""
    missing: dict[str, None] = {}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return str(values[name])
        missing.setdefault(name, None)
        return match.group(0)

    lines = []
    for line in text.splitlines(keepends=True):
        code = _strip_comment(line)
        lines.append(_PLACEHOLDER.sub(substitute, code) + line[len(code):])
    return "".join(lines), list(missing)


def _strip_comment(line: str) -> str:
    """The part of a YAML line before a ``#`` comment (quotes respected, roughly)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line
