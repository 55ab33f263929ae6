"""Token counters: how many tokens a prompt has, for token-length filters and metrics.

A configured tokenizer gives exact counts; without one we estimate from the word count
(750 words = 1000 tokens, FMBench's rule of thumb) and say so, because filters and
throughput numbers are then approximate.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

TOKENIZER_KEY = "datasets.tokenizer"
TOKENIZER_FILE = "tokenizer.json"
ESTIMATE_RULE = "750 words = 1000 tokens"
_HOW_TO_CONFIGURE = (
    f"set '{TOKENIZER_KEY}:' to a local tokenizer directory (one with {TOKENIZER_FILE} needs "
    "no network) or a Hugging Face model id for exact counts"
)


class TokenCounter(Protocol):
    name: str  # identifies the tokenizer, and goes into payload-file fingerprints
    source: str  # "tokenizer" or "estimate", as recorded in RequestRecord.token_source

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class WordEstimateCounter:
    """ceil(words * 4/3): no dependency, but only as good as the 750-words rule."""

    def __init__(self) -> None:
        self.name = f"estimate ({ESTIMATE_RULE})"
        self.source = "estimate"

    def count(self, text: str) -> int:
        return math.ceil(len(text.split()) * 4 / 3)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]


class FastTokenizerCounter:
    """A ``tokenizer.json`` through the Rust ``tokenizers`` library (no transformers import)."""

    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer  # optional dependency: only needed on this path

        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        # A tokenizer.json may enable padding or truncation, which would distort counts.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.name = f"{tokenizer_file} (sha256 {_file_digest(tokenizer_file)[:12]})"
        self.source = "tokenizer"

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]


class TransformersCounter:
    """Any tokenizer ``transformers.AutoTokenizer`` can load (local directory or hub id)."""

    def __init__(self, spec: str, name: str) -> None:
        from transformers import AutoTokenizer  # slow to import: only when configured

        self._tokenizer: Any = AutoTokenizer.from_pretrained(spec)
        self.name = name
        self.source = "tokenizer"

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        # verbose=False: long prompts would otherwise warn about the model's max length.
        encoded = self._tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                  padding=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]


def load_token_counter(spec: str | os.PathLike[str] | None, *,
                       warn: Callable[[str], None]) -> TokenCounter:
    """The counter for ``datasets.tokenizer``; the word estimate (with a warning) when it is
    unset or cannot be loaded, so a benchmark still runs offline."""
    if spec is None:
        warn(f"token counts are estimated from word counts ({ESTIMATE_RULE}) because no "
             f"tokenizer is configured; {_HOW_TO_CONFIGURE}")
        return WordEstimateCounter()
    try:
        return _load_tokenizer(os.fspath(spec))
    except Exception as exc:  # noqa: BLE001 - transformers/hub raise many types; all mean "fall back"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warn(f"could not load tokenizer '{os.fspath(spec)}' ({type(exc).__name__}: {reason}); "
             f"token counts are estimated from word counts ({ESTIMATE_RULE}); "
             f"{_HOW_TO_CONFIGURE}")
        return WordEstimateCounter()


def cached_tokenizer_file(model_id: str, cache_dir: Path | None = None) -> Path | None:
    """The ``tokenizer.json`` of a hub model in the local Hugging Face cache, or None.

    Never touches the network: FMBench configs name their model's tokenizer
    (``hf_tokenizer_model_id``), and a benchmark must not download one unasked.
    """
    try:
        from huggingface_hub import try_to_load_from_cache  # optional: with transformers
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(model_id, TOKENIZER_FILE, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - an odd id is simply "not cached"
        return None
    return Path(found) if isinstance(found, str) else None


def _load_tokenizer(spec: str) -> TokenCounter:
    path = Path(spec).expanduser()
    if path.is_file():
        return FastTokenizerCounter(path)
    if (path / TOKENIZER_FILE).is_file():
        try:
            return FastTokenizerCounter(path / TOKENIZER_FILE)
        except ImportError:
            pass  # no `tokenizers`: transformers may still read the directory
    if path.is_dir():
        return TransformersCounter(str(path), name=f"{path} (sha256 {_dir_digest(path)[:12]})")
    if _looks_like_path(spec):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return TransformersCounter(spec, name=spec)  # a hub id: needs the network or the HF cache


def _looks_like_path(spec: str) -> bool:
    """Hub ids are 'org/name'; anything absolute or relative-marked is meant as a path."""
    return os.path.isabs(spec) or spec.startswith((".", "~"))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dir_digest(directory: Path) -> str:
    """Digest of the small files (tokenizer and config files, not weights), so payload files
    are rebuilt when the tokenizer in a directory changes."""
    digest = hashlib.sha256()
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.suffix in {".json", ".txt", ".model", ".tiktoken"}:
            digest.update(file.name.encode())
            digest.update(_file_digest(file).encode())
    return digest.hexdigest()
