"""The report's eight plots (PNG, matplotlib Agg), from the metrics table and a request sample.

Plots never draw a million points: per-request pictures use a bounded random sample and the
CDF uses quantiles, so the report scales with combinations, not with requests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pytest_fmbench.cases import payload_stem

SCATTER_SAMPLE = 20_000
CDF_POINTS = 201
DPI = 110
BUDGET_STYLE: dict[str, Any] = {"color": "#c0392b", "linestyle": "--", "linewidth": 1.4}
BUDGET_FILL: dict[str, Any] = {"color": "#2ecc71", "alpha": 0.12}


@dataclasses.dataclass
class PlotInputs:
    metrics: pd.DataFrame                  # the per-combination table
    requests: pd.DataFrame                 # per-request sample: experiment, payload_file, concurrency, ok, latency_s, ttft_s, prompt_tokens
    latency_quantiles: pd.DataFrame        # experiment, payload_file, concurrency, q, latency_s (successful requests)
    budgets: Mapping[str, float]           # budget thresholds by metric (the run-wide ones)
    dataset_of_interest: str | None = None
    focus_payload: str | None = None       # the dataset of interest's payload file, when it matched


PLOTS: list[tuple[str, str]] = [
    ("price_performance.png", "Price/performance: p95 latency vs cost per 10k transactions"),
    ("throughput_latency.png", "Throughput vs latency through concurrency levels"),
    ("goodput_vs_concurrency.png", "Effective throughput (goodput) vs concurrency"),
    ("error_rate_vs_concurrency.png", "Error rate vs concurrency"),
    ("latency_vs_prompt_tokens.png", "Latency vs prompt tokens, per concurrency"),
    ("latency_percentiles.png", "Latency percentiles vs concurrency, per experiment"),
    ("ttft_vs_prompt_tokens.png", "Time to first token vs prompt tokens"),
    ("latency_cdf.png", "Latency CDF"),
]


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _experiments(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["experiment"].astype(str)))


def _payloads(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["payload_file"].astype(str)))


def _finish(fig: Figure, path: Path, title: str, subtitle: str | None = None) -> Path:
    """Title, footnote, fixed margins (in inches: no tight_layout pass, which costs a draw)."""
    width, height = fig.get_size_inches()
    grid = fig.axes[0].get_gridspec() if fig.axes and fig.axes[0].get_gridspec() else None
    rows, columns = (grid.nrows, grid.ncols) if grid is not None else (1, 1)
    top, bottom = 0.85 if rows == 1 else 0.8, 0.62 + (0.25 if subtitle else 0)
    left, right = 0.8, 0.25
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        hspace=0.75 / max(0.5, (height - top - bottom) / rows - 0.75) if rows > 1 else 0.2,
        wspace=0.85 / max(0.5, (width - left - right) / columns - 0.85) if columns > 1 else 0.2)
    fig.suptitle(title, fontsize=13, fontweight="bold", y=1 - 0.18 / height, va="top")
    if subtitle:
        fig.text(0.5, 0.08 / height, subtitle, ha="center", va="bottom", fontsize=8.5, color="#555555")
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return path


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(count: int, *, width: float = 5.2, height: float = 3.8,
          columns: int = 3) -> tuple[Figure, list[Axes]]:
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(max(9.5, width * columns), height * rows + 0.6),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _legend(fig: Figure, ax_list: Sequence[Axes], markerscale: float = 1.0) -> None:
    handles, labels = [], []
    for ax in ax_list:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        ax_list[0].legend(handles, labels, fontsize=8, loc="best", framealpha=0.85, markerscale=markerscale)


def _focus(inputs: PlotInputs, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if inputs.focus_payload is not None:
        return frame[frame["payload_file"] == inputs.focus_payload], f"payload file {payload_stem(inputs.focus_payload)} (dataset of interest)"
    return frame, "all payload files"


# -- 1 ---------------------------------------------------------------------------------------------

def price_performance(inputs: PlotInputs, path: Path) -> Path:
    metrics, scope = _focus(inputs, inputs.metrics)
    fig, ax = plt.subplots(figsize=(9.5, 6.2))
    data = metrics.dropna(subset=["latency_p95", "cost_per_10k_txn"])
    latency_budget = inputs.budgets.get("latency_p95")
    cost_budget = inputs.budgets.get("cost_per_10k_txn")
    if data.empty:
        _empty(ax, "no combination has both a p95 latency and a cost\n(no successful request, or no price)")
    else:
        colors = _colors(_experiments(data))
        markers = dict(zip(_payloads(data), "osD^vP*Xh<>"))
        tpm = data["transactions_per_minute"].fillna(0)
        sizes = 60 + 900 * (tpm / tpm.max()) if tpm.max() > 0 else pd.Series(80, index=data.index)
        for (experiment, payload), group in data.groupby(["experiment", "payload_file"], sort=False):
            ax.scatter(group["latency_p95"], group["cost_per_10k_txn"], s=sizes[group.index],
                       color=colors[experiment], marker=markers.get(payload, "o"), alpha=0.65,
                       edgecolors="black", linewidths=0.6,
                       label=f"{experiment} · {payload_stem(payload)}")
            for _, row in group.iterrows():
                ax.annotate(f"c={int(row['concurrency'])}", (row["latency_p95"], row["cost_per_10k_txn"]),
                            textcoords="offset points", xytext=(6, 5), fontsize=8)
        x_max = max(float(data["latency_p95"].max()), latency_budget or 0) * 1.15
        y_max = max(float(data["cost_per_10k_txn"].max()), cost_budget or 0) * 1.15
        ax.set_xlim(0, x_max or 1)
        ax.set_ylim(0, y_max or 1)
        if latency_budget is not None or cost_budget is not None:
            ax.fill_between([0, latency_budget if latency_budget is not None else x_max],
                            0, cost_budget if cost_budget is not None else y_max,
                            label="within latency & cost budgets", **BUDGET_FILL)
        if latency_budget is not None:
            ax.axvline(latency_budget, label=f"latency budget {latency_budget:g} s", **BUDGET_STYLE)
        if cost_budget is not None:
            ax.axhline(cost_budget, label=f"cost budget {cost_budget:g} USD", **{**BUDGET_STYLE, "linestyle": ":"})
        ax.legend(fontsize=8, loc="upper right", framealpha=0.85, markerscale=0.5)
    ax.set_xlabel("p95 latency (s)")
    ax.set_ylabel("cost per 10,000 transactions (USD)")
    ax.grid(alpha=0.3)
    return _finish(fig, path, "Price/performance: p95 latency vs cost per 10k transactions",
                   f"{scope}; bubble area ∝ transactions per minute; lower left is better")


# -- 2 ---------------------------------------------------------------------------------------------

def throughput_latency(inputs: PlotInputs, path: Path) -> Path:
    metrics, scope = _focus(inputs, inputs.metrics)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.8))
    data = metrics.dropna(subset=["latency_p50"])
    latency_budget = inputs.budgets.get("latency_p95")
    if data.empty:
        _empty(left, "no successful request")
        _empty(right, "no successful request")
    else:
        lines = list(data.groupby(["experiment", "payload_file"], sort=False))
        colors = _colors([f"{e}·{p}" for (e, p), _ in lines])
        for (experiment, payload), group in lines:
            group = group.sort_values("concurrency")
            label = experiment if inputs.focus_payload else f"{experiment} · {payload_stem(payload)}"
            color = colors[f"{experiment}·{payload}"]
            for ax, column in ((left, "completion_token_throughput"), (right, "transactions_per_minute")):
                ax.plot(group["latency_p50"], group[column], "-o", color=color, label=f"{label} (p50)")
                ax.plot(group["latency_p95"], group[column], "--s", color=color, alpha=0.7,
                        label=f"{label} (p95)")
                ends = group if len(group) <= 3 else group.iloc[[0, -1]]
                for _, row in ends.iterrows():
                    ax.annotate(f"c={int(row['concurrency'])}", (row["latency_p50"], row[column]),
                                textcoords="offset points", xytext=(5, 4), fontsize=7.5)
        for ax in (left, right):
            if latency_budget is not None:
                ax.axvline(latency_budget, label=f"p95 latency budget {latency_budget:g} s", **BUDGET_STYLE)
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
        left.legend(fontsize=7.5, loc="best", framealpha=0.85)
    left.set_xlabel("latency (s): p50 solid, p95 dashed")
    left.set_ylabel("output tokens per second")
    left.set_title("Output token throughput vs latency")
    right.set_xlabel("latency (s): p50 solid, p95 dashed")
    right.set_ylabel("transactions per minute")
    right.set_title("Transactions per minute vs latency")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _finish(fig, path, "Throughput vs latency through concurrency levels",
                   f"{scope}; each point is one concurrency level (labels: lowest and highest c); "
                   "up and left is better")


# -- 3, 4 ------------------------------------------------------------------------------------------

def _per_payload_lines(inputs: PlotInputs, path: Path, column: str, scale: float, ylabel: str,
                       title: str, budget: float | None, budget_label: str, subtitle: str,
                       extra: Callable[[Axes, pd.DataFrame, Any], None] | None = None,
                       min_top: float | None = None) -> Path:
    metrics = inputs.metrics
    payloads = _payloads(metrics)
    fig, axes = _grid(len(payloads), columns=2, width=6.5, height=4.2)
    colors = _colors(_experiments(metrics))
    for ax, payload in zip(axes, payloads):
        subset = metrics[metrics["payload_file"] == payload]
        for experiment, group in subset.groupby("experiment", sort=False):
            group = group.sort_values("concurrency")
            ax.plot(group["concurrency"], group[column] * scale, "-o", color=colors[experiment], label=experiment)
            if extra is not None:
                extra(ax, group, colors[experiment])
        if budget is not None:
            ax.axhline(budget, label=budget_label, **BUDGET_STYLE)
        ax.set_title(payload_stem(payload), fontsize=10)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(subset["concurrency"].unique()))
        top = float((subset[column] * scale).max()) if subset[column].notna().any() else 0.0
        if min_top is not None:
            ax.set_ylim(0, max(min_top, top * 1.15, (budget or 0) * 1.15))
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _finish(fig, path, title, subtitle)


def goodput_vs_concurrency(inputs: PlotInputs, path: Path) -> Path:
    def raw(ax: Axes, group: pd.DataFrame, color: Any) -> None:
        ax.plot(group["concurrency"], group["transactions_per_minute"] / 60, ":", color=color, alpha=0.6,
                label="all successful requests (TPM/60)")

    slo = ", ".join(f"{k} ≤ {v:g} s" for k, v in inputs.budgets.items()
                    if k.split("_")[0] in ("latency", "ttft", "tpot") and not k.endswith("_count"))
    return _per_payload_lines(
        inputs, path, "goodput", 1.0, "goodput (requests/s meeting SLOs)",
        "Effective throughput (goodput) vs concurrency", inputs.budgets.get("goodput"),
        "goodput budget", f"goodput: successful requests meeting every per-request SLO "
        f"({slo or 'none configured: all successful requests'}) / duration; dotted: all successful requests",
        raw)


def error_rate_vs_concurrency(inputs: PlotInputs, path: Path) -> Path:
    budget = inputs.budgets.get("error_rate")
    return _per_payload_lines(
        inputs, path, "error_rate", 100.0, "error rate (% of requests)", "Error rate vs concurrency",
        None if budget is None else budget * 100, f"error budget {0 if budget is None else budget * 100:g} %",
        "failed requests / all requests of the combination", min_top=5.0)


# -- 5, 7 ------------------------------------------------------------------------------------------

def _scatter_by_concurrency(inputs: PlotInputs, path: Path, column: str, ylabel: str, title: str,
                            budget: float | None, budget_label: str) -> Path:
    sample = inputs.requests
    sample = sample[sample["ok"]].dropna(subset=[column, "prompt_tokens"]) if len(sample) else sample
    levels = sorted(inputs.metrics["concurrency"].unique()) if len(inputs.metrics) else []
    fig, axes = _grid(max(1, len(levels)), columns=3, width=5.0, height=3.9)
    colors = _colors(_experiments(inputs.metrics))
    if sample.empty or not levels:
        _empty(axes[0], f"no successful request with {column.removesuffix('_s')}")
    size = 5.0 if len(sample) < 2000 else 2.6
    for ax, level in zip(axes, levels):
        subset = sample[sample["concurrency"] == level]
        for experiment, group in subset.groupby("experiment", sort=False, observed=True):
            ax.plot(group["prompt_tokens"], group[column], linestyle="none", marker="o", markersize=size,
                    alpha=0.45, color=colors.get(str(experiment)), label=str(experiment), markeredgewidth=0)
        if budget is not None:
            ax.axhline(budget, label=budget_label, **BUDGET_STYLE)
        ax.set_title(f"concurrency {level}", fontsize=10)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _legend(fig, axes, markerscale=2.0)
    shown = len(sample)
    note = "successful requests" + (f"; a random sample of {shown:,}" if shown >= SCATTER_SAMPLE * 0.99 else "")
    return _finish(fig, path, title, note)


def latency_vs_prompt_tokens(inputs: PlotInputs, path: Path) -> Path:
    budget = inputs.budgets.get("latency_p95")
    return _scatter_by_concurrency(inputs, path, "latency_s", "latency (s)", "Latency vs prompt tokens, per concurrency",
                                   budget, f"p95 latency budget {budget:g} s" if budget is not None else "")


def ttft_vs_prompt_tokens(inputs: PlotInputs, path: Path) -> Path:
    budget = next((v for k, v in inputs.budgets.items() if k.startswith("ttft_") and k != "ttft_count"), None)
    return _scatter_by_concurrency(inputs, path, "ttft_s", "time to first token (s)",
                                   "Time to first token vs prompt tokens, per concurrency",
                                   budget, f"TTFT budget {budget:g} s" if budget is not None else "")


# -- 6 ---------------------------------------------------------------------------------------------

def latency_percentiles(inputs: PlotInputs, path: Path) -> Path:
    from matplotlib.lines import Line2D

    metrics = inputs.metrics
    experiments = _experiments(metrics)
    fig, axes = _grid(max(1, len(experiments)), columns=3, width=5.2, height=4.0)
    budget = inputs.budgets.get("latency_p95")
    columns = {"latency_p50": "o", "latency_p90": "^", "latency_p95": "s", "latency_p99": "D"}
    colors = {c: plt.get_cmap("viridis")(i / 3.6) for i, c in enumerate(columns)}
    payloads = _payloads(metrics)
    dashes: dict[str, Any] = dict(zip(payloads, ["-", "--", ":", "-."] * (len(payloads) // 4 + 1)))
    for ax, experiment in zip(axes, experiments):
        subset = metrics[metrics["experiment"] == experiment]
        instance = subset["instance_type"].iloc[0] if "instance_type" in subset else None
        for payload, group in subset.groupby("payload_file", sort=False):
            group = group.sort_values("concurrency")
            for column, marker in columns.items():
                ax.plot(group["concurrency"], group[column], marker=marker, linestyle=dashes[payload],
                        color=colors[column])
        handles = [Line2D([], [], color=colors[c], marker=m, label=c.replace("latency_", ""))
                   for c, m in columns.items()]
        if len(payloads) > 1:
            handles += [Line2D([], [], color="#555555", linestyle=dashes[p], label=payload_stem(p))
                        for p in _payloads(subset)]
        if budget is not None:
            handles.append(ax.axhline(budget, label=f"p95 budget {budget:g} s", **BUDGET_STYLE))
        ax.set_title(experiment + (f" ({instance})" if instance else ""), fontsize=10)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("latency (s)")
        ax.set_xticks(sorted(subset["concurrency"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="upper left", framealpha=0.85)
    if not experiments:
        _empty(axes[0], "no combination ran")
    return _finish(fig, path, "Latency percentiles vs concurrency, per experiment",
                   "p50 / p90 / p95 / p99 over all successful requests of each combination"
                   + ("; line style: payload file" if len(payloads) > 1 else ""))


# -- 8 ---------------------------------------------------------------------------------------------

def latency_cdf(inputs: PlotInputs, path: Path) -> Path:
    quantiles, scope = _focus(inputs, inputs.latency_quantiles)
    experiments = _experiments(inputs.metrics)
    fig, axes = _grid(max(1, len(experiments)), columns=3, width=5.2, height=4.0)
    budget = inputs.budgets.get("latency_p95")
    for ax, experiment in zip(axes, experiments):
        subset = quantiles[quantiles["experiment"] == experiment]
        if subset.empty:
            _empty(ax, "no successful request")
        lines = list(subset.groupby(["payload_file", "concurrency"], sort=True))
        cmap = plt.get_cmap("plasma")
        for i, ((payload, level), group) in enumerate(lines):
            label = f"c={level}" if inputs.focus_payload or len(_payloads(subset)) == 1 else f"{payload_stem(payload)} c={level}"
            ax.plot(group["latency_s"], group["q"], color=cmap(i / max(1, len(lines))), label=label,
                    drawstyle="steps-post")
        if budget is not None:
            ax.axvline(budget, label=f"p95 budget {budget:g} s", **BUDGET_STYLE)
            ax.axhline(0.95, color="#888888", linewidth=0.8, linestyle=":")
        ax.set_title(experiment, fontsize=10)
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("fraction of requests ≤ latency")
        ax.set_ylim(0, 1.01)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=7, loc="lower right", framealpha=0.85)
    if not experiments:
        _empty(axes[0], "no combination ran")
    return _finish(fig, path, "Latency CDF", f"{scope}; successful requests; dotted line: 95 %")


RENDERERS: dict[str, Callable[[PlotInputs, Path], Path]] = {
    "price_performance.png": price_performance,
    "throughput_latency.png": throughput_latency,
    "goodput_vs_concurrency.png": goodput_vs_concurrency,
    "error_rate_vs_concurrency.png": error_rate_vs_concurrency,
    "latency_vs_prompt_tokens.png": latency_vs_prompt_tokens,
    "latency_percentiles.png": latency_percentiles,
    "ttft_vs_prompt_tokens.png": ttft_vs_prompt_tokens,
    "latency_cdf.png": latency_cdf,
}


def render_all(inputs: PlotInputs, folder: Path, errors: list[str]) -> list[Path]:
    """Every plot; one that fails is reported in ``errors`` and the others still render."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, _ in PLOTS:
        try:
            written.append(RENDERERS[name](inputs, folder / name))
        except Exception as exc:  # noqa: BLE001 - one broken plot must not lose the report
            plt.close("all")
            errors.append(f"plot {name}: {type(exc).__name__}: {exc}")
    return written


# -- inputs from records ----------------------------------------------------------------------------

def request_sample(frame: pd.DataFrame, size: int = SCATTER_SAMPLE, seed: int = 0) -> pd.DataFrame:
    columns = ["experiment", "payload_file", "concurrency", "ok", "latency_s", "ttft_s", "prompt_tokens"]
    if len(frame) <= size:
        return frame[columns]
    rows = np.random.default_rng(seed).choice(len(frame), size=size, replace=False)
    rows.sort()
    return frame[columns].iloc[rows]


def latency_quantiles(frame: pd.DataFrame, points: int = CDF_POINTS, exact_up_to: int = 2000) -> pd.DataFrame:
    """The latency CDF per combination: exact steps for small groups, quantiles for large."""
    columns = ["experiment", "payload_file", "concurrency", "q", "latency_s"]
    ok = frame[frame["ok"]] if len(frame) else frame
    if ok.empty:
        return pd.DataFrame(columns=columns)
    parts = []
    qs = np.linspace(0, 1, points)
    for (experiment, payload, level), values in ok.groupby(
            ["experiment", "payload_file", "concurrency"], observed=True)["latency_s"]:
        data = np.sort(values.to_numpy())
        if len(data) <= exact_up_to:
            x = np.concatenate([[data[0]], data])
            y = np.concatenate([[0.0], np.arange(1, len(data) + 1) / len(data)])
        else:
            x, y = np.quantile(data, qs), qs
        parts.append(pd.DataFrame({"experiment": str(experiment), "payload_file": str(payload),
                                   "concurrency": int(level), "q": y, "latency_s": x}))
    return pd.concat(parts, ignore_index=True)
