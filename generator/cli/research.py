"""What the research flags print: a token's decision trace as one line (``generate
--trace``, ``compare --trace``) and where the columns of ``compare`` diverge.

Under one seed, sampling strategies draw the same noise per step (common random
numbers, docs/decoding.md), so the first token where two columns differ is where
their strategies, not the dice, first chose differently.
"""

from __future__ import annotations

from typing import Any


def trace_line(index: int, text: str, trace: dict[str, Any]) -> str:
    """``[trace] #3 ' the' H=2.31 rank=1 p=0.412 margin=+0.201 logprob -0.89 -> -0.41 | top_k kept 50 ...``"""
    head = (f"[trace] #{index} {text!r} H={_f(trace['entropy'], '.2f')} rank={trace['rank']} "
            f"p={_f(trace['prob'], '.3f')} margin={_f(trace['margin'], '+.3f')} "
            f"logprob {_f(trace['logprob'], '.2f')} -> {_f(trace['processed_logprob'], '.2f')}")
    links = [_link(entry) for entry in trace["links"]]
    return " | ".join([head, *links])


def _link(entry: dict[str, Any]) -> str:
    out = f"{entry['name']} kept {entry['kept']}"
    if entry["removed_mass"]:
        out += f" removed {entry['removed_mass']:.3f}"
    shift = entry["logit_shift"]
    if shift is None:
        out += " (chosen removed)"
    elif shift != 0:
        out += f" shift {shift:+.2f}"
    return out


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where two token sequences differ (a shorter one differs where it
    ends, when the other goes on); ``None`` when they are the same."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def divergences(runs, labels: list[str]) -> list[dict[str, Any]]:
    """For each prompt and sample, every pair of columns: where they first diverge, the
    token each chose there and, when traced, each one's trace at that step."""
    by_round: dict[tuple[int, int], list] = {}
    for run in runs:
        by_round.setdefault((run.prompt_index, run.sample), []).append(run)
    out = []
    for (pi, k), group in by_round.items():
        group = sorted(group, key=lambda r: r.spec_index)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                ids_a = [e["token_id"] for e in a.events]
                ids_b = [e["token_id"] for e in b.events]
                at = first_divergence(ids_a, ids_b)
                entry = {"prompt_index": pi, "sample": k, "a": labels[a.spec_index], "b": labels[b.spec_index],
                         "seed_a": a.params.seed, "seed_b": b.params.seed, "position": at}
                if at is not None:
                    for side, run in (("a", a), ("b", b)):
                        ev = run.events[at] if at < len(run.events) else None
                        entry[f"{side}_token"] = None if ev is None else {"id": ev["token_id"], "text": ev["text"]}
                        if ev is not None and ev.get("trace") is not None:
                            entry[f"{side}_trace"] = ev["trace"]
                out.append(entry)
    return out


def divergence_table(entries: list[dict[str, Any]]):
    """A rich table: one row per column pair (and prompt, sample)."""
    from rich.table import Table

    table = Table(title="first divergence per column pair (same seed: same noise each step)", title_justify="left")
    for name in ("prompt", "sample", "a", "b", "position", "a chose", "b chose"):
        table.add_column(name, overflow="fold")
    for e in entries:
        def tok(side: str) -> str:
            t = e.get(f"{side}_token")
            return "-" if t is None else f"{t['text']!r} ({t['id']})"

        pos = "same" if e["position"] is None else str(e["position"])
        table.add_row(str(e["prompt_index"]), str(e["sample"]), e["a"], e["b"], pos,
                      tok("a") if e["position"] is not None else "", tok("b") if e["position"] is not None else "")
    return table
