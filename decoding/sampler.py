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

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import selectors, transforms
from .params import TRANSFORM_FIELDS, ParamError, SamplingParams
from .registry import resolve
from .selectors import MirostatV2, make_generator


@dataclass
class StepOutput:
    """What one step chose, all on the logits' device.

    ``logprobs`` and ``top_logprobs`` come from the raw distribution (the model's
    log-softmax before any penalty, temperature or filter), as OpenAI and vLLM's
    default report them. ``top_ids``/``top_logprobs`` are ``[B, N]`` (most likely
    first) with ``N`` the largest ``logprobs`` any row asked for, else ``None``.
    """

    token_ids: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor  # (B,) float32
    top_ids: torch.Tensor | None = None  # (B, N) int64
    top_logprobs: torch.Tensor | None = None  # (B, N) float32


class RowState:
    """One request's decoding state: settings, random generator, token history
    (prompt + output) and the stateful selector. It outlives a ``BatchSampler``, so a
    scheduler can rebuild the batch when rows come and go (``BatchSampler.from_rows``)."""

    def __init__(self, params: SamplingParams, generator: torch.Generator | None = None,
                 prompt_ids: Sequence[int] = (), device: torch.device | str = "cpu"):
        self.params = params
        self.generator = generator if generator is not None else make_generator(params.seed, device)
        self.history: list[int] = list(prompt_ids)
        self.prompt_len = len(self.history)
        strategy = resolve(params.strategy)
        self.mirostat = (MirostatV2(params.mirostat_tau, params.mirostat_eta, device)
                         if strategy.selector == "mirostat_v2" else None)
        # (n-1)-gram -> tokens that followed it, kept up to date for no_repeat_ngram
        self.ngram_size = params.no_repeat_ngram_size
        self.ngrams: dict[tuple[int, ...], set[int]] = {}
        for end in range(self.ngram_size, len(self.history) + 1):
            self._index_ngram(end)

    @property
    def generated(self) -> int:
        """Tokens generated so far."""
        return len(self.history) - self.prompt_len

    def _index_ngram(self, end: int) -> None:
        n = self.ngram_size
        if n > 0 and end >= n:
            self.ngrams.setdefault(tuple(self.history[end - n:end - 1]), set()).add(self.history[end - 1])

    def ngram_bans(self) -> set[int]:
        n = self.ngram_size
        if n <= 0 or len(self.history) < n - 1:
            return set()
        return self.ngrams.get(tuple(self.history[len(self.history) - n + 1:]), set())

    def accept(self, token: int) -> None:
        """Record the token chosen for this row."""
        self.history.append(token)
        self._index_ngram(len(self.history))
        if self.mirostat is not None and self.mirostat.last_log2p is not None:
            self.mirostat.accept(token)


class _Group:
    """Sampled rows that share one chain (strategy, min_tokens_to_keep): the chain
    runs once over their rows with per-row parameter columns."""

    def __init__(self, rows: list[int], states: list[RowState], device):
        self.rows = rows
        self.index = torch.tensor(rows, device=device)
        first = states[rows[0]].params
        self.strategy = resolve(first.strategy)
        self.min_keep = first.min_tokens_to_keep
        self.generators = [states[i].generator for i in rows]
        self.states = [states[i] for i in rows]
        self.columns: dict[str, torch.Tensor] = {}
        for name in self.strategy.transforms:
            fname = TRANSFORM_FIELDS[name]
            values = [getattr(states[i].params, fname) for i in rows]
            off = SamplingParams.__dataclass_fields__[fname].metadata["off"]
            if any(v != off for v in values):  # else skip the transform for the whole group
                dtype = torch.long if fname == "top_k" else torch.float32
                self.columns[name] = torch.tensor(values, dtype=dtype, device=device)
        # rows with k == 0 keep everything, so only the live rows' largest k bounds the partial sort
        ks = [states[i].params.top_k for i in rows]
        self.k_max = None if 0 in ks else max(ks)
        if "xtc" in self.columns:
            self.xtc_threshold = torch.tensor([states[i].params.xtc_threshold for i in rows], device=device)
            # host-side list of the rows that draw, so a step needs no device read to know it
            xtc_rows = [j for j, i in enumerate(rows) if states[i].params.xtc_probability > 0]
            self.xtc_rows = torch.tensor(xtc_rows, device=device)
            self.xtc_generators = [self.generators[j] for j in xtc_rows]

    def run(self, logits: torch.Tensor) -> torch.Tensor:
        """The group's chain and selector over its rows' logits ``[G, V]`` -> ids ``[G]``."""
        for name in self.strategy.transforms:
            col = self.columns.get(name)
            if col is None:
                continue
            if name == "temperature":
                logits = transforms.temperature(logits, col)
            elif name == "xtc":
                # the draw comes first from each row's own generator, so it depends on that row alone
                u = torch.ones(len(self.rows), device=logits.device)
                u = u.index_copy(0, self.xtc_rows, selectors.uniform(self.xtc_generators, logits.device))
                logits = transforms.xtc(logits, col, self.xtc_threshold, u, self.min_keep)
            elif name == "top_k":
                logits = transforms.top_k(logits, col, self.min_keep, k_max=self.k_max)
            else:
                logits = getattr(transforms, name)(logits, col, self.min_keep)
        if self.strategy.selector == "mirostat_v2":
            mu = torch.stack([s.mirostat.mu for s in self.states])
            logits = transforms.mirostat_v2_truncate(logits, mu)
            for row, state in enumerate(self.states):
                state.mirostat.observe(logits[row])
        return selectors.sample(logits, self.generators)


# A fused (argmax, log-probability) for float32 CPU logits, ``logits -> (ids, logprobs)``,
# the same choice as ``selectors.argmax`` and log_softmax at it: set by the generator's
# kernel library when it loads (``generator.kernels.ops.greedy_pick``); None: PyTorch's ops.
GREEDY_PICK = None


class BatchSampler:
    """Chooses the next token for every row of a batch.

    ``BatchSampler(params, generators=None, device="cpu", prompt_ids=None, eos_token_ids=())``:
    row ``i`` uses ``params[i]``, ``generators[i]`` (``None``: a fresh one from
    ``params[i].seed``) and starts its history with ``prompt_ids[i]``. Then per step
    ``out = sampler(logits)`` with the model's logits ``[B, V]`` and
    ``sampler.accept(ids)`` with the chosen ids (host ints avoid a device read).
    """

    def __init__(
        self,
        params: list[SamplingParams],
        generators: list[torch.Generator | None] | None = None,
        device: torch.device | str = "cpu",
        prompt_ids: list[Sequence[int]] | None = None,
        eos_token_ids: Sequence[int] = (),
    ):
        generators = generators if generators is not None else [None] * len(params)
        prompt_ids = prompt_ids if prompt_ids is not None else [()] * len(params)
        if not len(params) == len(generators) == len(prompt_ids):
            raise ValueError("one generator and one prompt per row are needed")
        rows = [RowState(p, g, ids, device) for p, g, ids in zip(params, generators, prompt_ids)]
        self._setup(rows, device, eos_token_ids)

    @classmethod
    def from_rows(cls, rows: list[RowState], device: torch.device | str = "cpu",
                  eos_token_ids: Sequence[int] = ()) -> "BatchSampler":
        """A sampler over existing row states (their history and mirostat state carry on)."""
        self = cls.__new__(cls)
        self._setup(list(rows), device, eos_token_ids)
        return self

    def subset(self, keep: Sequence[int]) -> "BatchSampler":
        """A sampler over some of this one's rows, in the given order (rows left or joined)."""
        return BatchSampler.from_rows([self.rows[i] for i in keep], self.device, self.eos_token_ids)

    def _setup(self, rows: list[RowState], device, eos_token_ids: Sequence[int]) -> None:
        self.rows = rows
        self.device = device
        self.eos_token_ids = tuple(eos_token_ids)
        self.params = [r.params for r in rows]
        self.generators = [r.generator for r in rows]
        for p in self.params:
            if resolve(p.strategy).selector == "beam":
                raise ValueError("beam rows are driven by decoding.beam.BeamSearch, not BatchSampler")
        greedy = [p.is_greedy for p in self.params]
        self.all_greedy = all(greedy)
        self.greedy = torch.tensor(greedy, device=device)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, p in enumerate(self.params):
            if not greedy[i]:
                groups.setdefault((p.strategy, p.min_tokens_to_keep), []).append(i)
        self.groups = [_Group(idx, rows, device) for idx in groups.values()]
        self.top_n = max(p.logprobs for p in self.params)

        on = {name: [name in p.processors() for p in self.params] for name in
              ("logit_bias", "bad_words", "min_new_tokens", "repetition_penalty", "presence_penalty",
               "frequency_penalty", "no_repeat_ngram", "dry")}
        self.on = {name: [i for i, v in enumerate(flags) if v] for name, flags in on.items()}
        col = lambda fname: torch.tensor([getattr(p, fname) for p in self.params], device=device)  # noqa: E731
        self.repetition = col("repetition_penalty") if self.on["repetition_penalty"] else None
        self.additive = bool(self.on["presence_penalty"] or self.on["frequency_penalty"])
        self.presence, self.frequency = (col("presence_penalty"), col("frequency_penalty")) if self.additive \
            else (None, None)
        self.bias = None
        if self.on["logit_bias"]:  # fixed for the batch: index tensors built once
            rows = [i for i, p in enumerate(self.params) for _ in p.logit_bias]
            self.bias = ((torch.tensor(rows, device=device),
                          torch.tensor([t for p in self.params for t in p.logit_bias], device=device)),
                         torch.tensor([b for p in self.params for b in p.logit_bias.values()], device=device))
        self._vocab: int | None = None  # the [B, V] history tensors are built on the first call
        self._counts: torch.Tensor | None = None  # (B, V) generated-token counts
        self._seen: torch.Tensor | None = None  # (B, V) token in prompt or output

    # -- history tensors ----------------------------------------------------
    def _build_history(self, vocab: int) -> None:
        self._vocab = vocab
        for name, fname in (("logit_bias", "logit_bias"), ("bad_words", "bad_words_ids")):
            for i in self.on[name]:
                value = getattr(self.params[i], fname)
                ids = value.keys() if isinstance(value, dict) else [t for seq in value for t in seq]
                bad = [t for t in ids if t >= vocab]
                if bad:
                    raise ParamError(fname, f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if self.additive:
            self._counts = torch.zeros((len(self.rows), vocab), device=self.device)
            for i, r in enumerate(self.rows):
                out = torch.tensor(r.history[r.prompt_len:], dtype=torch.long, device=self.device)
                self._counts[i].index_add_(0, out, torch.ones(len(out), device=self.device))
        if self.repetition is not None:
            self._seen = torch.zeros((len(self.rows), vocab), dtype=torch.bool, device=self.device)
            for i, r in enumerate(self.rows):
                self._seen[i, torch.tensor(r.history, dtype=torch.long, device=self.device)] = True

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The history-aware processors every strategy applies (bias, bans, penalties)."""
        on = self.on
        if self.bias is not None:  # as transforms.logit_bias, with the indices made once
            logits = logits.index_put(self.bias[0], self.bias[1], accumulate=True)
        if on["bad_words"]:
            logits = transforms.ban_tokens(logits, [
                transforms.bad_words_bans(r.history, r.params.bad_words_ids) if i in on["bad_words"] else []
                for i, r in enumerate(self.rows)])
        if on["min_new_tokens"]:
            banned = [[] for _ in self.rows]
            for i in on["min_new_tokens"]:
                r = self.rows[i]
                if r.generated < r.params.min_new_tokens:
                    # as vLLM's min_tokens: the stop ids wait too, and EOS unless it is ignored
                    eos = () if r.params.ignore_eos else self.eos_token_ids
                    banned[i] = [*eos, *r.params.stop_token_ids]
            logits = transforms.ban_tokens(logits, banned)
        if self._seen is not None:
            logits = transforms.repetition_penalty(logits, self._seen, self.repetition)
        if self._counts is not None:
            logits = transforms.presence_frequency_penalty(logits, self._counts, self.presence, self.frequency)
        if on["no_repeat_ngram"]:
            logits = transforms.ban_tokens(logits, [r.ngram_bans() for r in self.rows])
        if on["dry"]:
            pens = [{} for _ in self.rows]
            for i in on["dry"]:
                p = self.rows[i].params
                pens[i] = transforms.dry_penalties(self.rows[i].history, p.dry_multiplier, p.dry_base,
                                                   p.dry_allowed_length, p.dry_penalty_last_n,
                                                   p.dry_sequence_breakers)
            logits = transforms.dry(logits, pens)
        return logits

    def __call__(self, logits: torch.Tensor) -> StepOutput:
        """Choose one token per row from the model's logits ``[B, V]``."""
        logits = logits.float()
        if self._vocab is None:
            self._build_history(logits.shape[-1])
        if (GREEDY_PICK is not None and self.all_greedy and self.top_n == 0 and not any(self.on.values())
                and logits.device.type == "cpu"):
            return StepOutput(*GREEDY_PICK(logits))
        raw_logprobs = logits.log_softmax(dim=-1)
        if any(self.on.values()):
            logits = self.process(logits)
        ids = selectors.argmax(logits)
        for group in self.groups:
            whole = len(group.rows) == len(self.rows)
            sampled = group.run(logits if whole else logits.index_select(0, group.index))
            ids = sampled if whole else ids.index_copy(0, group.index, sampled)
        out = StepOutput(ids, raw_logprobs.gather(-1, ids[:, None]).squeeze(-1))
        if self.top_n > 0:
            out.top_logprobs, out.top_ids = torch.topk(raw_logprobs, self.top_n, dim=-1)
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
        if self._counts is not None or self._seen is not None:
            if ids_dev is None:
                ids_dev = torch.tensor(ids, dtype=torch.long, device=self.device)
            rows = torch.arange(len(ids), device=self.device)
            if self._counts is not None:
                self._counts[rows, ids_dev] += 1
            if self._seen is not None:
                self._seen[rows, ids_dev] = True
