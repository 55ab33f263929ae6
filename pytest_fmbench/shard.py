"""``--fmbench-shard K/N``: a deterministic share of whole experiments (no pytest here).

Many experiments outgrow one machine (twenty instance types × three containers is a day of
deploys); CI matrix jobs, Kubernetes indexed jobs or a loop over hosts each run one shard,
and ``python -m pytest_fmbench merge`` makes one report and one verdict of their results
dirs. A shard holds whole experiments, so each endpoint is deployed once across the fleet.

The share is round-robin over the experiment names sorted: every shard computes the same
split from the config alone (no coordination), shards are disjoint, their union is every
experiment, and their sizes differ by at most one experiment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # K, 1-based
    total: int  # N

    @property
    def label(self) -> str:
        return f"{self.index}/{self.total}"

    def experiments(self, names: Iterable[str]) -> set[str]:
        """The experiments of this shard among ``names``."""
        ordered = sorted(set(names))
        return {name for position, name in enumerate(ordered)
                if position % self.total == self.index - 1}


def parse_shard(raw: str) -> Shard:
    """``"K/N"`` with 1 ≤ K ≤ N; ValueError with the fix otherwise."""
    index, sep, total = raw.strip().partition("/")
    try:
        shard = Shard(int(index), int(total)) if sep else None
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard.index <= shard.total:
        raise ValueError(f"expected K/N with 1 <= K <= N, got '{raw}'")
    return shard
