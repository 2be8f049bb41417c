"""How likely a text is under the model, from per-token log-probabilities.

One family of functions, all on the log-probabilities of the tokens of a text
(natural log, one per token):

    mean_logprob(logprobs) -> float      average per token
    perplexity(logprobs) -> float        exp(-mean_logprob)
    text_logprobs(engine, text) -> ...   score a given text under an engine's weights
    score_ids(engine, id_lists, top_n)   score many texts, batched: TokenScores each

The logprobs come either from a stream (each ``TokenEvent.logprob``: what
``tokenflow compare`` scores) or from ``text_logprobs`` (a fixed text, the
quality check of a weight format).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from decoding.lazy import numpy as np


def mean_logprob(logprobs: Sequence[float | None]) -> float:
    """Average log-probability per token (``None`` entries skipped; ``nan`` for none).

    A tensor (what ``text_logprobs`` returns) is averaged by its own ``mean()``, in
    its own dtype, so the number is the one the model's float32 reduction gives."""
    if hasattr(logprobs, "numel"):  # a torch tensor: no None entries by construction
        return float(logprobs.mean()) if logprobs.numel() else float("nan")
    vals = [lp for lp in logprobs if lp is not None]
    return float(np.mean(vals)) if vals else float("nan")


def perplexity(logprobs: Sequence[float | None]) -> float:
    """``exp(-mean logprob)``: the geometric mean of ``1 / p`` over the tokens."""
    m = mean_logprob(logprobs)
    return math.exp(-m) if math.isfinite(m) else float("nan")


def text_logprobs(engine, text: str):
    """The log-probability of each token of ``text`` after the ones before it, under
    the engine's weights (teacher forcing, one forward): a float32 tensor ``(T - 1,)``
    for a text of ``T`` tokens (the first token has no context to be scored in)."""
    import torch

    ids = engine.tokenizer(text)["input_ids"]
    runner = engine.runner
    with torch.inference_mode():
        slots = runner.acquire(1)
        try:
            logits = runner.all_logits(slots[0], ids)  # (T, V) float32
        finally:
            runner.release(slots)
        return _chosen(torch.log_softmax(logits[:-1], dim=-1), ids)


def _chosen(logp, ids: Sequence[int]):
    """``logp[t, ids[t + 1]]`` for each position: the log-probability of what came next."""
    import torch

    target = torch.tensor(list(ids[1:]), device=logp.device)
    return logp.gather(1, target[:, None])[:, 0]


@dataclass
class TokenScores:
    """One scored text: its ids, each token's log-probability after the ones before it
    (``None`` for the first, which has no context), and per position the ``top_n`` most
    likely ids with their log-probabilities, most likely first (empty for the first)."""

    ids: list[int]
    logprobs: list[float | None]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return perplexity(self.logprobs)


# Padded tokens one scoring forward holds (the batch's rows x its longest text): its
# float32 logits are this many x the vocabulary x 4 bytes (49152 words: 200 MB at 1024).
SCORE_BATCH_TOKENS = 1024


def score_ids(engine, id_lists: Sequence[Sequence[int]], top_n: int = 0,
              batch_tokens: int = SCORE_BATCH_TOKENS) -> list[TokenScores]:
    """Score several texts (token ids) under the engine's weights, teacher forcing: the
    texts that fit ``batch_tokens`` (rows x the longest) and the free KV-cache slots go
    through ONE forward (``runner.all_logits_many``), shortest first so that rows of a
    forward are of similar lengths; the answers in the order given; no token is generated.
    Raises ``SlotsExhausted`` when no slot is free."""
    import torch

    from ..model.runner import SlotsExhausted

    runner = engine.runner
    lists = [list(ids) for ids in id_lists]
    # Shortest first, so each forward's rows are of similar lengths (little padding);
    # the answers come back in the order given.
    pending = sorted(range(len(lists)), key=lambda i: len(lists[i]))
    out: list[TokenScores | None] = [None] * len(lists)
    with torch.inference_mode():
        while pending:
            room = runner.free_count
            if room < 1:
                raise SlotsExhausted("scoring needs a free KV-cache slot")
            take = 1
            while take < min(room, len(pending)) and (take + 1) * len(lists[pending[take]]) <= batch_tokens:
                take += 1
            group, pending = pending[:take], pending[take:]
            slots = runner.acquire(len(group))
            try:
                logits = runner.all_logits_many(slots, [lists[i] for i in group])
            finally:
                runner.release(slots)
            for i, lg in zip(group, logits):
                out[i] = _scores(lg, lists[i], top_n)
    return out


def _scores(logits, ids: list[int], top_n: int) -> TokenScores:
    """One text's ``TokenScores`` from its logits ``[T, V]`` (one host read each list)."""
    import torch

    logp = torch.log_softmax(logits[:-1], dim=-1)
    scores = TokenScores(ids, [None] + _chosen(logp, ids).tolist())
    if top_n > 0 and len(ids) > 1:
        values, indices = logp.topk(min(top_n, logp.shape[-1]), dim=-1)
        scores.top_ids = [[]] + indices.tolist()
        scores.top_logprobs = [[]] + values.tolist()
    elif top_n > 0:
        scores.top_ids, scores.top_logprobs = [[]], [[]]
    return scores
