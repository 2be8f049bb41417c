"""Many generations, one model: rows over the runner's slots, advanced together.

``BatchGenerator`` owns the rows of one batch. Each request lives in its own
KV-cache slot(s) at its own position (the runner's per-row positions), so rows
of different lengths need no padding and a row can join or leave between any
two steps:

    batch = BatchGenerator(engine)
    h = batch.add(prompt_ids, params)            # queued; prefilled by step()
    for handle, event in batch.step(): ...       # one token (or more, beams) per row
    batch.cancel(h)                              # frees its slots at once

A step is: at most one prefill chunk budget for waiting rows (a long prompt
does not stall the running ones), the waiting prompts that fit written in one
forward (``runner.prefill_many``), ONE ``runner.decode`` over every running
row, ONE ``BatchSampler`` call over the sampled rows, ONE device-to-host read
of their ids and logprobs (rows with prompt-lookup drafts verify them in that same
forward: generator/speculate.py). Beam requests are rows of the same decode (their
``num_beams`` slots); ``n`` > 1 is ``add_group``: one prefill, the slot
copied to ``n`` rows, each with its own seeded generator.

Each sampled row's ``RowState`` (history, generator, mirostat state) outlives
the ``BatchSampler``, which is rebuilt only when rows join or leave; so a
row's tokens under a seed do not depend on the other rows.

One row's failure never ends its batch-mates. A row whose sampler columns
cannot be built fails in ``add_group``, alone, before it joins. Inside a step,
a failing forward is retried in halves until the row(s) that make it fail are
found, a failing sampler call is redone one row at a time (each row's
generator wound back first, so the others draw what they would have drawn),
and a beam step fails only its search: the culprit's handle comes back with
the exception instead of an event, its slots already free.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from decoding import BatchSampler, BeamSearch, ParamError, SamplingParams
from decoding.beam import BeamLinks
from decoding.sampler import RowState
from decoding.selectors import make_generator

from .detok import TextStream
from . import kernels
from .events import TokenEvent, top_logprobs
from .model.cuda import host_ints
from .model.runner import Runner
from .batch_state import Prefill as _Prefill, Row as _Row, finish_reason
from .prefix_cache import BatchPrefix
from .speculate import Speculator


class BatchGenerator:
    """The rows of one batch over an engine's runner (see the module docstring).

    ``prefill_budget``: prompt tokens prefilled per step while other rows are
    running (default: the runner's prefill chunk); with nothing running, a
    prompt is prefilled whole.
    """

    def __init__(self, engine, prefill_budget: int | None = None):
        self.engine = engine
        self.runner: Runner = engine.runner
        self.device = engine.device
        self.tokenizer = engine.tokenizer
        # the argmax + logprob of all-greedy CPU batches: the kernel door picks ours or PyTorch's
        self.greedy_pick = kernels.greedy_pick
        self.prefill_budget = int(prefill_budget or self.runner.prefill_chunk)
        self._handles = itertools.count()
        self.rows: dict[int, _Row] = {}  # insertion order is batch order
        self._prefills: list[_Prefill] = []
        self.prefix = BatchPrefix(getattr(engine, "prefix_cache", None), self.runner)  # prefix_cache.py
        self._sampler: BatchSampler | None = None
        self._sampler_rows: list[_Row] = []
        self.last_batch_size = 0  # rows in the last decode (metrics)
        self.spec = Speculator(self)  # prompt-lookup drafts (generator/speculate.py)

    # -- membership ---------------------------------------------------------
    @property
    def active(self) -> int:
        """Rows not yet finished (waiting for prefill or running)."""
        return len(self.rows)

    def slots_needed(self, params: SamplingParams, n: int = 1) -> int:
        """KV-cache slots a request takes: ``num_beams`` for beam search, else ``n``."""
        return params.num_beams if params.resolved_strategy.selector.is_beam else n

    def add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        """Queue one generation; it is prefilled by the next ``step()`` calls. Returns its handle."""
        return self.add_group(prompt_ids, [params])[0]

    def add_group(self, prompt_ids: Sequence[int], params: list[SamplingParams],
                  generated: Sequence[int] = ()) -> list[int]:
        """``len(params)`` generations of one prompt (``n`` > 1): prefilled once, the slot
        copied to every row; row ``i`` samples with ``params[i]`` (its own seed). A fork
        passes ``generated``: tokens the rows continue after as if they had drawn them
        (``RowState.resume``: same history, same noise as the stream it forks)."""
        ids = list(prompt_ids)
        if not ids:
            raise ParamError("prompt", "the prompt is empty")
        generated = [int(t) for t in generated]
        for p in params:
            self.engine.check_length(ids + generated, p)
        beam = [p.resolved_strategy.selector.is_beam for p in params]
        if any(beam) and len(params) > 1:
            raise ParamError("n", "beam search yields one sequence; use n=1 with num_beams")
        need = self.slots_needed(params[0]) if beam[0] else len(params)
        slots = self.runner.acquire(need)  # raises SlotsExhausted when the batch is full
        try:
            rows = [self._new_row(p, slots if beam[0] else [slots[i]], ids, generated) for i, p in enumerate(params)]
            if states := [r.state for r in rows if r.state is not None]:
                # The rows' sampler columns, built alone now: a row that cannot be set up
                # (an id outside the vocabulary, a value no column holds, a fork's token a
                # grammar refuses) fails here, not at the batch's next setup, where it would
                # take every other row with it; its slots go back.
                BatchSampler.from_rows(states, self.device, self.engine.eos_token_ids).prepare(
                    self.engine.model.config.vocab_size)
        except Exception:
            self.runner.release(slots)
            raise
        for row in rows:
            self.rows[row.handle] = row
        ids = ids + generated  # a fork's tokens are written like the prompt's (their KV is cached too)
        if not self.prefix.join_twin(self._prefills, ids, rows, slots):  # else: rides on a twin's prefill
            self._prefills.append(self.prefix.admit(_Prefill(ids, rows, targets=list(slots))))
        return [r.handle for r in rows]

    def _new_row(self, p: SamplingParams, row_slots: list[int], ids: list[int], generated: list[int]) -> _Row:
        text = TextStream(self.tokenizer, p.stop, p.include_stop_str_in_output, p.skip_special_tokens)
        row = _Row(next(self._handles), p, row_slots, text, self.engine.stop_ids(p))
        if p.resolved_strategy.selector.is_beam:
            row.search = BeamSearch(p.num_beams, p.max_new_tokens, sorted(row.stop_ids), p.length_penalty,
                                    p.early_stopping, self.device)
            row.slot_t = torch.tensor(row_slots, device=self.device)
            row.beam_links = BeamLinks.start(p, ids + generated, self.device, self.engine.grammars)
        else:
            row.state = RowState(p, make_generator(p.seed, self.device), ids, self.device, self.engine.grammars)
            row.state.resume(generated, self.engine.model.config.vocab_size)
        return row

    def cancel(self, handle: int) -> None:
        """Drop a row now and give its slots back (a no-op for an unknown or finished handle)."""
        row = self.rows.pop(handle, None)
        if row is None:
            return
        self.prefix.leave(row, finished=False)
        row.done = True
        for pf in self._prefills:
            if row in pf.rows:
                pf.rows.remove(row)
                if not pf.rows:  # nobody needs this prompt any more
                    self._prefills.remove(pf)
                    self.runner.release(pf.targets)
                    return
                if pf.slot in row.slots:
                    # The prompt is being written into this row's slot: keep that one until the
                    # copy to its siblings is made; release the rest now.
                    self.runner.release([s for s in row.slots if s != pf.slot])
                    return
                break
        self.runner.release(row.slots)

    def _finish(self, row: _Row) -> None:
        row.done = True
        self.rows.pop(row.handle, None)
        self.prefix.leave(row, finished=True)
        self.runner.release(row.slots)

    # -- the step -----------------------------------------------------------
    def step(self) -> list[tuple[int, TokenEvent | Exception]]:
        """Advance every row by one token: ``(handle, TokenEvent)`` pairs, in batch order.
        A beam row may yield several events at once (its settled tokens). A row that made
        the step fail yields ``(handle, exception)`` once and is gone (module docstring)."""
        failed: dict[int, Exception] = {}
        events = self._step(failed)
        for handle in failed:
            self.cancel(handle)  # its slots back now
        return events + list(failed.items())

    def _step(self, failed: dict[int, Exception]) -> list[tuple[int, TokenEvent]]:
        running = [r for r in self.rows.values() if r.ready]
        fresh = self._prefill_some(self.prefill_budget if running else None, failed)
        # One forward over every running row, each at its own position.
        logits_of: dict[int, torch.Tensor] = {}
        logits = None
        if running:
            pieces = self.spec.decode(running, failed, self._decode)
            running = [r for rows, _ in pieces for r in rows]
            logits = pieces[0][1] if len(pieces) == 1 else None
            for rows, piece in pieces:
                at = 0
                for r in rows:
                    logits_of[r.handle] = piece[at: at + len(r.slots)]
                    at += len(r.slots)
        if not running and not fresh:
            return []
        slots = [s for r in running for s in r.slots]
        for r, first in fresh:
            logits_of[r.handle] = first.expand(len(r.slots), -1)
            r.ready = True
        self.last_batch_size = len(slots) + sum(len(r.slots) for r, _ in fresh)
        rows = running + [r for r, _ in fresh]
        events: list[tuple[int, TokenEvent]] = []
        sampled = [r for r in rows if r.state is not None]
        if sampled:
            # Every row a sampled one that ran the decode: its logits are the batch's, in order
            # (no per-row slices put back together: 16 x 49152 floats, 80 us).
            whole = logits if not fresh and len(sampled) == len(running) == len(slots) else None
            events += self.spec.extend(self._sample_step(sampled, logits_of, whole, failed), failed)
        for r in rows:
            if r.search is not None:
                try:
                    events += [(r.handle, ev) for ev in self._beam_step(r, logits_of[r.handle])]
                except Exception as exc:  # noqa: BLE001 - one search's failure is its own
                    failed[r.handle] = exc
        return events

    def _decode(self, rows: list[_Row], failed: dict[int, Exception]) -> list[tuple[list[_Row], torch.Tensor]]:
        """The forward over ``rows``: ``[(rows, logits)]``. When it raises, each half is run on
        its own (the runner moves a slot's position only after a forward succeeds, so a
        retry writes the same positions), down to the row(s) that fail, which go to ``failed``."""
        if any(r.search is not None for r in rows):
            tokens = torch.cat([r.next_tokens if r.search is not None
                                else torch.tensor([r.next_token], device=self.device) for r in rows])
        else:  # sampled rows only: their ids are host ints already, one small copy
            tokens = host_ints([r.next_token for r in rows], self.device)
        try:
            return [(rows, self.runner.decode([s for r in rows for s in r.slots], tokens))]
        except Exception as exc:  # noqa: BLE001 - found and failed alone below
            if len(rows) == 1:
                failed[rows[0].handle] = exc
                return []
            half = len(rows) // 2
            return self._decode(rows[:half], failed) + self._decode(rows[half:], failed)

    def _prefill_some(self, budget: int | None, failed: dict[int, Exception]) -> list[tuple[_Row, torch.Tensor]]:
        """Write waiting prompts, at most ``budget`` tokens (``None``: all of them);
        return the rows whose prompt is complete, with the last position's logits.
        Each round writes the next chunk of every waiting prompt that fits, all in one
        forward (``runner.prefill_many``), so a burst of requests is one forward, not one each."""
        fresh = []
        while self._prefills and (budget is None or budget > 0):
            group: list[tuple[_Prefill, int]] = []
            for pf in self._prefills:
                take = len(pf.ids) - pf.written  # the runner splits it into prefill_chunk pieces
                if budget is not None:
                    if budget <= 0:
                        break
                    take = min(take, budget)
                    budget -= take
                group.append((pf, take))
            group, logits = self._prefill_group(group, failed)
            for i, (pf, take) in enumerate(group):
                pf.written += take
                if pf.written < len(pf.ids):
                    continue
                self._prefills.remove(pf)
                live = {s for r in pf.rows for s in r.slots}
                if len(pf.targets) > 1:
                    copies = [s for s in pf.targets[1:] if s in live]
                    if copies:
                        self.runner.copy_slots([pf.slot] * len(copies), copies)
                self.prefix.prompt_done(pf)
                if pf.slot not in live:  # its row was cancelled while the prompt was written
                    self.runner.release([pf.slot])
                fresh += [(r, logits[i: i + 1]) for r in pf.rows]
        return fresh

    def _prefill_group(self, group: list[tuple[_Prefill, int]], failed: dict[int, Exception]):
        """One forward writing the next chunk of each prompt of ``group``: ``(group, logits)``
        over the prompts that succeeded. When it raises, each prompt is written alone (a
        retry writes from the same start) and a prompt that fails alone fails its rows."""
        try:
            return group, self.runner.prefill_many([pf.slot for pf, _ in group],
                                                   [pf.ids[pf.written: pf.written + take] for pf, take in group],
                                                   [pf.written for pf, _ in group])
        except Exception as exc:  # noqa: BLE001 - found and failed alone below
            if len(group) == 1:
                pf = group[0][0]
                self._prefills.remove(pf)  # step() cancels its rows, which frees every target slot
                failed.update((r.handle, exc) for r in pf.rows)
                return [], None
        ok, parts = [], []
        for one in group:
            done, logits = self._prefill_group([one], failed)
            if done:
                ok += done
                parts.append(logits)
        return ok, torch.cat(parts) if parts else None

    def _sample_step(self, rows: list[_Row], logits_of: dict[int, torch.Tensor],
                     whole: torch.Tensor | None, failed: dict[int, Exception]) -> list[tuple[int, TokenEvent]]:
        # Wound back if the batch's call fails: it may have drawn for some rows already
        # (greedy rows never draw: nothing to keep for them).
        saved = [None if r.params.is_greedy else r.state.rng_state() for r in rows] \
            if len(rows) > 1 else None
        try:
            if self._sampler is None or self._sampler_rows != rows:
                # Rows joined or left: a new sampler over the same row states (history, generators).
                self._sampler = BatchSampler.from_rows([r.state for r in rows], self.device,
                                                       self.engine.eos_token_ids, greedy_pick=self.greedy_pick)
                self._sampler_rows = rows
            logits = whole if whole is not None else torch.cat([logits_of[r.handle] for r in rows])
            out = self._sampler(logits)
            # The one device-to-host read of the step: every row's chosen id and its logprob.
            host = torch.stack((out.token_ids.double(), out.logprobs.double()), 1).tolist()
        except Exception as exc:  # noqa: BLE001 - one row at a time finds the culprit
            self._sampler = None
            if saved is None:
                failed[rows[0].handle] = exc
                return []
            for r, state in zip(rows, saved):
                if state is not None:
                    r.state.set_rng_state(state)
            # A row's draw never depends on its batch-mates, so alone each draws the same token.
            events = [ev for r in rows for ev in self._sample_step([r], logits_of, None, failed)]
            self._sampler = None  # the next step builds one over the rows left
            return events
        ids = [int(t) for t, _ in host]
        self._sampler.accept(ids)
        top_ids = top_lps = None
        if out.top_ids is not None and any(r.params.logprobs > 0 for r in rows):
            # A second read, only when some request asked for alternatives: all rows at once.
            top_ids, top_lps = out.top_ids.tolist(), out.top_logprobs.tolist()
        # The decision trace: one more read, only when some row asked for it (decoding/trace.py).
        traces = out.trace.to_host(self._sampler.tracing) if out.trace is not None else [None] * len(rows)
        events = []
        for i, (r, tok, (_, lp)) in enumerate(zip(rows, ids, host)):
            top = () if top_ids is None or r.params.logprobs <= 0 else \
                top_logprobs(top_ids[i], top_lps[i], r.params.logprobs, self.tokenizer)
            delta = r.text.push(tok)
            finish = "stop" if r.state.done else \
                finish_reason(tok, r.stop_ids, r.text, r.emitted + 1 >= r.params.max_new_tokens)
            if finish:
                delta += r.text.flush()
            events.append((r.handle, TokenEvent(tok, delta, lp, r.emitted, finish, top, traces[i])))
            r.emitted += 1
            r.next_token = tok
            if finish:
                self._finish(r)
        return events

    def _beam_step(self, r: _Row, logits: torch.Tensor) -> list[TokenEvent]:
        """One beam-search step; emits the tokens every hypothesis agrees on (a token is
        shown once no later step can change it), and the rest when the search ends."""
        search = r.search
        if r.beam_links is not None:
            logits = r.beam_links.apply(logits)
        parents, tokens = search.step(logits.log_softmax(dim=-1))
        if r.beam_links is not None:
            r.beam_links.advance(parents.tolist(), tokens.tolist())
        events = []
        if not search.done:
            settled, lps = search.settled()
            for tok, lp in zip(settled[r.emitted:], lps[r.emitted:]):
                delta = r.text.push(tok)
                stopped = r.text.stopped
                events.append(TokenEvent(tok, delta, lp, r.emitted, "stop" if stopped else None))
                r.emitted += 1
                if stopped:
                    self._finish(r)
                    return events
            # Every beam holds the same number of tokens; parents stay on the device.
            self.runner.copy_slots(r.slot_t[parents], r.slots, length=self.runner.length(r.slots[0]))
            r.next_tokens = tokens
            return events
        final, lps, _ = search.best()
        if r.emitted >= len(final):  # cannot happen: the final hypothesis extends the settled prefix
            raise RuntimeError("beam search emitted more tokens than its best hypothesis")
        for i in range(r.emitted, len(final)):
            tok, last = final[i], i == len(final) - 1
            delta = r.text.push(tok)
            finish = finish_reason(tok, r.stop_ids, r.text, last) if (last or r.text.stopped) else None
            if finish:
                delta += r.text.flush()
            events.append(TokenEvent(tok, delta, lps[i], i, finish))
            if finish:
                break
        r.emitted = len(final)
        self._finish(r)
        return events
