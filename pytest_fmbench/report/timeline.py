"""Two more plots: what the endpoint was doing over time, and latency by prompt length.

- ``timeline-<experiment>.png`` (one per experiment): requests the client had in flight (from
  the records), the server's running and waiting requests (scraped /metrics, when sampled),
  and the latency p50 of the requests finished in each second; case boundaries marked.
- ``latency_by_prompt_length.png``: per concurrency, a box plot of latency per prompt-length
  bucket (the SageMaker JumpStart harness's "effect of token length on inference latency").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pytest_fmbench.report.plots import DPI, _colors, _empty, _grid

TIMELINE_POINTS = 2000
BUCKETS = 5
BOX_PLOT = "latency_by_prompt_length.png"
TITLES = {BOX_PLOT: "Latency by prompt length, per concurrency"}


def timeline_name(experiment: str) -> str:
    return "timeline-" + (re.sub(r"[^A-Za-z0-9_.\-]+", "-", experiment).strip("-") or "experiment") + ".png"


def timeline_title(name: str) -> str | None:
    if name.startswith("timeline-"):
        return f"Timeline of {name.removeprefix('timeline-').removesuffix('.png')}: in flight, server queue, latency"
    return TITLES.get(name)


def in_flight(sent_ns: np.ndarray, done_ns: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Requests in flight at each grid time: sent at or before it, not yet finished."""
    return (np.searchsorted(np.sort(sent_ns), grid_ns, side="right")
            - np.searchsorted(np.sort(done_ns), grid_ns, side="right"))


def latency_p50_per_second(frame: pd.DataFrame, origin_ns: int) -> pd.DataFrame:
    """Median latency of the successful requests finished in each second since ``origin_ns``."""
    ok = frame[frame["ok"]]
    if ok.empty:
        return pd.DataFrame(columns=["second", "latency_p50"])
    seconds = (ok["last_byte_ns"].to_numpy() - origin_ns) // 1_000_000_000
    grouped = pd.Series(ok["latency_s"].to_numpy()).groupby(seconds).median()
    return pd.DataFrame({"second": grouped.index.to_numpy(dtype=float) + 0.5,
                         "latency_p50": grouped.to_numpy()})


def render_timelines(frame: pd.DataFrame, server: pd.DataFrame, windows: pd.DataFrame,
                     folder: Path) -> list[Path]:
    """One timeline per experiment of ``frame`` (the request frame of the records)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for experiment in dict.fromkeys(frame["experiment"].astype(str)):
        rows = frame[frame["experiment"].astype(str) == experiment]
        written.append(_timeline(experiment, rows, server[server["experiment"] == experiment],
                                 windows[windows["experiment"] == experiment],
                                 folder / timeline_name(experiment)))
    return written


def _timeline(experiment: str, rows: pd.DataFrame, server: pd.DataFrame, windows: pd.DataFrame,
              path: Path) -> Path:
    sent, done = rows["sent_ns"].to_numpy(), rows["last_byte_ns"].to_numpy()
    origin = int(sent.min())
    end = int(done.max())
    grid = np.linspace(origin, end, min(TIMELINE_POINTS, max(2, (end - origin) // 10_000_000)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.4), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    seconds = (grid - origin) / 1e9
    top.step(seconds, in_flight(sent, done, grid), where="post", color="#34495e", linewidth=1.2,
             label="client: requests in flight")
    if not server.empty:
        at = (server["t_ns"].to_numpy() - origin) / 1e9
        top.plot(at, server["running"], "-o", markersize=3, color="#27ae60", label="server: running")
        top.plot(at, server["waiting"], "-s", markersize=3, color="#c0392b", label="server: waiting")
    else:
        top.text(0.99, 0.95, "no server /metrics sampled", transform=top.transAxes, ha="right",
                 va="top", fontsize=8, color="#777777")
    for _, window in windows.iterrows():
        start = (int(window["start_ns"]) - origin) / 1e9
        for ax in (top, bottom):
            ax.axvline(start, color="#999999", linewidth=0.7, linestyle=":")
        top.annotate(f"c={int(window['concurrency'])}", (start, 1), xycoords=("data", "axes fraction"),
                     xytext=(3, -10), textcoords="offset points", fontsize=7, color="#555555")
    top.set_ylabel("requests")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper right", framealpha=0.85)
    p50 = latency_p50_per_second(rows, origin)
    if p50.empty:
        _empty(bottom, "no successful request")
    else:
        bottom.plot(p50["second"], p50["latency_p50"], "-o", markersize=3, color="#8e44ad",
                    label="latency p50 of the requests finished in that second")
        bottom.legend(fontsize=8, loc="lower right", framealpha=0.85)
        bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds since the experiment's first request")
    bottom.set_ylabel("latency p50 (s)")
    bottom.grid(alpha=0.3)
    fig.suptitle(f"Timeline of {experiment}: client in flight, server running/waiting, latency",
                 fontsize=12, fontweight="bold")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.1, hspace=0.12)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return path


def prompt_buckets(tokens: np.ndarray, count: int = BUCKETS) -> tuple[np.ndarray, list[str]]:
    """Bucket edges by quantiles of the prompt lengths (whole tokens, distinct), and labels."""
    edges = np.unique(np.round(np.quantile(tokens, np.linspace(0, 1, count + 1))))
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + 1]) if len(edges) else np.array([0.0, 1.0])
    labels = [f"{int(a)}–{int(b)}" for a, b in itertools.pairwise(edges)]
    return edges, labels


def latency_by_prompt_length(sample: pd.DataFrame, path: Path) -> Path:
    """Per concurrency level: latency box plots per prompt-length bucket, one box per experiment."""
    ok = sample[sample["ok"]].dropna(subset=["latency_s", "prompt_tokens"]) if len(sample) else sample
    levels = sorted(ok["concurrency"].unique()) if len(ok) else []
    fig, axes = _grid(max(1, len(levels)), columns=3, width=5.2, height=4.0)
    if not levels:
        _empty(axes[0], "no successful request with a prompt length")
    else:
        edges, labels = prompt_buckets(ok["prompt_tokens"].to_numpy())
        experiments = list(dict.fromkeys(ok["experiment"].astype(str)))
        colors = _colors(experiments)
        width = 0.8 / max(1, len(experiments))
        for ax, level in zip(axes, levels):
            subset = ok[ok["concurrency"] == level]
            bucket = np.clip(np.searchsorted(edges, subset["prompt_tokens"].to_numpy(), side="right") - 1,
                             0, len(labels) - 1)
            for e_index, experiment in enumerate(experiments):
                mine = subset["experiment"].astype(str).to_numpy() == experiment
                data = [subset["latency_s"].to_numpy()[mine & (bucket == b)] for b in range(len(labels))]
                positions = [b + (e_index - (len(experiments) - 1) / 2) * width for b in range(len(labels))]
                kept = [(p, d) for p, d in zip(positions, data) if len(d)]
                if not kept:
                    continue
                parts: Any = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept],
                                        widths=width * 0.9, patch_artist=True, showfliers=False)
                for box in parts["boxes"]:
                    box.set(facecolor=colors[experiment], alpha=0.55)
                ax.plot([], [], color=colors[experiment], linewidth=6, alpha=0.55, label=experiment)
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_ylim(0, float(subset["latency_s"].max()) * 1.15 or 1.0)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7.5, rotation=20)
            ax.set_title(f"concurrency {level}", fontsize=10)
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel("latency (s)")
            ax.grid(alpha=0.3, axis="y")
        axes[-1].legend(fontsize=8, loc="upper right", framealpha=0.85)
    fig.suptitle("Latency by prompt length, per concurrency", fontsize=12, fontweight="bold")
    fig.text(0.5, 0.01, "successful requests; buckets: quantiles of the prompt lengths; boxes: "
             "quartiles, whiskers 1.5 IQR", ha="center", fontsize=8.5, color="#555555")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.88, bottom=0.2, hspace=0.5, wspace=0.3)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return path


def render(frame: pd.DataFrame, sample: pd.DataFrame, telemetry: Sequence[Mapping[str, Any]],
           folder: Path, errors: list[str]) -> list[Path]:
    """Both plots; one that fails is listed in ``errors``, the other still drawn."""
    from pytest_fmbench.telemetry.report import case_windows, server_series

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        written += render_timelines(frame, server_series(telemetry), case_windows(telemetry), folder)
    except Exception as exc:  # noqa: BLE001 - one broken plot must not lose the report
        plt.close("all")
        errors.append(f"plot timeline: {type(exc).__name__}: {exc}")
    try:
        written.append(latency_by_prompt_length(sample, folder / BOX_PLOT))
    except Exception as exc:  # noqa: BLE001
        plt.close("all")
        errors.append(f"plot {BOX_PLOT}: {type(exc).__name__}: {exc}")
    return written
