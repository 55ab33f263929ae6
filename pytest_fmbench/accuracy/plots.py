"""FMBench's two accuracy plots, with 95 % Wilson intervals and n (FMBench showed neither)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_fmbench.accuracy.panel import PanelSummary

TRAJECTORY = "accuracy_trajectory_per_payload.png"
OVERALL = "overall_candidate_model_majority_voting_accuracy.png"


def _range_key(payload_file: str) -> tuple[float, str]:
    found = re.search(r"(\d+)-(\d+)", payload_file)
    return ((int(found.group(1)) + int(found.group(2))) / 2 if found else 0.0, payload_file)


def plot_accuracy(out: Path, panel: Mapping[str, PanelSummary],
                  payload_rows: Sequence[dict[str, Any]], budget: float | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, axes = plt.subplots(figsize=(8, 4.5))
    files = sorted({r["payload_file"] for r in payload_rows}, key=_range_key)
    experiments = sorted({r["candidate_model"] for r in payload_rows})
    for position, experiment in enumerate(experiments):
        rows = {r["payload_file"]: r for r in payload_rows if r["candidate_model"] == experiment}
        indices = [i for i, f in enumerate(files) if f in rows and rows[f]["strict_accuracy"] is not None]
        # Models side by side at each payload file, so their intervals do not hide each other.
        dodge = 0.08 * (position - (len(experiments) - 1) / 2)
        ys = [100 * rows[files[i]]["strict_accuracy"] for i in indices]
        low = [max(0.0, y - 100 * rows[files[i]]["ci_low"]) for i, y in zip(indices, ys)]
        high = [max(0.0, 100 * rows[files[i]]["ci_high"] - y) for i, y in zip(indices, ys)]
        xs = [i + dodge for i in indices]
        axes.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label=experiment)
        for i, x, y in zip(indices, xs, ys):
            axes.annotate(f"n={rows[files[i]]['n']}", (x, y), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    axes.set_xticks(range(len(files)), [f.removesuffix(".jsonl") for f in files], rotation=20)
    axes.set_xlim(-0.5, len(files) - 0.5)
    axes.set_ylim(0, 110)
    axes.set_ylabel("majority-vote accuracy, % (95 % Wilson CI)")
    axes.set_title("Accuracy per payload file")
    axes.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out / TRAJECTORY)
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 4.5))
    names = sorted(panel)
    values = [100 * (panel[n].strict.value or 0.0) for n in names]
    errors = [[max(0.0, v - 100 * (panel[n].strict.low or 0.0)) for v, n in zip(values, names)],
              [max(0.0, 100 * (panel[n].strict.high or 0.0) - v) for v, n in zip(values, names)]]
    axes.bar(range(len(names)), values, yerr=errors, capsize=6, color="#4c72b0")
    for i, n in enumerate(names):
        axes.annotate(f"{values[i]:.1f} % (n={panel[n].items})", (i + 0.05, values[i]),
                      textcoords="offset points", xytext=(4, 4), ha="left", fontsize=8)
    if budget is not None:
        axes.axhline(100 * budget, color="red", linestyle="--",
                     label=f"accuracy_budget {100 * budget:g} %")
        axes.legend(fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=15)
    axes.set_ylim(0, 110)
    axes.set_ylabel("majority-vote accuracy, % (pooled over items, 95 % CI)")
    axes.set_title("Overall majority-voting accuracy per candidate model")
    figure.tight_layout()
    paths.append(out / OVERALL)
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
    return paths
