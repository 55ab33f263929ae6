"""Panel voting and its summary: explicit quorum, strict majority, ties and abstentions counted.

Rules (docs/accuracy.md "Voting"):

- Only valid votes count: a judge that errored, whose reply did not parse, or that was not
  asked (spend limit) abstains for that item, and the abstention is counted per judge.
- Fewer than ``quorum`` valid votes → the item is **undecided**.
- A strict majority of the valid votes decides; an even split is a **tie**, decided by the
  ``tie`` policy (default ``incorrect``: ties fail) or left ``undecided``.
- Two accuracies are reported: **strict** (undecided counts as wrong, n = all items) and
  **decided** (undecided items excluded, n shown). FMBench reported only the second, without
  its n (its defects A1/A2).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Literal

from pytest_fmbench.accuracy import stats

CORRECT, INCORRECT, UNDECIDED = "correct", "incorrect", "undecided"
TiePolicy = Literal["incorrect", "correct", "undecided"]


@dataclasses.dataclass(frozen=True)
class Voting:
    quorum: int = 2
    tie: TiePolicy = "incorrect"


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: str           # correct | incorrect | undecided
    votes: int             # valid votes
    tie: bool


def decide(votes: Sequence[str | None], voting: Voting) -> Decision:
    """One item's panel verdict from its judges' votes (None = abstention)."""
    valid = [v for v in votes if v is not None]
    if len(valid) < max(1, voting.quorum):
        return Decision(UNDECIDED, len(valid), False)
    correct = sum(v == CORRECT for v in valid)
    incorrect = len(valid) - correct
    if correct != incorrect:
        return Decision(CORRECT if correct > incorrect else INCORRECT, len(valid), False)
    return Decision(voting.tie, len(valid), True)


@dataclasses.dataclass(frozen=True)
class JudgeSummary:
    judge: str
    votes: int              # valid votes
    correct: int            # of which "correct"
    parse_failed: int
    errors: int
    skipped: int            # not asked: spend limit
    items: int

    @property
    def accuracy(self) -> float | None:
        """The candidate's accuracy by this judge alone (over its valid votes)."""
        return self.correct / self.votes if self.votes else None

    @property
    def leniency(self) -> float | None:
        """Share of "correct" among this judge's votes; compared across judges it shows who
        is lenient (same value as ``accuracy``, read for the judge rather than the model)."""
        return self.accuracy

    @property
    def parse_failure_rate(self) -> float:
        return self.parse_failed / self.items if self.items else 0.0


@dataclasses.dataclass(frozen=True)
class PanelSummary:
    decisions: list[Decision]
    strict: stats.Interval      # correct / all items
    decided: stats.Interval     # correct / decided items
    correct: int
    incorrect: int
    undecided: int
    ties: int
    judges: list[JudgeSummary]
    cohen: dict[tuple[str, str], tuple[float | None, int]]
    fleiss: tuple[float | None, int]
    krippendorff: tuple[float | None, int]

    @property
    def items(self) -> int:
        return len(self.decisions)


def summarize(judges: Sequence[str], votes: Sequence[Sequence[str | None]],
              statuses: Sequence[Sequence[str]], voting: Voting,
              level: float = 0.95) -> PanelSummary:
    """``votes[j][i]``: judge j's verdict on item i (None = abstained); ``statuses[j][i]``
    why (ok, parse_failed, error, skipped)."""
    n_items = len(votes[0]) if votes else 0
    decisions = [decide([votes[j][i] for j in range(len(judges))], voting)
                 for i in range(n_items)]
    correct = sum(d.verdict == CORRECT for d in decisions)
    incorrect = sum(d.verdict == INCORRECT for d in decisions)
    undecided = n_items - correct - incorrect
    per_judge = [
        JudgeSummary(
            judge=name, votes=sum(v is not None for v in votes[j]),
            correct=sum(v == CORRECT for v in votes[j]),
            parse_failed=sum(s == "parse_failed" for s in statuses[j]),
            errors=sum(s == "error" for s in statuses[j]),
            skipped=sum(s == "skipped" for s in statuses[j]), items=n_items)
        for j, name in enumerate(judges)]
    cohen = {(judges[a], judges[b]): stats.cohen_kappa(votes[a], votes[b])
             for a, b in itertools.combinations(range(len(judges)), 2)}
    return PanelSummary(
        decisions=decisions, strict=stats.wilson(correct, n_items, level),
        decided=stats.wilson(correct, correct + incorrect, level), correct=correct,
        incorrect=incorrect, undecided=undecided, ties=sum(d.tie for d in decisions),
        judges=per_judge, cohen=cohen, fleiss=stats.fleiss_kappa(votes),
        krippendorff=stats.krippendorff_alpha_nominal(votes))


def compare_models(correct: dict[str, dict[str, bool]]) -> list[dict[str, object]]:
    """Every pair of models on the items both answered: accuracy difference and the exact
    McNemar p-value of the discordant pairs (a paired test: same items, same judges)."""
    rows: list[dict[str, object]] = []
    for a, b in itertools.combinations(sorted(correct), 2):
        common = sorted(set(correct[a]) & set(correct[b]))
        if not common:
            continue
        first = [correct[a][k] for k in common]
        second = [correct[b][k] for k in common]
        only_a, only_b = stats.paired_counts(first, second)
        rows.append({"model_a": a, "model_b": b, "n": len(common),
                     "accuracy_a": sum(first) / len(common), "accuracy_b": sum(second) / len(common),
                     "difference": (sum(first) - sum(second)) / len(common),
                     "only_a_correct": only_a, "only_b_correct": only_b,
                     "mcnemar_p": stats.mcnemar_exact(only_a, only_b)})
    return rows
