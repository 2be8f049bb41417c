"""``tokenflow score FILE``: how likely each line of a text file is under the model.

Each non-empty line is one text, scored by teacher forcing (no generation), the
lines batched into few forwards (``generator.eval.likelihood.score_ids``). Prints
a line per text (perplexity, tokens scored, the text's start) and the whole file's
perplexity on stderr; ``--json`` prints a JSON object per text instead, with every
token's id, piece, bytes and log-probability.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .common import CLIError, add_model_flags, engine_options, load_engine


def add_commands(sub) -> None:
    """Add ``tokenflow score`` to the CLI."""
    p = sub.add_parser("score", help="perplexity of each line of a text file (or per-token logprobs as JSON)",
                       description="Score each non-empty line of FILE under the model (teacher forcing, no "
                       "generation, lines batched into few forwards): its perplexity, or with --json every "
                       "token's log-probability. The first token of a line has no context: it is not scored.")
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file, one text per line, or - for stdin")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: line, text, perplexity, and per token its id, piece "
                   "(\\xNN for bytes of a split character), bytes and logprob (null for the first)")
    p.add_argument("--top", type=int, default=0, metavar="N",
                   help="with --json, also the N most likely tokens at each position (default 0)")
    p.add_argument("--batch-tokens", type=int, default=1024, metavar="N",
                   help="padded tokens per forward (rows x the longest line; default 1024)")
    p.add_argument("-v", "--verbose", action="store_true", help="say each stage of loading the model")
    add_model_flags(p)
    p.set_defaults(func=cmd_score)


def _read_lines(path: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of each non-empty line."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    lines = [(no, line) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise CLIError(f"{path} has no text to score" + (" (nothing on stdin)" if path == "-" else ""))
    return lines


def cmd_score(args: argparse.Namespace) -> int:
    if args.top < 0 or args.top > 20:
        raise CLIError(f"--top: must be between 0 and 20, got {args.top}")
    if args.batch_tokens < 1:
        raise CLIError(f"--batch-tokens: must be >= 1, got {args.batch_tokens}")
    options = engine_options(args)
    lines = _read_lines(args.file)
    engine = load_engine(options, verbose=args.verbose)  # heavy imports only now
    from ..eval.likelihood import score_ids
    from ..tokens import token_table

    id_lists = [engine.encode(text) for _, text in lines]
    for (no, _), ids in zip(lines, id_lists):
        if len(ids) > engine.context_length:
            raise CLIError(f"line {no} is {len(ids)} tokens; the model's context is {engine.context_length}")
    scores = score_ids(engine, id_lists, top_n=args.top if args.json else 0, batch_tokens=args.batch_tokens)
    table = token_table(engine.tokenizer)
    total, count = 0.0, 0
    out = sys.stdout
    for (no, text), s in zip(lines, scores):
        scored = [lp for lp in s.logprobs if lp is not None]
        total, count = total + sum(scored), count + len(scored)
        ppl = s.perplexity
        if args.json:
            tokens = [{"id": t, "piece": table.piece(t), "bytes": list(table.bytes(t)), "logprob": lp}
                      for t, lp in zip(s.ids, s.logprobs)]
            if args.top:
                for tok, ids, lps in zip(tokens, s.top_ids, s.top_logprobs):
                    tok["top"] = [{"id": t, "piece": table.piece(t), "logprob": lp} for t, lp in zip(ids, lps)]
            out.write(json.dumps({"line": no, "text": text, "tokens": tokens, "scored": len(scored),
                                  "perplexity": ppl if math.isfinite(ppl) else None},
                                 ensure_ascii=False) + "\n")
        else:
            preview = text if len(text) <= 60 else text[:57] + "..."
            out.write(f"{ppl:10.3f}\t{len(scored)}\t{preview}\n")
    overall = math.exp(-total / count) if count else float("nan")
    print(f"{len(lines)} line(s), {count} token(s) scored, perplexity {overall:.3f}", file=sys.stderr)
    return 0
