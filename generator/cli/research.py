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


# -- tokenflow replay --fork ---------------------------------------------------------

def parse_fork(text: str, recorded: int) -> tuple[int, str]:
    """``INDEX:TOKEN`` -> ``(index, token)``; ``index`` within the recorded tokens (0..n)."""
    from .common import CLIError

    index, sep, token = text.partition(":")
    try:
        at = int(index)
    except ValueError:
        at = -1
    if not sep or not token or at < 0:
        raise CLIError(f"--fork: expected INDEX:TOKEN (a token id or its text), got {text!r}")
    if at > recorded:
        raise CLIError(f"--fork: index {at} is past the recorded stream ({recorded} tokens)")
    return at, token


def fork_token(tokenizer, token: str) -> int:
    """A fork's token: an id, or a text that is exactly one token."""
    from .common import CLIError

    if token.isdigit():
        tid = int(token)
        if tid >= len(tokenizer):
            raise CLIError(f"--fork: token id {tid} is outside the vocabulary ({len(tokenizer)})")
        return tid
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise CLIError(f"--fork: {token!r} is {len(ids)} tokens {ids}; give one token, or its id")
    return ids[0]


def run_fork(args, header: dict[str, Any], events: list[dict[str, Any]]) -> int:
    """Continue a recorded stream from its first ``INDEX`` tokens with ``TOKEN`` at ``INDEX``,
    under the recorded settings or ``--strategy``; the shared prefix once, then the fork."""
    import sys

    from decoding import SamplingParams

    from decoding import ParamError

    from .common import CLIError, engine_options, field_value, load_engine, parse_strategy_spec

    if "prompt" not in header:
        raise CLIError("--fork needs a recording that holds its prompt (`generate --record`, the page's Export)")
    at, token = parse_fork(args.fork, len(events))
    before: list[int] = []  # a page column that was itself a fork continued after these
    if header.get("command") == "page":  # the page's export: each column's settings as the query had them
        column = header.get("columns", {}).get(events[0]["stream"] if events else "", {})
        before = [int(t) for t in column.get("prefix_ids", [])]
        try:
            recorded = SamplingParams(**{k: field_value(k, str(v)) for k, v in column.get("settings", {}).items()})
        except ParamError as exc:
            raise CLIError(f"the recording's settings: {exc}") from None
        except KeyError as exc:
            raise CLIError(f"the recording's settings: unknown setting {exc.args[0]!r}") from None
    else:
        recorded = SamplingParams(**header["params"]) if header.get("params") else SamplingParams()
    params = parse_strategy_spec(args.strategy) if args.strategy else recorded
    left = args.max_new_tokens or max(1, recorded.max_new_tokens - at - 1)
    params = params.replace(max_new_tokens=left, n=1)
    engine = load_engine(engine_options(args))
    tid = fork_token(engine.tokenizer, token)
    prefix = [int(ev["token_id"]) for ev in events[:at]]
    ids = engine.encode(header["prompt"], chat=bool(header.get("chat")))
    was = repr(events[at]["text"]) if at < len(events) else "the end"
    print(f"[fork] token {at}: {was} -> {engine.tokenizer.decode([tid])!r}, then {params.chain}",
          file=sys.stderr, flush=True)
    out = sys.stdout
    out.write(engine.tokenizer.decode(prefix + [tid]))
    out.flush()
    # the fork continues as the recorded stream had drawn its tokens: same noise, same history
    for ev in engine.stream(ids, params, generated=before + prefix + [tid]):
        out.write(ev.text)
        out.flush()
    out.write("\n")
    return 0
