"""How likely a text is under the model, from per-token log-probabilities.

One family of functions, all on the log-probabilities of the tokens of a text
(natural log, one per token):

    mean_logprob(logprobs) -> float      average per token
    perplexity(logprobs) -> float        exp(-mean_logprob)
    text_logprobs(engine, text) -> ...   score a given text under an engine's weights

The logprobs come either from a stream (each ``TokenEvent.logprob``: what
``tokenflow compare`` scores) or from ``text_logprobs`` (a fixed text, the
quality check of a weight format).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        logp = torch.log_softmax(logits[:-1], dim=-1)
        target = torch.tensor(ids[1:], device=logp.device)
        return logp.gather(1, target[:, None])[:, 0]
