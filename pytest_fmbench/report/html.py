"""``report.html``: the report as one self-contained page, with interactive plots.

The gate verdict comes first, then the interactive plots (plotly: hovering a point shows its
combination, its request count and every metric), then the markdown report's own sections
and tables (its PNG plots left out: the interactive ones replace them). plotly.js is inlined,
so the page opens offline and can be sent around as one file.

plotly and markdown come with the ``html`` extra and are imported only here, lazily; without
them no ``report.html`` is written (``available()``), and nothing else changes.
"""

from __future__ import annotations

import html
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard

import pandas as pd

from pytest_fmbench.budgets import GateResult, format_value
from pytest_fmbench.cases import payload_stem
from pytest_fmbench.metrics import METRICS

HTML_FILE = "report.html"
# Statistics of one metric family shown on one hover line ("latency: mean …, p50 …").
_STATISTICS = ("mean", "p50", "p90", "p95", "p99", "max", "count")
_BUDGET_FILL = "rgba(46, 204, 113, 0.15)"
_BUDGET_LINE = {"color": "#c0392b", "dash": "dash", "width": 1.5}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 2rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.verdict { font-size: 1.15rem; padding: .8rem 1rem; border-radius: 6px; margin: 1rem 0; }
.verdict.passed { background: #dafbe1; border: 1px solid #2da44e; }
.verdict.failed { background: #ffebe9; border: 1px solid #cf222e; }
.verdict ul { margin: .4rem 0 0 0; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; text-align: left; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fafbfc; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
code { font-size: .85em; } .plot { margin-bottom: 1.5rem; }
"""


def available() -> bool:
    """Whether the ``html`` extra is installed (plotly and markdown)."""
    return all(importlib.util.find_spec(name) is not None for name in ("plotly", "markdown"))


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


def hover_lines(row: Mapping[str, Any]) -> list[str]:
    """Every metric of one combination, a family per line (``latency: mean 0.31 s, p50 …``)."""
    families: dict[str, list[str]] = {}
    for metric in METRICS.values():
        value = row.get(metric.name)
        if metric.name == "requests" or not _finite(value):
            continue  # the request count has its own line, above the metrics
        text = (f"{int(value):,} requests" if metric.unit == "requests"
                else format_value(value, metric.unit))
        base, _, statistic = metric.name.rpartition("_")
        if base and statistic in _STATISTICS:
            families.setdefault(base, []).append(f"{statistic} {text}")
        else:
            families.setdefault(metric.name, []).append(text)
    return [f"{name}: {', '.join(values)}" for name, values in families.items()]


def _combination(row: Mapping[str, Any]) -> str:
    return f"{row['experiment']} · {payload_stem(str(row['payload_file']))} · c={int(row['concurrency'])}"


def _customdata(frame: pd.DataFrame) -> list[list[Any]]:
    """Per point: the combination, its request count, and every metric (hover text)."""
    rows = frame.to_dict("records")
    return [[html.escape(_combination(row)), int(row.get("requests") or 0),
             "<br>".join(html.escape(line) for line in hover_lines(row))] for row in rows]


HOVER = ("<b>%{customdata[0]}</b><br>requests: %{customdata[1]}<br>"
         "%{customdata[2]}<extra></extra>")


def _focus(metrics: pd.DataFrame, focus_payload: str | None) -> tuple[pd.DataFrame, str]:
    if focus_payload is not None:
        return (metrics[metrics["payload_file"] == focus_payload],
                f"payload file {payload_stem(focus_payload)} (dataset of interest)")
    return metrics, "all payload files"


def _axis_end(largest: float, budget: float | None) -> float:
    """Room for the points, and for the budget line when it is near them: a budget far above
    every point would squeeze them into a corner (the shaded region then fills the view)."""
    end = largest * 1.2 or 1.0
    if budget is not None and budget <= largest * 4:
        end = max(end, budget * 1.1)
    return end


def price_performance(metrics: pd.DataFrame, budgets: Mapping[str, float],
                      focus_payload: str | None) -> Any:
    """p95 latency vs cost per 10k transactions, bubble area ∝ TPM, the budget region shaded."""
    import plotly.graph_objects as go

    frame, scope = _focus(metrics, focus_payload)
    data = frame.dropna(subset=["latency_p95", "cost_per_10k_txn"])
    figure = go.Figure()
    latency_budget, cost_budget = budgets.get("latency_p95"), budgets.get("cost_per_10k_txn")
    if data.empty:
        figure.add_annotation(text="no combination has both a p95 latency and a cost "
                              "(no successful request, or no price)", showarrow=False)
    else:
        tpm = data["transactions_per_minute"].fillna(0)
        top = float(tpm.max()) or 1.0
        x_max = _axis_end(float(data["latency_p95"].max()), latency_budget)
        y_max = _axis_end(float(data["cost_per_10k_txn"].max()), cost_budget)
        if latency_budget is not None or cost_budget is not None:
            figure.add_shape(type="rect", x0=0, y0=0, layer="below", line={"width": 0},
                             x1=latency_budget if latency_budget is not None else x_max,
                             y1=cost_budget if cost_budget is not None else y_max,
                             fillcolor=_BUDGET_FILL)
            figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="within budgets",
                                        marker={"size": 12, "color": _BUDGET_FILL, "symbol": "square"}))
        if latency_budget is not None:
            figure.add_vline(x=latency_budget, line=_BUDGET_LINE,
                             annotation_text=f"latency budget {latency_budget:g} s")
        if cost_budget is not None:
            figure.add_hline(y=cost_budget, line={**_BUDGET_LINE, "dash": "dot"},
                             annotation_text=f"cost budget {cost_budget:g} USD")
        symbols = ["circle", "square", "diamond", "triangle-up", "triangle-down", "cross", "x"]
        payloads = list(dict.fromkeys(data["payload_file"].astype(str)))
        for (experiment, payload), group in data.groupby(["experiment", "payload_file"], sort=False):
            sizes = 12 + 38 * (group["transactions_per_minute"].fillna(0) / top) ** 0.5
            figure.add_trace(go.Scatter(
                x=group["latency_p95"], y=group["cost_per_10k_txn"], mode="markers+text",
                name=f"{experiment} · {payload_stem(str(payload))}",
                text=[f"c={int(c)}" for c in group["concurrency"]], textposition="top right",
                marker={"size": sizes.tolist(), "opacity": 0.75, "line": {"width": 1, "color": "#333"},
                        "symbol": symbols[payloads.index(str(payload)) % len(symbols)]},
                customdata=_customdata(group), hovertemplate=HOVER))
        figure.update_xaxes(range=[0, x_max or 1])
        figure.update_yaxes(range=[0, y_max or 1])
    figure.update_layout(
        title=f"Price/performance: p95 latency vs cost per 10k transactions<br><sup>{scope}; "
        "bubble area ∝ transactions per minute; lower left is better; the shaded region meets "
        "the latency and cost budgets</sup>",
        xaxis_title="p95 latency (s)", yaxis_title="cost per 10,000 transactions (USD)",
        height=560, template="plotly_white")
    return figure


def _by_concurrency(metrics: pd.DataFrame, focus_payload: str | None, columns: Sequence[tuple[str, str]],
                    title: str, y_title: str, *, budget: float | None = None, scale: float = 1.0) -> Any:
    """One line per experiment × payload file × column, over the concurrency levels."""
    import plotly.graph_objects as go

    frame, scope = _focus(metrics, focus_payload)
    figure = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for (experiment, payload), group in frame.groupby(["experiment", "payload_file"], sort=False):
        group = group.sort_values("concurrency")
        for index, (column, label) in enumerate(columns):
            if column not in group or group[column].isna().all():
                continue
            figure.add_trace(go.Scatter(
                x=group["concurrency"], y=group[column] * scale, mode="lines+markers",
                name=f"{experiment} · {payload_stem(str(payload))}" + (f" ({label})" if label else ""),
                line={"dash": dashes[index % len(dashes)]},
                customdata=_customdata(group), hovertemplate=HOVER))
    if budget is not None:
        figure.add_hline(y=budget * scale, line=_BUDGET_LINE, annotation_text=f"budget {budget:g}")
    figure.update_layout(title=f"{title}<br><sup>{scope}</sup>", xaxis_title="concurrency",
                         yaxis_title=y_title, height=460, template="plotly_white")
    figure.update_xaxes(type="log" if frame["concurrency"].max() > 16 * max(1, frame["concurrency"].min()) else "linear")
    return figure


def throughput_latency(metrics: pd.DataFrame, focus_payload: str | None) -> Any:
    """TPM vs p50 latency through the concurrency levels (the knee of each stack)."""
    import plotly.graph_objects as go

    frame, scope = _focus(metrics, focus_payload)
    figure = go.Figure()
    for (experiment, payload), group in frame.dropna(subset=["latency_p50"]).groupby(
            ["experiment", "payload_file"], sort=False):
        group = group.sort_values("concurrency")
        figure.add_trace(go.Scatter(
            x=group["latency_p50"], y=group["transactions_per_minute"], mode="lines+markers+text",
            name=f"{experiment} · {payload_stem(str(payload))}",
            text=[f"c={int(c)}" for c in group["concurrency"]], textposition="top left",
            customdata=_customdata(group), hovertemplate=HOVER))
    figure.update_layout(title=f"Throughput vs latency through concurrency levels<br><sup>{scope}</sup>",
                         xaxis_title="p50 latency (s)", yaxis_title="transactions per minute",
                         height=460, template="plotly_white")
    return figure


def figures(metrics: pd.DataFrame, budgets: Mapping[str, float],
            focus_payload: str | None) -> list[tuple[str, Any]]:
    """(element id, figure) for every interactive plot, the price/performance chart first."""
    if metrics.empty:
        return []
    return [
        ("price-performance", price_performance(metrics, budgets, focus_payload)),
        ("throughput-latency", throughput_latency(metrics, focus_payload)),
        ("latency-percentiles", _by_concurrency(
            metrics, focus_payload, [("latency_p50", "p50"), ("latency_p95", "p95"), ("latency_p99", "p99")],
            "Latency percentiles vs concurrency", "latency (s)", budget=budgets.get("latency_p95"))),
        ("ttft", _by_concurrency(metrics, focus_payload, [("ttft_p50", "p50"), ("ttft_p95", "p95")],
                                 "Time to first token vs concurrency", "TTFT (s)",
                                 budget=budgets.get("ttft_p95"))),
        ("error-rate", _by_concurrency(metrics, None, [("error_rate", "")], "Error rate vs concurrency",
                                       "failed requests (%)", scale=100.0)),
    ]


def _without_plots(markdown_text: str) -> str:
    """The markdown report minus its title and its PNG plots section."""
    text = re.sub(r"\A# [^\n]*\n", "", markdown_text)
    return re.sub(r"^## Plots\n.*?(?=^## )", "", text, flags=re.DOTALL | re.MULTILINE)


def _escape_outside_code(markdown_text: str) -> str:
    """Names and values in the report are text, never markup: '<' outside code is escaped."""
    out, fenced = [], False
    for line in markdown_text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        out.append(line if fenced else line.replace("<", "&lt;"))
    return "\n".join(out)


def _verdict(gate: GateResult) -> str:
    state = "passed" if gate.passed else "failed"
    items = "".join(f"<li>{html.escape(v.line())}</li>" for v in gate.violations[:20])
    more = f"<li>… {len(gate.violations) - 20} more in the Budgets section</li>" if len(gate.violations) > 20 else ""
    return (f'<div class="verdict {state}" id="verdict"><b>Budget gate ({html.escape(gate.mode)}): '
            f"{state.upper()}</b>: {html.escape(gate.summary)}"
            + (f"<ul>{items}{more}</ul>" if items else "") + "</div>")


def render(*, title: str, markdown_text: str, metrics: pd.DataFrame, gate: GateResult,
           budgets: Mapping[str, float], focus_payload: str | None,
           clean: Callable[[str], str] = lambda text: text) -> str:
    """The whole page: verdict, interactive plots, the report's sections; plotly.js inline.

    ``clean`` (the secret scrubber) applies to everything but plotly.js, a library's code that
    must reach the browser byte for byte.
    """
    import markdown
    from plotly.offline import get_plotlyjs

    plots = "\n".join(
        f'<div class="plot">{figure.to_html(full_html=False, include_plotlyjs=False, div_id=ident, config={"displaylogo": False, "responsive": True})}</div>'
        for ident, figure in figures(metrics, budgets, focus_payload))
    body = markdown.markdown(_escape_outside_code(_without_plots(markdown_text)),
                             extensions=["tables", "fenced_code"], output_format="html")
    head = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
    ])
    content = "\n".join([
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _verdict(gate),
        "<h2>Plots</h2>",
        ("<p>Hover a point for its combination, its request count and every metric; drag to zoom, "
         "double-click to reset; click a legend entry to hide it.</p>"),
        plots or "<p>No combination was measured.</p>",
        body,
        "</body></html>",
    ])
    # plotly.js inline, not from a CDN: the page opens offline and travels as one file.
    library = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return "\n".join([clean(head), library, clean(content)])
