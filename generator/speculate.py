"""Prompt-lookup speculative decoding inside the batch, exact.

A speculating row drafts up to ``k`` tokens: the tokens that followed the earliest
earlier occurrence of its longest suffix n-gram (``n`` down to ``min_n``) in its prompt +
output (``NgramDrafter``, as transformers' prompt lookup), cut to the length that pays
at the row's measured rate of right drafts and the engine's measured cost of a row
(``NgramDrafter.worth``, ``StepCost``). The step's ONE forward then
holds, for that row, ``k + 1`` one-token rows of its slot at positions ``p .. p+k`` (its
next token, then the draft), beside the other rows' single tokens: on our kernel tiers
each layer writes every row's key and value before any attends, so each draft position
sees the slot up to itself, and its logits are the same bits as a one-token step there
(docs/kernels.md, "Batch and chunk invariance").

Verification replays the row's own chain position by position: position 0 is the
ordinary sampler call of the step (``BatchGenerator._sample_step``, every row); while the
token a row chose equals its next draft token, position ``j`` runs the same sampler call
over the rows still matching, their states (history, penalties, DRY, grammar, mirostat)
having accepted the tokens before ``j``, their generators drawing exactly the one draw the
one-token step would have drawn there. A rejected tail draws nothing and is never read
(the slot's length is rolled back past it). So a row's tokens are the same, greedy or
seeded-sampled, with or without speculation: the chosen token at the first mismatch (or
after the whole draft) is the correction (or bonus) token, emitted in the same step.

Exact only where the verify rows are the same bits as a one-token step: ``FastRunner``
with prompts as one-token rows (``token_rows``: a bf16 CPU cache, on our kernel tiers and
PyTorch's), int weights, the eager step. Elsewhere (float weights, ``--compile``, the
transformers fallback) rows never speculate.
Beam rows never speculate; a step with a running beam search runs without drafts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from decoding.speculative import Speculation, speculation


class NgramDrafter:
    """The draft of one row: an index of every n-gram (``min_n <= len <= n``) of its tokens
    to the position after its first occurrence, grown as tokens are appended; and how often
    its drafts were right, by the length of the n-gram that matched (``worth``)."""

    P0 = 0.5  # a draft token's chance to be right before any was verified
    ALPHA = 0.2  # the weight of each verified token in that estimate
    RECOVER = 0.02  # how far a step of an unverified match moves it back toward P0

    def __init__(self, spec: Speculation):
        self.k, self.n, self.min_n = spec.k, spec.n, spec.min_n
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> where its first continuation starts
        self.matched = spec.n  # the n-gram length behind the last draft (min_n..n)
        self.right = {size: self.P0 for size in range(1, spec.n + 1)}  # chance a draft token is right, by it

    def extend(self, tokens: list[int]) -> None:
        """Catch up with the row's history (prompt + output): index the n-grams that now
        have a following token."""
        for t in tokens[len(self.tokens):]:
            at = len(self.tokens)  # t's position: every n-gram ending just before it continues with it
            for size in range(self.min_n, self.n + 1):
                if at >= size:
                    self.index.setdefault(tuple(self.tokens[at - size: at]), at)
            self.tokens.append(t)

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(k, limit)`` tokens after the longest suffix match, or ``[]``."""
        limit = min(self.k, limit)
        if limit <= 0:
            return []
        end = len(self.tokens)
        for size in range(min(self.n, end), self.min_n - 1, -1):
            at = self.index.get(tuple(self.tokens[end - size:]))
            if at is not None:
                self.matched = size
                return self.tokens[at: at + limit]
        return []

    def propose(self, limit: int, row_cost: float) -> list[int]:
        """The draft to verify this step: ``draft(limit)`` cut to the length that pays
        (``worth``). A match left unverified because it does not pay nudges its rate back
        toward ``P0`` (``RECOVER``), so a row whose drafts failed tries again some steps later
        instead of never (on a free-form answer: one verified row every ~15 such steps)."""
        d = self.draft(limit)
        keep = self.worth(len(d), row_cost)
        if d and not keep:
            p = self.right[self.matched]
            self.right[self.matched] = p + self.RECOVER * (self.P0 - p)
        return d[:keep]

    def worth(self, longest: int, row_cost: float) -> int:
        """How many of a draft's first ``longest`` tokens to verify: the length that gives the
        most tokens per unit of step time, where the step with ``L`` draft rows costs
        ``1 + row_cost * L`` and yields ``1 + p + p^2 + ... + p^L`` tokens on average (token i
        is kept only if all before it were right), ``p`` this row's rate for matches of this
        n-gram length. 0 where no length pays: a row whose drafts keep failing, or a machine
        where a row costs nearly a step, verifies nothing."""
        p = self.right[self.matched]
        best, best_rate, tokens, term = 0, 1.0, 1.0, 1.0
        for length in range(1, longest + 1):
            term *= p
            tokens += term
            rate = tokens / (1.0 + row_cost * length)
            if rate > best_rate:
                best, best_rate = length, rate
        return best

    def observe(self, accepted: int, drafted: int) -> None:
        """A draft of ``drafted`` tokens was verified and its first ``accepted`` were right."""
        p = self.right[self.matched]
        for i in range(min(drafted, accepted + 1)):
            p += self.ALPHA * ((i < accepted) - p)
        self.right[self.matched] = p


class StepCost:
    """What one more row costs a decode forward on this engine, measured as steps run:
    a running mean of the forward's seconds for each row count seen, and the least-squares
    line ``seconds = fixed + per_row * rows`` through them. Until two row counts were seen
    a few times each, ``PRIOR`` (an extra row as a fraction of a one-row step; measured
    0.1-0.2 on our avx512 and avx2 kernels with the default model, 2 cores)."""

    PRIOR = 0.15
    ALPHA = 0.1
    MIN_SEEN = 3

    def __init__(self):
        self.seen: dict[int, list[float]] = {}  # rows -> [mean seconds, count]

    def add(self, rows: int, seconds: float) -> None:
        mean = self.seen.setdefault(rows, [seconds, 0])
        mean[1] += 1
        mean[0] += max(self.ALPHA, 1.0 / mean[1]) * (seconds - mean[0])

    def fit(self) -> tuple[float, float] | None:
        """``(fixed, per_row)`` seconds, or None before enough steps."""
        pts = [(r, m, n) for r, (m, n) in self.seen.items() if n >= self.MIN_SEEN]
        if len(pts) < 2:
            return None
        w = sum(n for _, _, n in pts)
        xm = sum(r * n for r, _, n in pts) / w
        ym = sum(m * n for _, m, n in pts) / w
        sxx = sum(n * (r - xm) ** 2 for r, _, n in pts)
        per_row = max(0.0, sum(n * (r - xm) * (m - ym) for r, m, n in pts) / sxx)
        return max(0.0, ym - per_row * xm), per_row

    def row_cost(self, rows: int) -> float:
        """One more row as a fraction of a step of ``rows`` rows."""
        fixed, per_row = self.fit() or (1.0 - self.PRIOR, self.PRIOR)
        step = fixed + per_row * max(1, rows)
        return min(1.0, per_row / step) if step > 0 else 1.0


@dataclass
class SpecCounts:
    """Totals over an engine's life (``tokenflow generate --stats``, ``/metrics``)."""

    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of those, the ones the rows' chains chose
    verify_steps: int = 0  # forwards that verified a draft


def exact_here(engine) -> bool:
    """Whether a verify forward's logits are the same bits as one-token steps' on this engine now."""
    runner = engine.runner
    return bool(getattr(runner, "token_rows", False) and not runner.compiled
                and getattr(getattr(engine, "config", None), "quant", "none") != "none")


def describe(engine) -> str:
    """`` speculate=...`` for ``Engine.describe`` when the engine's default asks for it (and why
    it cannot run here, where it cannot); ``""`` when it is off."""
    asked = getattr(engine.config, "speculate", "off")
    if asked == "off":
        return ""
    if not exact_here(engine):
        return (f" speculate={asked} (off here: verified drafts are exact only with int weights, a bf16 "
                "cache and the eager step)")
    return f" speculate={asked}"


class Speculator:
    """A ``BatchGenerator``'s drafts: which rows speculate, their drafters, this step's
    draft and verify logits. ``batch.py`` calls ``decode`` and ``extend`` (two hooks)."""

    def __init__(self, batch):
        self.batch = batch
        engine = batch.engine
        self.default = speculation(getattr(getattr(engine, "config", None), "speculate", "off"))
        self.counts: SpecCounts = engine.__dict__.setdefault("spec_counts", SpecCounts())
        self.cost: StepCost = engine.__dict__.setdefault("step_cost", StepCost())
        self.drafters: dict[int, NgramDrafter | None] = {}  # by handle; None: the row does not speculate
        self.pending: dict[int, tuple[list[int], torch.Tensor, int]] = {}  # handle -> (draft, logits, p)

    def _drafter(self, row) -> NgramDrafter | None:
        if row.handle not in self.drafters:
            spec = row.params.speculative or self.default
            on = spec is not None and spec.on and row.state is not None
            self.drafters[row.handle] = NgramDrafter(spec) if on else None
        return self.drafters[row.handle]

    def decode(self, rows: list, failed: dict, plain) -> list:
        """The step's forward: ``[(rows, logits)]`` with each row's position-0 logits, as
        ``plain`` (``BatchGenerator._decode``) returns, which runs where no row drafts (or
        the verify forward failed: it finds the failing row); the draft positions' logits
        kept for ``extend``. Where some row speculates, every forward is timed
        (``StepCost``): a row's draft is cut to the length that pays at the measured cost."""
        self.pending.clear()
        live = set(self.batch.rows)
        for h in [h for h in self.drafters if h not in live]:
            del self.drafters[h]
        if any(r.search is not None for r in rows) or not exact_here(self.batch.engine):
            return plain(rows, failed)
        runner = self.batch.runner
        drafts, speculating, row_cost = {}, False, None
        for r in rows:
            drafter = self._drafter(r)
            if drafter is None:
                continue
            if not speculating:  # the fit is asked once a step, and only where some row speculates
                speculating, row_cost = True, self.cost.row_cost(len(rows))
            drafter.extend(r.state.history)  # prompt + output, the row's next token last
            pos = runner.length(r.slots[0])
            # a draft token is worth verifying only if a token can still follow it
            d = drafter.propose(min(r.params.max_new_tokens - r.emitted - 1, runner.max_len - 1 - pos), row_cost)
            if d:
                drafts[r.handle] = d
        t0 = time.perf_counter()
        if not drafts:
            pieces = plain(rows, failed)
            if speculating and not failed:
                self.cost.add(len(rows), time.perf_counter() - t0)
            return pieces
        flat_slots, flat_pos, flat_tok, first = [], [], [], []
        for r in rows:
            slot, pos = r.slots[0], runner.length(r.slots[0])
            toks = [r.next_token, *drafts.get(r.handle, ())]
            first.append(len(flat_slots))
            flat_slots += [slot] * len(toks)
            flat_pos += range(pos, pos + len(toks))
            flat_tok += toks
        try:
            runner.forward_calls += 1
            logits = runner.forward_rows(flat_slots, flat_pos, flat_tok, list(range(len(flat_slots))))
        except Exception:  # noqa: BLE001 - the plain decode finds the failing row
            return plain(rows, failed)
        self.cost.add(len(flat_slots), time.perf_counter() - t0)
        for r, at in zip(rows, first):
            pos = runner.length(r.slots[0])
            runner.lengths[r.slots[0]] = pos + 1  # as a decode step; extend() moves past accepted drafts
            d = drafts.get(r.handle)
            if d:
                self.pending[r.handle] = (d, logits[at + 1: at + 1 + len(d)], pos + 1)
                self.counts.drafted += len(d)
        self.counts.verify_steps += 1
        index = torch.tensor(first, device=logits.device)
        return [(rows, logits.index_select(0, index))]

    def extend(self, events: list, failed: dict) -> list:
        """After the step's ordinary sampler call: the rows whose chosen token equals their
        next draft token go on, position by position (module docstring); their events are
        appended in order. Each row's slot ends holding its accepted tokens."""
        if not self.pending:
            return events
        batch = self.batch
        chose = {h: ev.token_id for h, ev in events if not isinstance(ev, Exception)}
        going = [h for h in self.pending if h in batch.rows and chose.get(h) == self.pending[h][0][0]]
        accepted = dict.fromkeys(self.pending, 0)
        j = 0
        while going:
            j += 1
            for h in going:
                accepted[h] = j
            rows = [batch.rows[h] for h in going]
            logits_of = {h: self.pending[h][1][j - 1: j] for h in going}
            out = batch._sample_step(rows, logits_of, None, failed)
            events += out
            chose = {h: ev.token_id for h, ev in out}
            going = [h for h in going if h in batch.rows and len(self.pending[h][0]) > j
                     and chose.get(h) == self.pending[h][0][j]]
        for h, (draft, _, length) in self.pending.items():
            self.counts.accepted += accepted[h]
            drafter = self.drafters.get(h)
            if drafter is not None:
                drafter.observe(accepted[h], len(draft))
            row = batch.rows.get(h)
            if row is not None:
                batch.runner.lengths[row.slots[0]] = length + accepted[h]
        self.pending.clear()
        return events
