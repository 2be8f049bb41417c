"""One decoding step over a batch of rows, each with its own settings and history.

Per-request settings become per-row tensors with "off" sentinels, so one batch
mixes greedy and sampling rows; greedy rows skip the filtering and sampling work.
Rows that need their token history (penalties, bans, DRY, min-new-tokens,
mirostat) get it here: the sampler is built with each row's prompt ids and told
every chosen token through ``accept``, so the engine only does

    out = sampler(logits)          # StepOutput, all on the logits' device
    sampler.accept(host_ids)       # the ids it already read for the client
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from .lazy import torch

from .links.base import Batch, Link, LinkState
from .checks import ParamError
from .params import SamplingParams
from .registry import Strategy, history
from .selectors import ARGMAX, Selector, argmax, extra_generator, make_generator, uniform
from .trace import StepTrace, TraceRecorder

# ``logits[B, V] float32 -> (ids[B], logprobs[B])``: the same choice as ``argmax`` and
# log_softmax at it, fused (the generator's kernel library provides one).
GreedyPick = "Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]"  # by name: imports no torch


@dataclass
class StepOutput:
    """What one step chose, all on the logits' device.

    ``logprobs`` and ``top_logprobs`` come from the raw distribution (the model's
    log-softmax before any penalty, temperature or filter), as OpenAI and vLLM's
    default report them; a row with ``logprobs_mode="processed"`` gets its top
    alternatives from the distribution after the chain instead. ``top_ids``/``top_logprobs``
    are ``[B, N]`` (most likely first) with ``N`` the largest ``logprobs`` any row asked
    for, else ``None``. ``trace``: the decision trace when some row asked for one
    (``decoding.trace``; ``None`` otherwise, so nothing more is read to the host).
    """

    token_ids: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor  # (B,) float32
    top_ids: torch.Tensor | None = None  # (B, N) int64
    top_logprobs: torch.Tensor | None = None  # (B, N) float32
    trace: StepTrace | None = None


class RowState:
    """One request's decoding state: settings, random generator, token history
    (prompt + output) and the state of each stateful link and selector it runs
    (``states``, by link). It outlives a ``BatchSampler``, so a scheduler can rebuild
    the batch when rows come and go (``BatchSampler.from_rows``). ``grammars``: the
    tokenizer's ``links.grammar.Grammars``, needed by a row with a constraint."""

    def __init__(self, params: SamplingParams, generator: torch.Generator | None = None,
                 prompt_ids: Sequence[int] = (), device: torch.device | str = "cpu", grammars=None):
        self.params = params
        self.generator = generator if generator is not None else make_generator(params.seed, device)
        self._extra: torch.Generator | None = None  # made on first use
        self.history: list[int] = list(prompt_ids)
        self.prompt_len = len(self.history)
        strategy = params.resolved_strategy
        self.states: dict[Link | Selector, LinkState] = {}
        for link in (*history(), *strategy.links):
            state = link.new_state(params, self.history, grammars)
            if state is not None:
                self.states[link] = state
        state = strategy.selector.new_state(params, device)
        if state is not None:
            self.states[strategy.selector] = state

    @property
    def generated(self) -> int:
        """Tokens generated so far."""
        return len(self.history) - self.prompt_len

    @property
    def extra_generator(self) -> torch.Generator:
        """The row's second stream, for draws besides the selector's noise (XTC's coin): seeded
        from the same seed, so the main stream draws the same noise each step whatever the
        chain (common random numbers, ``decoding.selectors.extra_generator``)."""
        if self._extra is None:
            self._extra = extra_generator(self.generator)
        return self._extra

    def rng_state(self) -> tuple:
        """Both streams' states (a failed batch call winds them back)."""
        return self.generator.get_state(), None if self._extra is None else self._extra.get_state()

    def set_rng_state(self, state: tuple) -> None:
        main, extra = state
        self.generator.set_state(main)
        if extra is not None:
            self.extra_generator.set_state(extra)

    def clone(self) -> "RowState":
        """A fork (a beam's): its own history and link states, the same settings and generator."""
        other = copy.copy(self)
        other.history = list(self.history)
        other.states = {owner: state.clone() for owner, state in self.states.items()}
        return other

    @property
    def done(self) -> bool:
        """A state says the row must end now (its grammar is complete)."""
        return any(getattr(state, "done", False) for state in self.states.values())

    def resume(self, generated: Sequence[int], vocab: int) -> None:
        """Continue as if this row had already generated ``generated`` (a fork): each token is
        accepted (penalties, DRY, a grammar see it as output) and the row's streams skip
        what each of those steps drew, the ``vocab`` noise numbers of a sampled step (and
        XTC's coin), so the next token gets the noise the original stream drew there.
        Mirostat's running ``mu`` starts afresh (it learned from logits a fork does not
        recompute)."""
        sampled = not self.params.is_greedy
        coin = sampled and (self.params.xtc_probability or 0) > 0
        scratch = torch.empty(vocab, device=self.generator.device) if sampled else None
        for i, token in enumerate(generated):
            if sampled:
                scratch.exponential_(generator=self.generator)
            if coin:
                uniform([self.extra_generator], self.generator.device)
            self.accept(int(token))
            for state in self.states.values():
                if why := getattr(state, "error", None):  # a grammar refuses the fork's token
                    raise ParamError("generated", f"token {int(token)} at {i} is refused by the constraint: {why}")

    def accept(self, token: int) -> None:
        """Record the token chosen for this row."""
        self.history.append(token)
        for state in self.states.values():
            state.accept(token)


class _Group:
    """Rows that share one chain (strategy, min_tokens_to_keep, greedy or not): the
    chain runs once over their rows with per-row columns. Greedy rows run only the
    links that can change the argmax, then take it."""

    def __init__(self, rows: list[int], states: list[RowState], strategy: Strategy, greedy: bool, device):
        self.rows = rows
        self.index = torch.tensor(rows, device=device)
        self.states = [states[i] for i in rows]
        links = self.states[0].params.links  # the group's rows share their order (samplers)
        self.links = tuple(link for link in links if link.changes_argmax or not greedy)
        self.selector = ARGMAX if greedy else strategy.selector
        self.chain: list[tuple[Link, object]] | None = None  # (link, columns), built on the first step

    def build(self, batch: Batch) -> None:
        """The rows' columns, once; links off for every row of the group drop out."""
        chain = [(link, link.columns(self.states, batch)) for link in self.links]
        self.chain = [(link, cols) for link, cols in chain if cols is not None]
        self.selector_columns = self.selector.columns(self.states, batch)

    def run(self, logits: torch.Tensor, recorder: TraceRecorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's chain and selector over its rows' logits ``[G, V]`` -> ids ``[G]``,
        and the logits the selector received (what "processed" means)."""
        for link, cols in self.chain:
            before = logits
            logits = link.apply(logits, cols)
            if recorder is not None:
                recorder.record(link, self.rows, [s.params for s in self.states], before, logits)
        return self.selector.select(logits, self.selector_columns), logits


class BatchSampler:
    """Chooses the next token for every row of a batch.

    ``BatchSampler(params, generators=None, device="cpu", prompt_ids=None, eos_token_ids=(),
    greedy_pick=None, grammars=None)``: row ``i`` uses ``params[i]``, ``generators[i]``
    (``None``: a fresh one from ``params[i].seed``) and starts its history with
    ``prompt_ids[i]``; ``grammars`` compiles the rows' constraints (``RowState``). Then per
    step ``out = sampler(logits)`` with the model's logits ``[B, V]`` and
    ``sampler.accept(ids)`` with the chosen ids (host ints avoid a device read).
    ``greedy_pick`` (a ``GreedyPick``) serves batches of plain greedy CPU rows in one op.
    """

    def __init__(
        self,
        params: list[SamplingParams],
        generators: list[torch.Generator | None] | None = None,
        device: torch.device | str = "cpu",
        prompt_ids: list[Sequence[int]] | None = None,
        eos_token_ids: Sequence[int] = (),
        greedy_pick: GreedyPick | None = None,
        grammars=None,
    ):
        generators = generators if generators is not None else [None] * len(params)
        prompt_ids = prompt_ids if prompt_ids is not None else [()] * len(params)
        if not len(params) == len(generators) == len(prompt_ids):
            raise ValueError("one generator and one prompt per row are needed")
        rows = [RowState(p, g, ids, device, grammars) for p, g, ids in zip(params, generators, prompt_ids)]
        self._setup(rows, device, eos_token_ids, greedy_pick)

    @classmethod
    def from_rows(cls, rows: list[RowState], device: torch.device | str = "cpu",
                  eos_token_ids: Sequence[int] = (), greedy_pick: GreedyPick | None = None) -> "BatchSampler":
        """A sampler over existing row states (their history and link states carry on)."""
        self = cls.__new__(cls)
        self._setup(list(rows), device, eos_token_ids, greedy_pick)
        return self

    def subset(self, keep: Sequence[int]) -> "BatchSampler":
        """A sampler over some of this one's rows, in the given order (rows left or joined)."""
        return BatchSampler.from_rows([self.rows[i] for i in keep], self.device, self.eos_token_ids,
                                      self.greedy_pick)

    def _setup(self, rows: list[RowState], device, eos_token_ids: Sequence[int],
               greedy_pick: GreedyPick | None) -> None:
        self.rows = rows
        self.device = device
        self.eos_token_ids = tuple(eos_token_ids)
        self.greedy_pick = greedy_pick
        self.params = [r.params for r in rows]
        self.generators = [r.generator for r in rows]
        strategies = [p.resolved_strategy for p in self.params]
        if any(s.selector.is_beam for s in strategies):
            raise ValueError("beam rows are driven by decoding.beam.BeamSearch, not BatchSampler")
        greedy = [p.is_greedy for p in self.params]
        self.all_greedy = all(greedy)
        groups: dict[tuple, list[int]] = {}
        for i, (p, s) in enumerate(zip(self.params, strategies)):
            # greedy rows skip the links that cannot change the argmax: most strategies, all of them
            if not greedy[i] or any(link.changes_argmax for link in p.links):
                groups.setdefault((p.strategy, p.min_tokens_to_keep, greedy[i], p.samplers), []).append(i)
        self.groups = [_Group(idx, rows, strategies[idx[0]], key[2], device) for key, idx in groups.items()]
        self.top_n = max(p.logprobs for p in self.params)
        self.tracing = [p.trace for p in self.params]
        self.any_tracing = any(self.tracing)
        # rows whose top alternatives come from the processed distribution (a [B] mask, or None)
        processed = [p.logprobs > 0 and p.logprobs_mode == "processed" for p in self.params]
        self.processed_top = torch.tensor(processed, device=device)[:, None] if any(processed) else None
        # the history links some row switches on, in their order; every row runs them
        self.history = [link for link in history() if any(link.is_on(p) for p in self.params)]
        self._history_chain: list[tuple[Link, object]] | None = None  # built on the first call (needs V)
        # Rows that alone would take the all-greedy fast path: in a mixed batch they keep its
        # id and log-probability, so a row reports the same bits whatever shares the batch.
        in_group = {i for g in self.groups for i in g.rows}
        plain = [i for i, p in enumerate(self.params) if greedy[i] and i not in in_group and p.logprobs == 0
                 and not any(link.is_on(p) for link in self.history)]
        self.plain_greedy = torch.tensor(plain, dtype=torch.long, device=device) if plain else None

    def prepare(self, vocab: int) -> None:
        """Build every row's columns now, for a vocabulary of ``vocab`` (else the first call
        does): a row that cannot be set up raises here (a scheduler checks a row this way,
        alone, before it joins a batch)."""
        self._build(vocab)

    def _build(self, vocab: int) -> None:
        batch = Batch(self.device, vocab, self.eos_token_ids)
        self._history_chain = [(link, link.columns(self.rows, batch)) for link in self.history]
        self._tracking = [(link, cols) for link, cols in self._history_chain if link.tracks_output]
        for group in self.groups:
            group.build(batch)

    def process(self, logits: torch.Tensor, recorder: TraceRecorder | None = None) -> torch.Tensor:
        """The history links every strategy applies (bias, bans, penalties, DRY)."""
        if self._history_chain is None:
            self._build(logits.shape[-1])
        for link, cols in self._history_chain:
            before = logits
            logits = link.apply(logits, cols)
            if recorder is not None:
                recorder.record(link, None, self.params, before, logits)
        return logits

    def __call__(self, logits: torch.Tensor) -> StepOutput:
        """Choose one token per row from the model's logits ``[B, V]``."""
        logits = logits.float()
        if self._history_chain is None:
            self._build(logits.shape[-1])
        if (self.greedy_pick is not None and self.all_greedy and self.top_n == 0 and not self.history
                and not self.groups and not self.any_tracing and logits.device.type == "cpu"):
            return StepOutput(*self.greedy_pick(logits))
        raw, raw_logprobs = logits, logits.log_softmax(dim=-1)
        recorder = TraceRecorder() if self.any_tracing else None
        logits = self.process(logits, recorder)
        processed = logits  # (B, V) each row's selector input, assembled only when someone reads it
        keep = self.any_tracing or self.processed_top is not None
        ids = argmax(logits)
        for group in self.groups:
            whole = len(group.rows) == len(self.rows)
            sampled, final = group.run(logits if whole else logits.index_select(0, group.index), recorder)
            ids = sampled if whole else ids.index_copy(0, group.index, sampled)
            if keep:
                processed = final if whole else processed.index_copy(0, group.index, final)
        out = StepOutput(ids, raw_logprobs.gather(-1, ids[:, None]).squeeze(-1))
        if self.greedy_pick is not None and self.plain_greedy is not None and raw.device.type == "cpu":
            # The fast path's own arithmetic for its rows (its log-probability may differ from
            # log_softmax's in the last bit; the id is torch.argmax's either way).
            plain_ids, plain_lp = self.greedy_pick(raw.index_select(0, self.plain_greedy))
            out.token_ids = ids.index_copy(0, self.plain_greedy, plain_ids)
            out.logprobs = out.logprobs.index_copy(0, self.plain_greedy, plain_lp)
        if self.top_n > 0:
            source = raw_logprobs
            if self.processed_top is not None:
                source = torch.where(self.processed_top, processed.float().log_softmax(dim=-1), raw_logprobs)
            out.top_logprobs, out.top_ids = torch.topk(source, self.top_n, dim=-1)
        if recorder is not None:
            out.trace = recorder.finish(ids, raw_logprobs, processed)
        return out

    def accept(self, token_ids: Sequence[int] | torch.Tensor) -> None:
        """Tell every row which token it got this step (``[B]``, in row order)."""
        if isinstance(token_ids, torch.Tensor):
            ids_dev = token_ids.to(self.device)
            ids = token_ids.tolist()  # a device read; pass host ints to avoid it
        else:
            ids = [int(t) for t in token_ids]
            ids_dev = None
        if len(ids) != len(self.rows):
            raise ValueError(f"accept() needs one token per row ({len(self.rows)}), got {len(ids)}")
        for row, tok in zip(self.rows, ids):
            row.accept(tok)
        if self._history_chain is not None and self._tracking:  # before the first step: built from history
            if ids_dev is None:
                ids_dev = torch.tensor(ids, dtype=torch.long, device=self.device)
            for link, cols in self._tracking:
                link.advance(cols, ids_dev)
