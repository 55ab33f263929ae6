"""Deterministic scorers: exact match, token F1, ROUGE-L, containment, LongBench's metrics.

Semantics follow LongBench's ``metrics.py``/``eval.py`` (THUDM/LongBench), re-implemented:
answers are normalised (lower case, no punctuation, no articles, single spaces), an item's
score is the **maximum over all its reference answers**, and for trec, triviaqa, samsum and
lsht only the first line of the prediction is scored. Differences, on purpose: ROUGE-L is a
token LCS F-measure of our own (no ``rouge`` dependency; LongBench's package splits
sentences first, so long multi-sentence answers can differ slightly); the Chinese variants
count characters instead of ``jieba`` words; ``classification_score`` is the intended rule
(LongBench's has an always-true test and mutates a list while iterating).

Reasoning (``<think>…</think>``) is stripped before any scorer sees the answer.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_ZH_PUNCTUATION = frozenset("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
# A closed reasoning block, or an unclosed one that runs to the end (cut off by max_tokens).
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
# Servers that drop the opening tag (the chat template opens it) leave "…</think>answer".
_THINK_TAIL = re.compile(r"\A.*?</think>", re.DOTALL | re.IGNORECASE)

Scorer = Callable[[str, str], float]


def strip_reasoning(text: str) -> str:
    """The answer without its reasoning: ``<think>…</think>`` blocks removed (an unclosed
    block to the end, a dangling ``…</think>`` prefix too), surrounding space trimmed."""
    lowered = text.lower()
    if "<think>" in lowered:
        text = _THINK.sub("", text)
    elif "</think>" in lowered:
        text = _THINK_TAIL.sub("", text)
    return text.strip()


def normalize_answer(text: str) -> str:
    """LongBench/SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _normalize_zh(text: str) -> str:
    text = text.lower()
    return "".join(ch for ch in text if ch not in _PUNCTUATION and ch not in _ZH_PUNCTUATION
                   and not ch.isspace())


def _token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    common = Counter(prediction) & Counter(reference)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def qa_f1(prediction: str, reference: str) -> float:
    """LongBench's ``qa_f1_score``: token F1 of the normalised strings."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def qa_f1_zh(prediction: str, reference: str) -> float:
    """Character F1 (LongBench cuts words with jieba; characters need no dependency)."""
    return _token_f1(list(_normalize_zh(prediction)), list(_normalize_zh(reference)))


def contains(prediction: str, reference: str) -> float:
    """1 when the normalised reference occurs in the normalised prediction (word-bounded)."""
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    return float(f" {ref} " in f" {normalize_answer(prediction)} ")


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (punctuation removed)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l_zh(prediction: str, reference: str) -> float:
    pred, ref = list(_normalize_zh(prediction)), list(_normalize_zh(reference))
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    return 0.0 if lcs == 0 else 2 * lcs / (len(pred) + len(ref))


def count_score(prediction: str, reference: str) -> float:
    """passage_count: share of the numbers in the prediction equal to the reference."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(reference) for n in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, reference: str) -> float:
    """passage_retrieval: share of numbers equal to the reference's paragraph number."""
    found = re.findall(r"Paragraph (\d+)", reference) or re.findall(r"段落(\d+)", reference)
    if not found:
        return 0.0
    numbers = re.findall(r"\d+", prediction)
    return sum(n == found[0] for n in numbers) / len(numbers) if numbers else 0.0


def code_sim_score(prediction: str, reference: str) -> float:
    """lcc/repobench-p: similarity of the first code line (difflib ratio, 0-1)."""
    line = next((ln for ln in prediction.lstrip("\n").split("\n")
                 if not ln.lstrip().startswith(("`", "#", "//"))), "")
    return difflib.SequenceMatcher(None, line, reference).ratio()


def classification_score(prediction: str, reference: str,
                         all_classes: Sequence[str] = ()) -> float:
    """trec/lsht: 1/k when the reference is among the k class names found in the prediction
    (names that are substrings of the reference but not it are dropped)."""
    found = [c for c in all_classes if c in prediction]
    found = [c for c in found if not (c in reference and c != reference)]
    return 1.0 / len(found) if reference in found else 0.0


# LongBench's dataset2metric, by LongBench dataset name (also the "_e" LongBench-E subsets).
LONGBENCH_METRICS: dict[str, str] = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "multifieldqa_zh": "qa_f1_zh", "hotpotqa": "qa_f1", "2wikimqa": "qa_f1",
    "musique": "qa_f1", "dureader": "rouge_l_zh", "gov_report": "rouge_l",
    "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_l_zh", "trec": "classification",
    "triviaqa": "qa_f1", "samsum": "rouge_l", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count",
    "passage_retrieval_zh": "retrieval", "lcc": "code_sim", "repobench-p": "code_sim",
}
# LongBench scores only the first line of the prediction for these.
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})

SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match, "qa_f1": qa_f1, "qa_f1_zh": qa_f1_zh, "rouge_l": rouge_l,
    "rouge_l_zh": rouge_l_zh, "contains": contains, "count": count_score,
    "retrieval": retrieval_score, "code_sim": code_sim_score,
}
# Always computed when an item has references; "longbench" is added for LongBench data.
DEFAULT_SCORERS = ("exact_match", "qa_f1", "rouge_l", "contains")


def longbench_dataset(name: str | None) -> str | None:
    """LongBench's dataset name from a record's ``dataset`` field or a source file name
    (``hotpotqa_e.jsonl`` → ``hotpotqa``); None when it is not a LongBench dataset."""
    if not name:
        return None
    stem = name.rsplit("/", 1)[-1].removesuffix(".jsonl").removesuffix(".json")
    stem = stem.removesuffix("_e")
    return stem if stem in LONGBENCH_METRICS else None


@dataclasses.dataclass(frozen=True)
class ItemScores:
    """The scores of one answer against its references (None for a failed request)."""

    scores: dict[str, float]
    truncated: bool
    answer: str


def score_answer(answer: str, references: Sequence[str], *,
                 scorers: Sequence[str] = DEFAULT_SCORERS, dataset: str | None = None,
                 all_classes: Sequence[str] = (), truncated: bool = False) -> ItemScores:
    """Every scorer's value for one answer: reasoning stripped, max over the references.
    ``dataset`` (a LongBench name) adds ``longbench``, LongBench's own metric for it."""
    cleaned = strip_reasoning(answer)
    refs = [str(r) for r in references if str(r).strip()]
    scores: dict[str, float] = {}
    for name in scorers:
        scorer = SCORERS[name]
        scores[name] = max((scorer(cleaned, ref) for ref in refs), default=0.0)
    lb = longbench_dataset(dataset)
    if lb is not None:
        prediction = cleaned.lstrip("\n").split("\n")[0] if lb in FIRST_LINE_DATASETS else cleaned
        metric = LONGBENCH_METRICS[lb]
        if metric == "classification":
            value = max((classification_score(prediction, ref, all_classes) for ref in refs),
                        default=0.0)
        else:
            value = max((SCORERS[metric](prediction, ref) for ref in refs), default=0.0)
        scores["longbench"] = value
    return ItemScores(scores=scores, truncated=truncated, answer=cleaned)
