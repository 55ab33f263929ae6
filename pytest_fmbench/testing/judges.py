"""Deterministic judges for tests: verdicts scripted per judge and per answer.

``ScriptedJudges.reply(model, prompt)`` reads the candidate answer out of the judge prompt
(between ``<candidate_answer>`` tags, as in the default template; for other templates the
whole prompt is searched for a scripted answer), looks up the verdict scripted for that judge
and answer, and writes a reply in the chosen format. Plug it into the OpenAI test server
(``ServerBehaviour(reply=judges.reply)``) or the AWS runtime emulator
(``emulator.converse_reply = judges.reply``). ``calls`` counts replies per judge.

Verdict values: ``correct``, ``incorrect``, or a reply format: ``garbage`` (prose with no
verdict: a parse failure), ``fenced-correct`` (JSON in a code fence), ``prose-incorrect``
(a sentence containing INCORRECT and no JSON: a parse failure, never read as correct).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping

_ANSWER = re.compile(r"<candidate_answer>\s*(.*?)\s*</candidate_answer>", re.DOTALL)


class ScriptedJudges:
    def __init__(self, verdicts: Mapping[str, Mapping[str, str]],
                 default: str = "garbage") -> None:
        # verdicts[judge model id][candidate answer] = verdict or format
        self.verdicts = {k: dict(v) for k, v in verdicts.items()}
        self.default = default
        self.calls: Counter[str] = Counter()

    def verdict_for(self, model: str, prompt: str) -> str | None:
        table = self.verdicts.get(model)
        if table is None:
            return None
        match = _ANSWER.search(prompt)
        if match is not None:
            return table.get(match.group(1).strip(), self.default)
        for answer in sorted(table, key=len, reverse=True):
            if answer in prompt:
                return table[answer]
        return self.default

    def reply(self, model: str, prompt: str) -> str | None:
        verdict = self.verdict_for(model, prompt)
        if verdict is None:
            return None
        self.calls[model] += 1
        if verdict in ("correct", "incorrect"):
            return json.dumps({"reasoning": "scripted", "verdict": verdict})
        if verdict == "fenced-correct":
            return 'Here you go:\n```json\n{"verdict": "correct", "explanation": "x"}\n```'
        if verdict == "prose-incorrect":
            return "The answer is INCORRECT because it names another city."
        return "I cannot decide without more context."


def scripted_answers(answers: Mapping[str, str], default: str = "") -> ScriptedCandidate:
    return ScriptedCandidate(dict(answers), default)


class ScriptedCandidate:
    """A candidate model whose answer is scripted per question (a substring of the prompt)."""

    def __init__(self, answers: dict[str, str], default: str = "") -> None:
        self.answers = answers
        self.default = default

    def reply(self, model: str, prompt: str) -> str:
        for question in sorted(self.answers, key=len, reverse=True):
            if question in prompt:
                return self.answers[question]
        return self.default
