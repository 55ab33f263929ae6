"""A judge is an endpoint: any backend, a prompt template and a parser that fails closed.

Each judge is an ``Experiment`` of the config model served by the ordinary backend registry
(bedrock, openai, sagemaker, local, ...), so judging needs no backend of its own. Calls are
made after every load case has finished (on the controller), cached by content
(``accuracy.cache``), priced per token, and stopped by a spend limit before it is crossed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from pytest_fmbench.accuracy.cache import CachedReply, JudgeCache, cache_key
from pytest_fmbench.endpoints.base import Endpoint, InferenceRequest, KeepsText

# Bump when the template text changes: it is part of every cache key.
TEMPLATE_ID = "pytest-fmbench-judge-v1"
PARSER_VERSION = 1

# Our own rubric (not FMBench's): sections delimited, the reasoning before the verdict, and
# a hedged or contradictory answer is incorrect (FMBench's rules let "X, or maybe Y" pass).
DEFAULT_TEMPLATE = """\
You are grading one answer to a question. Decide whether the candidate answer is correct,
given the reference answers (any one of them is acceptable).

Rules:
1. Correct: the candidate states an answer with the same meaning as one reference answer;
   wording, case and extra explanation may differ.
2. Incorrect: the candidate gives a different answer, no answer, several alternative
   answers ("X or maybe Y"), or contradicts itself.
3. Judge only the answer, not its style or length.

<question>
{question}
</question>
<reference_answers>
{references}
</reference_answers>
<candidate_answer>
{answer}
</candidate_answer>

Reply with one JSON object and nothing else:
{"reasoning": "<one sentence>", "verdict": "correct" or "incorrect"}
"""

_VERDICT_KEYS = ("verdict", "grade", "decision", "judgement", "judgment")
_INCORRECT = ("incorrect", "wrong", "false", "no", "i")
_CORRECT = ("correct", "right", "true", "yes", "c")
_GRADE = re.compile(r"GRADE:\s*([CI])\b")
_DECODER = json.JSONDecoder()


def render_prompt(template: str, question: str, references: Sequence[str], answer: str) -> str:
    """Fill ``{question}``, ``{references}`` (one per line), ``{ground_truth}`` (FMBench's
    comma-joined string), ``{answer}`` and ``{rules}`` (empty); other braces are left as
    they are, so templates may show JSON."""
    values = {"question": question, "references": "\n".join(f"- {r}" for r in references),
              "ground_truth": ",".join(references), "answer": answer, "rules": ""}
    return re.sub(r"\{(question|references|ground_truth|answer|rules)\}",
                  lambda m: values[m.group(1)], template)


def _word(value: str) -> str | None:
    word = value.strip().strip(".!\"'`*").lower()
    # "incorrect" is checked first: a substring test for "correct" would match it.
    if word in _INCORRECT or word.startswith("incorrect"):
        return "incorrect"
    if word in _CORRECT:
        return "correct"
    return None


def parse_verdict(text: str) -> str | None:
    """"correct", "incorrect", or None when the reply cannot be read (an abstention).

    Read, in order: the first JSON object in the reply (fences or prose around it allowed)
    with a verdict key; the last ``GRADE: C|I``; a reply that is only the word. Anything
    else fails closed: the word "correct" somewhere in prose is never taken as a verdict.
    """
    for match in re.finditer(r"\{", text):
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            lowered = {str(k).lower(): v for k, v in value.items()}
            for key in _VERDICT_KEYS:
                if isinstance(lowered.get(key), str):
                    return _word(lowered[key])
            return None
    grades = _GRADE.findall(text)
    if grades:
        return "correct" if grades[-1] == "C" else "incorrect"
    return _word(text) if len(text.strip().split()) == 1 else None


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    """One answer to judge."""

    key: str               # stable id of the item (candidate, payload file, prompt id)
    question: str
    references: tuple[str, ...]
    answer: str


@dataclasses.dataclass(frozen=True)
class JudgePrice:
    input_per_1k: float
    output_per_1k: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) / 1000 * self.input_per_1k
                + (completion_tokens or 0) / 1000 * self.output_per_1k)


@dataclasses.dataclass
class Judge:
    """One judge of the panel: an endpoint plus how to ask it."""

    name: str
    endpoint: Endpoint
    identity: dict[str, Any]          # backend, model, where: part of the cache key
    parameters: dict[str, Any]
    template: str = DEFAULT_TEMPLATE
    template_id: str = TEMPLATE_ID
    price: JudgePrice | None = None   # None: unpriced (reported so, never as $0)
    concurrency: int = 4
    deploys: bool = False             # started for judging (local judges) and stopped after


@dataclasses.dataclass
class JudgeCall:
    judge: str
    item: str
    status: str                 # ok | parse_failed | error | skipped
    verdict: str | None
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None   # None when the judge is unpriced
    cached: bool = False
    error: str = ""


@dataclasses.dataclass
class SpendGuard:
    """Stops new judge calls before the spend limit would be crossed (None: no limit)."""

    limit_usd: float | None = None
    spent_usd: float = 0.0

    def allows(self, estimate: float) -> bool:
        return self.limit_usd is None or self.spent_usd + estimate <= self.limit_usd


def estimate_cost(judge: Judge, prompt: str) -> float:
    """Before a call: ~4 characters a token for the prompt, the max_tokens for the reply."""
    if judge.price is None:
        return 0.0
    max_tokens = judge.parameters.get("max_tokens") or judge.parameters.get("max_new_tokens") or 300
    return judge.price.cost(len(prompt) // 4 + 1, int(max_tokens))


def _call_from_reply(judge: Judge, item: JudgeItem, reply: CachedReply, cached: bool) -> JudgeCall:
    verdict = parse_verdict(reply.text)
    cost = None if judge.price is None else (
        0.0 if cached else judge.price.cost(reply.prompt_tokens, reply.completion_tokens))
    return JudgeCall(judge.name, item.key, "ok" if verdict else "parse_failed", verdict,
                     reply.text, reply.prompt_tokens, reply.completion_tokens, cost, cached)


async def _judge_all(judge: Judge, items: Sequence[JudgeItem], cache: JudgeCache | None,
                     guard: SpendGuard) -> list[JudgeCall]:
    client = judge.endpoint.client()
    if isinstance(client, KeepsText):
        client.keep_text = True  # the verdict is the text: keep it even with server usage
    semaphore = asyncio.Semaphore(max(1, judge.concurrency))
    identity = {**judge.identity, "template": judge.template_id}

    async def one(item: JudgeItem) -> JudgeCall:
        prompt = render_prompt(judge.template, item.question, item.references, item.answer)
        key = cache_key(identity, prompt, judge.parameters)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            return _call_from_reply(judge, item, hit, cached=True)
        estimate = estimate_cost(judge, prompt)
        if not guard.allows(estimate):
            return JudgeCall(judge.name, item.key, "skipped", None,
                             error="judge spend limit reached")
        guard.spent_usd += estimate  # reserved now, settled when the reply is priced
        async with semaphore:
            result = await client.invoke(InferenceRequest(prompt, dict(judge.parameters)))
        guard.spent_usd -= estimate
        if result.error:
            return JudgeCall(judge.name, item.key, "error", None, error=result.error,
                             prompt_tokens=result.prompt_tokens)
        reply = CachedReply(result.text, result.prompt_tokens, result.completion_tokens)
        call = _call_from_reply(judge, item, reply, cached=False)
        guard.spent_usd += call.cost or 0.0
        if cache is not None:
            cache.put(key, reply)
        return call

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        await client.aclose()


def run_judges(judges: Sequence[Judge], items: Sequence[JudgeItem], *,
               cache: JudgeCache | None = None, spend_limit_usd: float | None = None,
               log: Callable[[str], None] = print) -> dict[str, list[JudgeCall]]:
    """Every judge's call on every item (judges one after another, each with its own
    concurrency); a judge that ``deploys`` is started first and always stopped after."""
    guard = SpendGuard(spend_limit_usd)
    calls: dict[str, list[JudgeCall]] = {}
    for judge in judges:
        try:
            if judge.deploys:
                judge.endpoint.deploy()
            calls[judge.name] = asyncio.run(_judge_all(judge, items, cache, guard))
        except Exception as exc:  # noqa: BLE001 - a broken judge abstains, the run goes on
            log(f"[fmbench] judge '{judge.name}' failed: {type(exc).__name__}: {exc}")
            calls[judge.name] = [JudgeCall(judge.name, item.key, "error", None,
                                           error=f"{type(exc).__name__}") for item in items]
        finally:
            if judge.deploys:
                judge.endpoint.teardown()
    return calls
