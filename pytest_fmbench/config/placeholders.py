"""FMBench-style ``{placeholder}`` filling, on parsed YAML scalars rather than raw text.

FMBench runs ``str.format`` over the whole YAML text before parsing it. Doing the same lets a
value reshape the config: ``--fmbench-set name='x: y'`` adds a key, a newline adds lines, a
``#`` cuts the rest of the line. Here the text is parsed first and placeholders are filled
inside scalar values only, so a value is always exactly one scalar.

- Only ``{identifier}`` tokens are placeholders; ``{{``, ``}}``, ``{"json": 1}`` and
  ``{ spaced }`` are left untouched, and comments are never read.
- A plain (unquoted) ``key: {name}`` parses as a one-entry flow mapping ``{name: null}``;
  it is read back as the placeholder FMBench meant.
- A value filled into a plain scalar is typed as YAML types plain text (``2`` is an int,
  ``yes`` a bool), but never becomes a mapping or list: ``a: b`` stays the string ``a: b``.
- In a ``deploy.command`` (run by ``sh -c``) a filled value is shell-quoted: it is one word
  of the command, so ``;``, ``$(...)`` or a quote in a value cannot run anything.
- Names listed in ``datasets.prompt_template_keys`` are the prompt template's own keys
  inside ``datasets.prompt_template``, not config placeholders.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
DEFAULT_TEMPLATE_KEYS = ("input", "context")
# Values run by a shell (the last two keys of their path): placeholders there are shell-quoted.
SHELL_COMMANDS = frozenset({("deploy", "command")})
# Tab and newline included: a value is one line of text, whatever the shell let through.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def find_placeholders(text: str) -> list[str]:
    """Placeholder names of a YAML text in order of first appearance (comments ignored)."""
    return load_filled(text, _Collecting())[1]


def load_filled(text: str, values: Mapping[str, str]) -> tuple[Any, list[str]]:
    """Parse YAML ``text`` and fill its placeholders from ``values``.

    Returns the parsed data and the placeholder names left unfilled (in order). Raises
    ``yaml.YAMLError`` for text that is not YAML.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return None, []
    filler = _Filler(values, _template_keys(root))
    root = filler.node(root, ())
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root), list(filler.missing)
    finally:
        loader.dispose()


def control_character_problem(name: str, value: str) -> str | None:
    """Why ``value`` may not fill ``{name}`` (control characters), or None when it may."""
    found = CONTROL_CHARACTERS.search(value)
    if found is None:
        return None
    return f"the value of {{{name}}} contains a control character ({found.group()!r})"


class _Collecting(dict[str, str]):
    """A values mapping that knows no name: every placeholder is reported as missing."""

    def __contains__(self, key: object) -> bool:
        return False


class _Filler:
    def __init__(self, values: Mapping[str, str], template_keys: frozenset[str]) -> None:
        self.values = values
        self.template_keys = template_keys
        self.missing: dict[str, None] = {}
        self.resolver = yaml.SafeLoader("")
        self.seen: dict[int, Node] = {}

    def node(self, node: Node, path: tuple[str, ...]) -> Node:
        # Anchors make a node appear twice: fill it once.
        if id(node) in self.seen:
            return self.seen[id(node)]
        result = self._fill(node, path)
        self.seen[id(node)] = result
        return result

    def _fill(self, node: Node, path: tuple[str, ...]) -> Node:
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, MappingNode):
            name = _flow_placeholder(node)
            if name is not None:
                return self._scalar(ScalarNode(_STR_TAG, "{" + name + "}", node.start_mark,
                                               node.end_mark, style=None), path)
            node.value = [(self.node(key, path), self.node(value, (*path, _key_text(key))))
                          for key, value in node.value]
        elif isinstance(node, SequenceNode):
            node.value = [self.node(item, path) for item in node.value]
        return node

    def _scalar(self, node: ScalarNode, path: tuple[str, ...]) -> ScalarNode:
        text = str(node.value)
        if "{" not in text:
            return node
        skip = self.template_keys if path == ("datasets", "prompt_template") else frozenset()
        # A command run by ``sh -c``: a value is one shell word, never more shell.
        quote = shlex.quote if path[-2:] in SHELL_COMMANDS else str

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in skip:
                return match.group(0)
            if name in self.values:
                return quote(str(self.values[name]))
            self.missing.setdefault(name, None)
            return match.group(0)

        filled = _PLACEHOLDER.sub(substitute, text)
        if filled == text:
            return node
        tag = node.tag
        if node.style is None:  # plain: typed as YAML would type the plain text, as a scalar
            tag = self.resolver.resolve(ScalarNode, filled, (True, False))
        return ScalarNode(tag, filled, node.start_mark, node.end_mark, style=node.style)


def _flow_placeholder(node: MappingNode) -> str | None:
    """``name`` when the node is ``{name}`` written plain (a one-entry flow mapping)."""
    if not node.flow_style or len(node.value) != 1:
        return None
    key, value = node.value[0]
    if not (isinstance(key, ScalarNode) and key.style is None
            and _IDENTIFIER.fullmatch(str(key.value))):
        return None
    if not (isinstance(value, ScalarNode) and value.tag == _NULL_TAG and value.value == ""):
        return None
    return str(key.value)


def _key_text(node: Node) -> str:
    return str(node.value) if isinstance(node, ScalarNode) else ""


def _template_keys(root: Node) -> frozenset[str]:
    """``datasets.prompt_template_keys`` as written, else FMBench's default."""
    datasets = _child(root, "datasets")
    keys = _child(datasets, "prompt_template_keys") if datasets is not None else None
    if isinstance(keys, SequenceNode):
        return frozenset(str(item.value) for item in keys.value if isinstance(item, ScalarNode))
    return frozenset(DEFAULT_TEMPLATE_KEYS)


def _child(node: Node | None, name: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value == name:
            return value
    return None
