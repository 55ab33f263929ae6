"""Secrets by allow-list: where a user can put a secret, its value never leaves the process.

Redaction does not guess from key names which values are secret; it redacts by *place*:

- every value of a ``headers`` mapping (header names stay);
- every value of an ``env`` mapping (``openai.deploy.env``, ``deploy.env``, ...);
- URL userinfo and every query value (``https://user:pw@gw/v1?key=...``);
- inline secrets of a command: what follows ``--api-key``/``--token``/``--password``,
  ``NAME_TOKEN=``/``NAME_KEY=``/``*SECRET*=``/``*PASSWORD*=`` assignments, ``Authorization:``
  and ``Bearer`` values;
- ``--fmbench-set`` values on the recorded command line.

The values found in those places (and the values of the environment variables a config
names: ``api_key_env``, ``headers_env``, any ``*_env`` key) are also registered in
``KNOWN``, so free text written anywhere (logs, server logs, error details, the report) is
scrubbed of them by ``scrub``. Env values join ``KNOWN`` when their name says secret or they
look like a credential: ``VLLM_LOGGING_LEVEL: WARNING`` must not blank every "WARNING".
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***redacted***"
# Shorter values ("0", "true", "auto") are too common to scrub from free text safely; the
# places listed above are redacted whatever their length.
MIN_SCRUBBED_LENGTH = 6
SECRET_MAPPINGS = frozenset({"headers", "env"})
SET_OPTION = "--fmbench-set"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
# Names end with the secret word, so --max-num-batched-tokens or max_tokens= stay readable.
_INLINE = [
    # --api-key X, --token=X, --hf-token X, --password X
    re.compile(r"(?i)(--[\w-]*(?:api[-_]?key|token|password|passwd|secret)[=\s]+)"
               r"(\"[^\"]*\"|'[^']*'|[^\s\"']+)"),
    # HF_TOKEN=X, OPENAI_API_KEY=X, DB_PASSWORD=X, MY_SECRET_THING=X (shell assignments)
    re.compile(r"(?i)\b([\w.-]*(?:token|key|password|passwd|credentials?)=|[\w.-]*secret[\w.-]*=)"
               r"(\"[^\"]*\"|'[^']*'|[^\s\"'&;]+)"),
    # Authorization: Bearer X, Ocp-Apim-Subscription-Key: X, Cookie: X (header lines, -H args)
    re.compile(r"(?i)\b((?:authorization|[\w-]*(?:key|token|secret|cookie))\s*:[ \t]*)"
               r"([^\"'\r\n}]+)"),
    re.compile(r"(?i)(\bbearer\s+)([^\s\"',}]+)"),
]


class KnownSecrets:
    """The literal secret values of this run, scrubbed from every text written."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str | None]) -> None:
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SCRUBBED_LENGTH}
        with self._lock:
            self._values = self._values | new

    def clear(self) -> None:
        with self._lock:
            self._values = frozenset()

    def scrub(self, text: str) -> str:
        # Longest first, so a secret containing another is replaced whole.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def __contains__(self, value: str) -> bool:
        return value in self._values


KNOWN = KnownSecrets()


# -- free text -----------------------------------------------------------------------------

def redact_url(url: str) -> str:
    """Userinfo and query values masked; scheme, host, path and query keys kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{key}={REDACTED}" if sep else key
        for key, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, *, inline: bool = True) -> str:
    """Known secret values and URL credentials and queries masked; with ``inline``, also
    secrets inline in commands and header lines (for commands, logs, error details)."""
    if not text:
        return text
    text = KNOWN.scrub(text)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    if inline:
        for pattern in _INLINE:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# -- structured data (config dumps, metadata) ----------------------------------------------------

# A safety net besides the places: a scalar whose key names a secret (``password: x``).
_SECRET_NAME = re.compile(r"(?i)(^|[_\-.])(api[_\-]?key|apikey|token|secret|secret[_\-]?key|password|"
                          r"passwd|credentials?|authorization|cookie|access[_\-]?key([_\-]?id)?|"
                          r"private[_\-]?key)$")


def redact(data: Any, extra: Iterable[str] = ()) -> Any:
    """A copy with every secret place masked and every string scrubbed (also of ``extra``)."""
    local = KnownSecrets()
    local.add(extra)

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            if key.lower() in SECRET_MAPPINGS:
                return {str(k): REDACTED for k in value}
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key and _SECRET_NAME.search(key) and value not in (None, "", 0, False):
            return REDACTED
        if isinstance(value, str):
            if key.lower() in SECRET_MAPPINGS and value:
                return REDACTED  # headers given as one "Name: value" string
            return scrub(local.scrub(value))
        return value

    return walk(data)


def redact_args(args: Sequence[str]) -> list[str]:
    """A pytest command line with ``--fmbench-set`` values (and inline secrets) masked."""
    out: list[str] = []
    follows_set = False
    for arg in args:
        if follows_set:
            out.append(_mask_assignment(arg))
        elif arg.startswith(SET_OPTION + "="):
            out.append(SET_OPTION + "=" + _mask_assignment(arg[len(SET_OPTION) + 1:]))
        else:
            out.append(scrub(arg))
        follows_set = arg == SET_OPTION
    return out


def _mask_assignment(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    return f"{key}={REDACTED}" if sep else scrub(pair)


_SECRET_WORD = re.compile(r"(?i)key|token|secret|password|passwd|auth|credential|cookie")


# -- what a config holds -----------------------------------------------------------------------

def secret_values(data: Any, environ: Mapping[str, str] | None = None) -> set[str]:
    """Every secret value a config dump holds or names (see the module docstring)."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        lowered = key.lower()
        if isinstance(value, Mapping):
            if lowered == "headers":
                found.update(str(v) for v in value.values() if v is not None)
            if lowered == "env":  # scrubbed from free text when secret by name or by look
                found.update(str(v) for k, v in value.items()
                             if v is not None and (_SECRET_WORD.search(str(k)) or _token_like(str(v))))
            if lowered == "headers_env":
                found.update(environ[str(v)] for v in value.values() if environ.get(str(v)))
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            if lowered.endswith("_env") and environ.get(value):
                found.add(environ[value])
            if lowered in SECRET_MAPPINGS:
                found.add(value)
            found.update(_inline_values(value))

    walk(data)
    return found


def _token_like(value: str) -> bool:
    """A value that looks like a credential (``hf_AbC123...``), not a setting (``WARNING``)."""
    letters_and_digits = any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
    return " " not in value and len(value) >= 8 and (letters_and_digits or len(value) >= 24)


def _inline_values(text: str) -> set[str]:
    values: set[str] = set()
    for match in _URL.finditer(text):
        try:
            parts = urlsplit(match.group(0))
        except ValueError:
            continue
        if parts.password:
            values.add(parts.password)
        if parts.username and parts.password is None:
            values.add(parts.username)  # a token given as the whole userinfo
        # Query values are masked in place always; scrubbed from text when credential-like
        # (``key=...``), not ``api-version=2024-02-01``.
        values.update(v for k, sep, v in (i.partition("=") for i in parts.query.split("&"))
                      if sep and v and (_SECRET_WORD.search(k) or _token_like(v)))
    for pattern in _INLINE:
        values.update(m.group(2).strip("\"'") for m in pattern.finditer(text))
    return values


def register_config_secrets(data: Any, environ: Mapping[str, str] | None = None,
                            placeholder_values: Mapping[str, str] | None = None) -> None:
    """Remember a config's secret values, so every text written is scrubbed of them.

    ``--fmbench-set`` values are always masked on the recorded command line; those whose
    name says secret (``hf_token=...``) are also scrubbed from every text, wherever the
    config put them (others, like ``region``, would blank ordinary words).
    """
    KNOWN.add(secret_values(data, environ))
    KNOWN.add(v for k, v in (placeholder_values or {}).items() if _SECRET_WORD.search(k))
