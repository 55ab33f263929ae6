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
