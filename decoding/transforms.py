"""Logits transforms: plain functions ``(logits[B, V], param) -> logits[B, V]``.

Removed entries are set to ``-inf``; the vocabulary is never shrunk, so shapes
stay static. ``param`` is a Python number (same for every row) or a tensor
``[B]`` (one value per row, with an "off" value that leaves the row as it is).
Semantics follow the ``transformers`` logits warpers of the same name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .lazy import torch

Param = "float | int | torch.Tensor"  # a type alias by name: reading torch.Tensor here would import torch


def _per_row(param: Param, logits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A ``[B, 1]`` column of per-row values on the logits' device."""
    if isinstance(param, torch.Tensor):
        col = param.to(device=logits.device, dtype=dtype or param.dtype)
        return col.reshape(-1, 1)
    return torch.full((logits.shape[0], 1), param, device=logits.device, dtype=dtype or logits.dtype)


def temperature(logits: torch.Tensor, t: Param) -> torch.Tensor:
    """Divide logits by ``t`` (``TemperatureLogitsWarper``). ``t == 1`` is off.

    Rows with ``t == 0`` mean greedy; they are left untouched here and the
    selector takes their argmax.
    """
    col = _per_row(t, logits, logits.dtype)
    col = torch.where(col > 0, col, torch.ones_like(col))
    return logits / col


def top_k(logits: torch.Tensor, k: Param, min_tokens_to_keep: int = 1, k_max: int | None = None) -> torch.Tensor:
    """Keep the ``k`` highest logits per row (``TopKLogitsWarper``); ``k == 0`` is off.

    Ties with the k-th value are kept, as in ``transformers``. ``k_max`` (a host int,
    at least every row's ``k``) lets a partial ``topk`` replace the full sort.
    """
    vocab = logits.shape[-1]
    col = _per_row(k, logits, torch.long)
    keep = col.clamp(min=min_tokens_to_keep, max=vocab)
    if isinstance(k, int):
        k_max = k
    if k_max is not None and k_max > 0:
        depth = min(max(k_max, min_tokens_to_keep), vocab)
        sorted_desc = torch.topk(logits, depth, dim=-1).values
    else:
        sorted_desc = torch.sort(logits, dim=-1, descending=True).values
    # kth largest per row, gathered at (k - 1)
    kth = sorted_desc.gather(-1, (keep - 1).clamp(max=sorted_desc.shape[-1] - 1))
    remove = (logits < kth) & (col > 0)
    return logits.masked_fill(remove, float("-inf"))


def top_p(logits: torch.Tensor, p: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Nucleus filter (``TopPLogitsWarper``): keep the smallest set of tokens whose
    probability mass reaches ``p``; ``p == 1`` is off."""
    col = _per_row(p, logits, torch.float32)
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.float().softmax(dim=-1).cumsum(dim=-1)
    # ascending order: drop the low tail whose mass is <= 1 - p
    sorted_remove = cum <= (1 - col)
    sorted_remove[..., -min_tokens_to_keep:] = False
    sorted_remove &= col < 1.0
    remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return logits.masked_fill(remove, float("-inf"))


def _keep_top(remove: torch.Tensor, logits: torch.Tensor, min_tokens_to_keep: int) -> torch.Tensor:
    """Un-remove each row's ``min_tokens_to_keep`` highest logits (as the HF warpers do)."""
    k = min(min_tokens_to_keep, logits.shape[-1])
    top = torch.topk(logits, k, dim=-1).indices
    return remove.scatter(-1, top, False)


def min_p(logits: torch.Tensor, p: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Min-p (``MinPLogitsWarper``, Nguyen et al. 2024): drop tokens whose probability
    is below ``p`` times the top token's; ``p == 0`` is off."""
    col = _per_row(p, logits, torch.float32)
    probs = logits.float().softmax(dim=-1)
    remove = probs < col * probs.amax(dim=-1, keepdim=True)
    remove = _keep_top(remove, logits, min_tokens_to_keep)
    return logits.masked_fill(remove, float("-inf"))


def typical_p(logits: torch.Tensor, mass: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Locally typical sampling (``TypicalLogitsWarper``, Meister et al. 2022): keep the
    tokens whose surprise is closest to the entropy until their mass reaches ``mass``;
    ``mass >= 1`` is off."""
    col = _per_row(mass, logits, torch.float32)
    logp = logits.float().log_softmax(dim=-1)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)
    shifted = (-logp - entropy).abs()
    sorted_shift, sorted_idx = torch.sort(shifted, descending=False)
    cum = p.gather(-1, sorted_idx).cumsum(dim=-1)
    last = (cum < col).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    sorted_remove = sorted_shift > sorted_shift.gather(-1, last)
    sorted_remove[..., :min_tokens_to_keep] = False
    sorted_remove &= col < 1.0
    remove = sorted_remove.scatter(-1, sorted_idx, sorted_remove)
    return logits.masked_fill(remove, float("-inf"))


def epsilon_cutoff(logits: torch.Tensor, epsilon: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Epsilon sampling (``EpsilonLogitsWarper``, Hewitt et al. 2022): drop tokens with
    probability below ``epsilon``; ``epsilon == 0`` is off."""
    col = _per_row(epsilon, logits, torch.float32)
    remove = logits.float().softmax(dim=-1) < col
    kth = torch.topk(logits, min(min_tokens_to_keep, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(remove & (logits < kth), float("-inf"))


def eta_cutoff(logits: torch.Tensor, epsilon: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Eta sampling (``EtaLogitsWarper``, Hewitt et al. 2022): drop tokens with probability
    below ``min(epsilon, sqrt(epsilon) * exp(-entropy))``; ``epsilon == 0`` is off."""
    col = _per_row(epsilon, logits, torch.float32)
    logp = logits.float().log_softmax(dim=-1)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)
    eta = torch.minimum(col, col.sqrt() * torch.exp(-entropy))
    kth = torch.topk(logits, min(min_tokens_to_keep, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill((p < eta) & (logits < kth), float("-inf"))


def top_n_sigma(logits: torch.Tensor, n: Param, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Top-n-sigma (Tang et al. 2024; llama.cpp ``llama_sampler_top_n_sigma``): keep the
    tokens whose logit is at least ``max - n * std``, ``std`` the (population) standard
    deviation of the row's finite logits, already removed entries left out; ``n <= 0``
    is off. The top logit always stays, and the kept set does not move with temperature."""
    col = _per_row(n, logits, torch.float32)
    x = logits.float()
    finite = torch.isfinite(x)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = torch.where(finite, x, 0.0).sum(dim=-1, keepdim=True) / count
    std = (torch.where(finite, x - mean, 0.0).square().sum(dim=-1, keepdim=True) / count).sqrt()
    remove = (x < x.amax(dim=-1, keepdim=True) - col * std) & (col > 0)
    remove = _keep_top(remove, logits, min_tokens_to_keep)
    return logits.masked_fill(remove, float("-inf"))


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Param) -> torch.Tensor:
    """Multiplicative repetition penalty (``RepetitionPenaltyLogitsProcessor``, Keskar et
    al. 2019): for every token in ``seen`` (bool ``[B, V]``: the prompt and the output so
    far), a positive logit is divided by ``penalty`` and a negative one multiplied.
    ``penalty == 1`` is off."""
    col = _per_row(penalty, logits, logits.dtype)
    penalised = torch.where(logits < 0, logits * col, logits / col)
    return torch.where(seen, penalised, logits)


def presence_frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, presence: Param,
                               frequency: Param) -> torch.Tensor:
    """Additive penalties as OpenAI defines them (and vLLM applies them, over the
    *generated* tokens only): ``logit[j] -= counts[j] * frequency + (counts[j] > 0) * presence``.
    ``counts`` is ``[B, V]``; zero is off for both."""
    pres = _per_row(presence, logits, logits.dtype)
    freq = _per_row(frequency, logits, logits.dtype)
    return logits - counts.to(logits.dtype) * freq - (counts > 0).to(logits.dtype) * pres


def ban_tokens(logits: torch.Tensor, banned: list[list[int]] | list[set[int]]) -> torch.Tensor:
    """Set ``logits[i, t] = -inf`` for every ``t`` in ``banned[i]``."""
    rows = [i for i, ids in enumerate(banned) for _ in ids]
    if not rows:
        return logits
    cols = [t for ids in banned for t in ids]
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = True
    return logits.masked_fill(mask, float("-inf"))


def ngram_bans(history: list[int], n: int) -> list[int]:
    """Tokens that would repeat an ``n``-gram already in ``history`` (the prompt and the
    output): every token that followed an earlier occurrence of the last ``n - 1`` tokens."""
    if n <= 0 or len(history) < n:
        return []
    if n == 1:
        return list(set(history))
    prefix = history[len(history) - n + 1:]
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]


def no_repeat_ngram(logits: torch.Tensor, histories: list[list[int]], n: Param) -> torch.Tensor:
    """No-repeat-ngram (``NoRepeatNGramLogitsProcessor``): ban any token that would
    complete an ``n``-gram already present in the row's history; ``n == 0`` is off."""
    sizes = n.tolist() if isinstance(n, torch.Tensor) else [int(n)] * logits.shape[0]
    return ban_tokens(logits, [ngram_bans(h, int(s)) for h, s in zip(histories, sizes)])


def bad_words_bans(history: list[int], bad_words_ids: tuple[tuple[int, ...], ...]) -> list[int]:
    """Last tokens of the bad sequences whose prefix ends ``history`` (a one-token
    sequence is always banned)."""
    out = []
    for seq in bad_words_ids:
        pre = len(seq) - 1
        if pre == 0 or (pre <= len(history) and tuple(history[len(history) - pre:]) == tuple(seq[:-1])):
            out.append(seq[-1])
    return out


def bad_words(logits: torch.Tensor, histories: list[list[int]],
              bad_words_ids: list[tuple[tuple[int, ...], ...]]) -> torch.Tensor:
    """Bad words (``NoBadWordsLogitsProcessor``): a sequence of ids may never be
    generated whole; its last token is banned when the rest of it ends the history."""
    return ban_tokens(logits, [bad_words_bans(h, b) for h, b in zip(histories, bad_words_ids)])


def bias_index(bias: list[dict[int, float]], device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One ``{token_id: bias}`` per row -> ``((rows, ids), values)`` for ``add_bias``; a
    batch whose biases are fixed builds it once. ``dtype``: the values' (float32 if None)."""
    rows = [i for i, b in enumerate(bias) for _ in b]
    ids = [t for b in bias for t in b]
    values = [v for b in bias for v in b.values()]
    return ((torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(ids, dtype=torch.long, device=device)),
            torch.tensor(values, dtype=dtype or torch.float32, device=device))


def add_bias(logits: torch.Tensor, index: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Add the values of a ``bias_index`` at its ``(row, token)`` positions."""
    (rows, ids), values = index
    if rows.numel() == 0:
        return logits
    return logits.index_put((rows, ids), values.to(logits.dtype), accumulate=True)


def logit_bias(logits: torch.Tensor, bias: dict[int, float] | list[dict[int, float]]) -> torch.Tensor:
    """Add a per-token bias (OpenAI ``logit_bias``; ``SequenceBiasLogitsProcessor`` with
    one-token sequences). ``bias`` is one ``{token_id: bias}`` for all rows or one per row."""
    per_row = bias if isinstance(bias, list) else [bias] * logits.shape[0]
    if not any(per_row):
        return logits
    return add_bias(logits, bias_index(per_row, logits.device, logits.dtype))


def min_new_tokens_bans(generated: int, minimum: int, stop_ids: Sequence[int]) -> list[int]:
    """The ids a row may not take yet: ``stop_ids`` while it has generated fewer than
    ``minimum`` tokens."""
    return list(stop_ids) if generated < minimum else []


def min_new_tokens(logits: torch.Tensor, generated: Param, minimum: Param,
                   eos_token_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Min new tokens (``MinNewTokensLengthLogitsProcessor``): the end-of-sequence ids
    are masked while a row has generated fewer than ``minimum`` tokens; 0 is off.
    Tensor arguments are read to the host (the sampler keeps these counts as host ints)."""
    rows = logits.shape[0]
    eos = eos_token_ids.tolist() if isinstance(eos_token_ids, torch.Tensor) else list(eos_token_ids)
    return ban_tokens(logits, [min_new_tokens_bans(g, m, eos)
                               for g, m in zip(_host_ints(generated, rows), _host_ints(minimum, rows))])


def _host_ints(param: Param, rows: int) -> list[int]:
    if isinstance(param, torch.Tensor):
        values = param.reshape(-1).tolist()
        return [int(v) for v in (values * rows if len(values) == 1 else values)]
    return [int(param)] * rows


def xtc(logits: torch.Tensor, probability: Param, threshold: Param, uniform: Param,
        min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Exclude Top Choices (llama.cpp ``llama_sampler_xtc``, from text-generation-webui):
    when the row's draw ``uniform`` (in [0, 1)) is ``<= probability`` and at least two
    tokens have probability ``>= threshold``, remove all of them except the least likely
    one. ``probability == 0`` is off. The draw comes from the caller (the row's own
    generator), so this function stays deterministic."""
    prob_col = _per_row(probability, logits, torch.float32)
    thr_col = _per_row(threshold, logits, torch.float32)
    u_col = _per_row(uniform, logits, torch.float32)
    p = logits.float().softmax(dim=-1)
    above = p >= thr_col
    # the least likely token at or above the threshold stays (ties with it stay too)
    floor = torch.where(above, p, torch.full_like(p, 2.0)).amin(dim=-1, keepdim=True)
    remove = above & (p > floor)
    left = (torch.isfinite(logits) & ~remove).sum(dim=-1, keepdim=True)
    on = (prob_col > 0) & (u_col <= prob_col) & (above.sum(dim=-1, keepdim=True) >= 2) & \
        (left >= min_tokens_to_keep)
    return logits.masked_fill(remove & on, float("-inf"))


Breakers = dict[int, set[tuple[int, ...]]]  # head token -> the token tails that complete a breaker


def dry_breaker_sequences(token_texts: Sequence[str], text: str, encode: Callable[[str], list[int]],
                          max_tail: int = 20) -> Breakers:
    """The token sequences that spell DRY breaker ``text`` (llama.cpp's reading of a text
    breaker): every token whose text contains it is a breaker alone (an empty tail); a
    token whose text ends with the start of ``text`` is the head of a breaker whose tail is
    the rest of ``text`` as ``encode`` tokenizes it (at most ``max_tail`` tokens)."""
    out: Breakers = {}
    for tid, word in enumerate(token_texts):
        if text in word:
            out.setdefault(tid, set()).add(())
            continue
        for rest in (word[pos:] for pos in range(len(word)) if text.startswith(word[pos:])):
            out.setdefault(tid, set()).add(tuple(encode(text[len(rest):])[:max_tail]))
    return out


def _repeat_limit(ctx: list[int], heads: Breakers) -> int:
    """How many of the context's last tokens a repeat may span: those after the most recent
    complete breaker sequence (the longest one that ends there), or all of them."""
    for i in range(len(ctx)):  # i tokens follow the candidate head
        tails = heads.get(ctx[-1 - i])
        if not tails:
            continue
        if (longest := max((len(t) for t in tails if len(t) <= i and list(t) == ctx[len(ctx) - i:][: len(t)]),
                           default=-1)) >= 0:
            return i - longest
    return len(ctx)


def dry_penalties(history: list[int], multiplier: float, base: float, allowed_length: int,
                  penalty_last_n: int = -1,
                  sequence_breakers: tuple[int, ...] | set[int] | Breakers = ()) -> dict[int, float]:
    """DRY ("don't repeat yourself", llama.cpp ``llama_sampler_dry``, by p-e-w): for each
    token ``t`` that would extend a repeat, i.e. ``t`` followed an earlier occurrence of
    the context's last ``n`` tokens, with ``n`` the longest such match, the penalty is
    ``multiplier * base ** (n - allowed_length)`` when ``n >= allowed_length``.
    Matches never cross a sequence breaker and single-token breakers are not penalised;
    ``sequence_breakers`` are token ids, or (``dry_breaker_sequences``) head tokens with the
    tails that complete a breaker spread over several tokens. ``penalty_last_n`` limits
    the context (-1: all of it, 0: off)."""
    if multiplier <= 0 or penalty_last_n == 0 or len(history) < 2:
        return {}
    ctx = history if penalty_last_n < 0 else history[-penalty_last_n:]
    heads = sequence_breakers if isinstance(sequence_breakers, dict) else {t: {()} for t in sequence_breakers}
    # the repeated sequence may not reach back past the most recent breaker
    limit = _repeat_limit(ctx, heads)
    length = len(ctx)
    best: dict[int, int] = {}
    for end in range(length - 1):  # ctx[end] is the last token of an earlier occurrence
        n = 0
        while n < limit and n <= end and ctx[end - n] == ctx[length - 1 - n]:
            n += 1
        if n >= allowed_length:
            nxt = ctx[end + 1]
            best[nxt] = max(best.get(nxt, 0), n)
    # llama.cpp caps the exponent so the penalty stays a finite float
    max_exp = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    out = {}
    for tok, n in best.items():
        if () in heads.get(tok, ()):
            continue
        exp = n - allowed_length
        if max_exp > 0:
            exp = min(exp, max_exp)
        out[tok] = multiplier * base**exp
    return out


def dry(logits: torch.Tensor, penalties: list[dict[int, float]]) -> torch.Tensor:
    """Subtract each row's DRY penalties (from ``dry_penalties``) from its logits."""
    return logit_bias(logits, [{t: -v for t, v in p.items()} for p in penalties])


def mirostat_v2_truncate(logits: torch.Tensor, mu: Param) -> torch.Tensor:
    """Mirostat 2.0 truncation (Basu et al. 2021, as llama.cpp ``llama_sampler_mirostat_v2``):
    drop tokens whose surprise ``-log2 p`` exceeds the row's ``mu``; the most likely
    token always stays."""
    col = _per_row(mu, logits, torch.float32)
    surprise = -logits.float().log_softmax(dim=-1) / math.log(2)
    remove = surprise > col
    remove = _keep_top(remove, logits, 1)
    return logits.masked_fill(remove, float("-inf"))


def dynamic_temperature(logits: torch.Tensor, t: Param, delta: Param, exponent: Param) -> torch.Tensor:
    """llama.cpp's ``temp-ext`` (DynaTemp): a row with ``delta > 0`` divides by
    ``lo + (hi - lo) * (H / log n) ** exponent``, ``lo, hi = max(0, t - delta), t + delta``,
    ``H`` the entropy (nats) of its distribution, ``n`` its tokens still in play (with one,
    nothing changes); ``delta == 0`` is plain ``temperature``."""
    t_col = _per_row(t, logits, torch.float32)
    d_col = _per_row(delta, logits, torch.float32)
    e_col = _per_row(exponent, logits, torch.float32)
    logp = logits.float().log_softmax(dim=-1)
    entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=-1, keepdim=True)
    n = torch.isfinite(logits).sum(dim=-1, keepdim=True)
    norm = entropy / n.clamp(min=2).float().log()
    lo, hi = (t_col - d_col).clamp(min=0.0), t_col + d_col
    dyn = (lo + (hi - lo) * norm.pow(e_col)).clamp(min=1e-6)  # lo 0 and a certain row: no division by 0
    dyn = torch.where(n > 1, dyn, torch.ones_like(dyn))
    return torch.where(d_col > 0, logits / dyn.to(logits.dtype), temperature(logits, t))


def quadratic_smoothing(logits: torch.Tensor, factor: Param) -> torch.Tensor:
    """Quadratic sampling (text-generation-webui's ``smoothing_factor``): each logit becomes
    ``top - factor * (logit - top) ** 2`` with ``top`` the row's largest; ``factor == 0`` is
    off. The order of tokens never changes; a larger factor sharpens."""
    col = _per_row(factor, logits, logits.dtype)
    top = logits.max(dim=-1, keepdim=True).values
    smoothed = top - col * (logits - top).square()
    return torch.where(col > 0, smoothed, logits)


def mirostat_v1_truncate(logits: torch.Tensor, mu: Param, vocab: int, m: int = 100) -> torch.Tensor:
    """Mirostat 1.0's truncation (Basu et al. 2021, llama.cpp ``llama_sampler_mirostat``):
    fit the Zipf exponent ``s`` to the ``m`` most likely tokens (least squares of
    ``log(p_i / p_i+1)`` on ``log((i+2) / (i+1))``), then keep the top
    ``k = ((s - 1) 2**mu / (1 - vocab ** (1 - s))) ** (1 / s)`` tokens (at least one)."""
    mu_col = _per_row(mu, logits, torch.float32)
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(m, logits.shape[-1]), dim=-1).values  # (B, m) most likely first
    i = torch.arange(top.shape[-1] - 1, device=logits.device, dtype=torch.float32)
    t = ((i + 2) / (i + 1)).log()
    b = (top[:, :-1] / top[:, 1:]).log()
    live = (top[:, 1:] > 0).float()  # pairs inside the tokens still in play
    s_hat = (t * b * live).nan_to_num(0.0).sum(-1, keepdim=True) / (t * t * live).sum(-1, keepdim=True)
    eps = s_hat - 1
    k = (eps * torch.pow(2.0, mu_col) / (1 - torch.pow(float(vocab), -eps))).pow(1 / s_hat)
    k = k.nan_to_num(nan=float(vocab), posinf=float(vocab)).clamp(1, vocab).floor().long()
    return top_k(logits, k.squeeze(-1))
