"""A sweep's rows, summed up per strategy: each metric's mean with a 95% confidence
interval, as a dict (``summary.json``), a rich table and matplotlib PNGs.

    summary = summarize(rows, labels)     # {label: {metric: {"mean", "ci95", "n"}}}
    table(summary)                        # rich.Table
    plot(summary, out_dir)                # [paths of PNGs]

Per-cell metrics (one value a cell, so over prompts x seeds): tokens, perplexity and
mean logprob under the model, distinct-1/2, repeated 4-grams, TTFT, tokens/s, and
``divergence``: how many tokens the cell shares with the first strategy's cell on the
same prompt and seed (that strategy's only cell when it is deterministic) before they
part. Per-prompt metrics (one value a prompt): self-BLEU across the prompt's seeds.
The interval is Student's t over those values (``ci95`` is the half-width; ``None``
with fewer than two); cells of one prompt are not independent draws, so read it as a
guide to the spread, not a test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .quality import agreement
from .text import self_bleu

# (key, column head, format): the order of the table and of the plots
METRICS = (
    ("tokens", "tokens", ".1f"),
    ("perplexity", "ppl", ".2f"),
    ("mean_logprob", "logprob", ".3f"),
    ("distinct_1", "dist-1", ".3f"),
    ("distinct_2", "dist-2", ".3f"),
    ("repetition_rate", "rep-4", ".3f"),
    ("self_bleu", "self-BLEU", ".3f"),
    ("divergence", "diverge@", ".1f"),
    ("ttft_ms", "TTFT ms", ".0f"),
    ("tokens_per_s", "tok/s", ".1f"),
)

# two-sided 95% Student t quantiles for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t95(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom (past 30:
    1.96 + 2.4/df, within 0.002 of the exact value)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def mean_ci(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean of the finite values and the half-width of its 95% t-interval."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "ci95": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return {"mean": mean, "ci95": t95(n - 1) * sd / math.sqrt(n), "n": n}


def summarize(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every metric of every strategy in ``labels`` (in that order) over its rows."""
    good = [r for r in rows if r.get("error") is None]
    ref = {}  # (prompt, seed) -> tokens of the first strategy; seed None: its only cell
    for r in good:
        if labels and r["spec"] == labels[0]:
            ref[(r["prompt_index"], r["seed"])] = r["token_ids"]
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = [r for r in good if r["spec"] == label]
        per_cell: dict[str, list] = {k: [] for k, _, _ in METRICS}
        by_prompt: dict[int, list[list[int]]] = {}
        for r in mine:
            for k in ("tokens", "perplexity", "mean_logprob", "distinct_1", "distinct_2", "repetition_rate"):
                per_cell[k].append(r["metrics"][k])
            per_cell["ttft_ms"].append(r["timing"]["ttft_ms"])
            per_cell["tokens_per_s"].append(r["timing"]["tokens_per_s"])
            other = ref.get((r["prompt_index"], r["seed"]), ref.get((r["prompt_index"], None)))
            if other is not None and label != labels[0]:
                per_cell["divergence"].append(agreement(r["token_ids"], other))
            by_prompt.setdefault(r["prompt_index"], []).append(r["token_ids"])
        per_cell["self_bleu"] = [self_bleu(seqs) for seqs in by_prompt.values() if len(seqs) > 1]
        out[label] = {"cells": len(mine), **{k: mean_ci(per_cell[k]) for k, _, _ in METRICS}}
    return out


def _fmt(stat: dict[str, Any], spec: str) -> str:
    if stat["mean"] is None:
        return "-"
    text = format(stat["mean"], spec)
    return text if stat["ci95"] is None else f"{text} ±{format(stat['ci95'], spec)}"


def table(summary: dict[str, dict[str, Any]], title: str = "sweep: mean ± 95% CI per strategy"):
    """A rich table: one row per strategy, each metric as mean ± CI half-width."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("strategy", overflow="fold")
    t.add_column("cells", justify="right")
    for _, head, _ in METRICS:
        t.add_column(head, justify="right", no_wrap=True)
    for label, s in summary.items():
        t.add_row(label, str(s["cells"]), *(_fmt(s[k], spec) for k, _, spec in METRICS))
    t.caption = ("ppl/logprob: under the model; dist-n: distinct n-grams; rep-4: repeated 4-grams; self-BLEU: "
                 "across a prompt's seeds; diverge@: tokens shared with the first strategy before they part")
    return t


def plot(summary: dict[str, dict[str, Any]], out: str | Path) -> list[Path]:
    """One PNG, ``summary.png``: a bar per strategy with its 95% CI for every metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    cols = 5
    rows = math.ceil(len(METRICS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows + 0.6), squeeze=False)
    for ax, (key, head, _) in zip(axes.flat, METRICS):
        means = [summary[lb][key]["mean"] for lb in labels]
        errs = [summary[lb][key]["ci95"] or 0.0 for lb in labels]
        xs = range(len(labels))
        ax.bar(xs, [m if m is not None else 0.0 for m in means], yerr=errs, capsize=3, color="#4c72b0")
        ax.set_title(head, fontsize=10)
        ax.set_xticks(list(xs), [lb[:18] for lb in labels], rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(METRICS):]:
        ax.axis("off")
    fig.suptitle("tokenflow sweep: mean and 95% CI per strategy", fontsize=11)
    fig.tight_layout()
    path = Path(out) / "summary.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
