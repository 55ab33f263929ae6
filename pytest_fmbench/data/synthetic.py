"""A LongBench-shaped dataset built offline from the English prose that ships with Python.

``pydoc_data.topics`` holds the language reference (~65k words). We keep its prose
sentences, drop grammar rules, code and headings, and cut contiguous passages whose
lengths spread log-uniformly, so every FMBench token-length filter gets prompts.
"""

from __future__ import annotations

import functools
import math
import random
import re
from typing import Any

from pytest_fmbench.data.tokens import TokenCounter

MIN_CONTEXT_WORDS = 15
MAX_CONTEXT_WORDS = 3500

# Lines under a heading are made of one repeated character in the reST-rendered text.
_HEADING_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_ADMONITIONS = ("New in version", "Added in version", "Changed in version",
                "Deprecated since", "See also", "Note:", "Warning:")
_WORD = re.compile(r"[A-Za-z][a-z]{5,}")


def synthetic_longbench(n_records: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """Return ``n_records`` LongBench-shaped records, identical for the same ``seed``."""
    rng = random.Random(seed)
    sentences = _prose_sentences()
    records = []
    for index, target_words in enumerate(_context_lengths(n_records, rng)):
        passage = _passage(sentences, target_words, rng)
        question, answer = _cloze_question(passage, rng)
        context = " ".join(passage)
        records.append({
            "_id": f"synthetic-{seed}-{index:05d}",
            "dataset": "synthetic",
            "language": "en",
            "input": question,
            "context": context,
            "answers": [answer],
            "length": len(context.split()),
        })
    return records


def _context_lengths(n_records: int, rng: random.Random) -> list[int]:
    """Target word counts, stratified on a log scale so even small datasets cover every
    length band, then shuffled so the dataset order is not sorted by length."""
    low, high = math.log(MIN_CONTEXT_WORDS), math.log(MAX_CONTEXT_WORDS)
    lengths = [round(math.exp(low + (high - low) * (i + rng.random()) / n_records))
               for i in range(n_records)]
    rng.shuffle(lengths)
    return lengths


def _passage(sentences: tuple[str, ...], target_words: int, rng: random.Random) -> list[str]:
    """Contiguous sentences (so the passage reads as prose) totalling >= target_words."""
    start = rng.randrange(len(sentences))
    passage: list[str] = []
    words = 0
    while words < target_words:
        sentence = sentences[(start + len(passage)) % len(sentences)]
        passage.append(sentence)
        words += len(sentence.split())
    return passage


def _cloze_question(passage: list[str], rng: random.Random) -> tuple[str, str]:
    """Blank out one longer word of one sentence: the answer is in the context, so a real
    model can answer and the record keeps LongBench's question/answers shape."""
    candidates = [s for s in passage if _WORD.search(s)]
    sentence = rng.choice(candidates or passage)
    words = _WORD.findall(sentence)
    if not words:
        return f'Which sentence of the passage begins with "{sentence.split()[0]}"?', sentence
    answer = rng.choice(words)
    blanked = re.sub(rf"\b{re.escape(answer)}\b", "____", sentence, count=1)
    return f'Which word fills the blank in this sentence from the passage: "{blanked}"', answer


@functools.lru_cache(maxsize=1)
def _prose_sentences() -> tuple[str, ...]:
    """Prose sentences of the language reference, in document order (cached: ~50 ms)."""
    from pydoc_data.topics import topics  # ships with CPython; imported late, it is ~1 MB

    sentences: list[str] = []
    for name in sorted(topics):  # sorted: dict order is stable, but be explicit
        for paragraph in _prose_paragraphs(topics[name]):
            sentences.extend(s for s in _SENTENCE_END.split(paragraph) if _is_prose(s))
    return tuple(sentences)


def _prose_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, minus headings, code, grammar and admonitions."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip("\n").splitlines()]
        if not lines or any(_HEADING_UNDERLINE.match(line) for line in lines):
            continue
        joined = " ".join(lines)
        if "::=" in joined or joined.startswith((">>>", "...")) or joined.startswith(_ADMONITIONS):
            continue
        joined = _EMPHASIS.sub(r"\1", _FOOTNOTE.sub("", joined))
        paragraphs.append(re.sub(r"\s+", " ", joined))
    return paragraphs


def _is_prose(sentence: str) -> bool:
    """A sentence, not a code line: capitalised, terminated, mostly letters."""
    words = sentence.split()
    if not 5 <= len(words) <= 80 or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    visible = [c for c in sentence if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters / len(visible) >= 0.8


# -- prompts of an exact token length ---------------------------------------------------------

class ExactLengthText:
    """Text of exactly N tokens as the configured tokenizer counts them (the synthetic and
    trace workloads' prompts).

    Words of the prose above, each with its leading space, are counted once. Byte-level and
    whitespace pre-tokenizers never merge across a space, so a run of such words has the sum
    of their counts: words are drawn at random while the remainder is large, then the
    remainder is filled with words of the exact count left. The result is recounted and
    nudged a word at a time, so a tokenizer without that property (or the word estimate)
    still lands within a token where any text can.
    """

    def __init__(self, counter: TokenCounter, *, vocabulary: int = 4000) -> None:
        words = sorted({w for s in _prose_sentences() for w in s.split() if w.isalpha()})
        rng = random.Random(0)
        rng.shuffle(words)
        words = words[:vocabulary]
        counts = counter.count_many([" " + w for w in words])
        self.counter = counter
        self._by_count: dict[int, list[str]] = {}
        for word, count in zip(words, counts):
            if count >= 1:
                self._by_count.setdefault(count, []).append(word)
        self._words = [w for c in sorted(self._by_count) for w in self._by_count[c]]
        self._count = {w: c for c, ws in self._by_count.items() for w in ws}
        self._longest = max(self._by_count)

    def words(self, tokens: int, rng: random.Random) -> list[str]:
        """Words whose text (``" ".join``, with a leading space) has ``tokens`` tokens by the
        per-word counts; deterministic for the same rng state."""
        out: list[str] = []
        left = tokens
        while left > self._longest:
            word = rng.choice(self._words)
            out.append(word)
            left -= self._count[word]
        while left > 0:
            sizes = [c for c in self._by_count if c <= left]
            if not sizes:  # no word this short (the word estimate counts none below 2)
                break
            size = max(sizes)
            out.append(rng.choice(self._by_count[size]))
            left -= size
        return out

    def text(self, tokens: int, rng: random.Random, *, prefix: str = "") -> str:
        """``prefix`` followed by words, ``tokens`` tokens in all (the prefix's included)."""
        if tokens <= 0:
            return prefix
        have = self.counter.count(prefix) if prefix else 0
        words = self.words(max(tokens - have, 0), rng)
        text = self._join(prefix, words)
        for _ in range(16):  # recount: the per-word sums are exact for most tokenizers
            error = self.counter.count(text) - tokens
            if error == 0:
                break
            if error > 0 and words:
                words = words[:-1]
            elif error < 0:
                words = words + self.words(-error, rng)
            else:
                break
            text = self._join(prefix, words)
        return text

    @staticmethod
    def _join(prefix: str, words: list[str]) -> str:
        return " ".join([prefix, *words]) if prefix else " ".join(words)


def sample_lengths(spec: Any, count: int, rng: random.Random) -> list[int]:
    """``count`` token lengths from a length spec: a number (fixed), ``{mean, stddev}``
    (normal, rounded, at least 1, optionally within ``min``/``max``), or ``{values,
    weights}`` (a discrete distribution)."""
    if isinstance(spec, int):
        return [spec] * count
    values = spec.get("values")
    if values:
        weights = spec.get("weights")
        return [int(v) for v in rng.choices(values, weights=weights, k=count)]
    mean, stddev = float(spec["mean"]), float(spec.get("stddev", 0.0))
    low, high = int(spec.get("min", 1)), int(spec.get("max", 10**9))
    return [min(high, max(low, round(rng.gauss(mean, stddev)) if stddev else round(mean)))
            for _ in range(count)]
