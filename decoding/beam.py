"""Beam search for one request, step by step, with ``transformers``' semantics.

Mirrors ``GenerationMixin._beam_search`` (transformers 5.x): keep the top
``max(2, 1 + n_eos) * num_beams`` continuations, let only the best ``num_beams``
of them finish (score normalised by ``length ** length_penalty``), continue the
best ``num_beams`` unfinished ones, and stop by the same early-stopping rules.
The model and its cache stay outside: the caller forwards ``token_ids`` and
reorders its cache rows by ``parents`` after every step. ``BeamLinks`` runs the
links beam search shares with the other strategies (the grammar mask), per beam.
"""

from __future__ import annotations

from .lazy import torch

from .links.base import Batch, Link
from .registry import history
from .sampler import RowState

_NEG = -1.0e9


class BeamSearch:
    def __init__(
        self,
        num_beams: int,
        max_new_tokens: int,
        eos_token_ids: list[int] | tuple[int, ...] = (),
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        device: torch.device | str = "cpu",
    ):
        self.num_beams = num_beams
        self.max_new = max_new_tokens
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
        self.keep = max(2, 1 + len(eos_token_ids)) * num_beams
        self.top_mask = torch.arange(self.keep, device=device) < num_beams
        nb, L = num_beams, max_new_tokens
        self.running = torch.zeros((nb, L), dtype=torch.long, device=device)
        # Only beam 0 is live at first, so the first step does not pick the same token nb times.
        self.running_scores = torch.full((nb,), _NEG, device=device)
        self.running_scores[0] = 0.0
        self.running_lp = torch.zeros((nb, L), device=device)  # per-token logprobs of each beam
        self.finished = torch.zeros((nb, L), dtype=torch.long, device=device)
        self.finished_lp = torch.zeros((nb, L), device=device)
        self.finished_scores = torch.full((nb,), _NEG, device=device)
        self.finished_lens = torch.zeros((nb,), dtype=torch.long, device=device)
        self.is_finished = torch.zeros((nb,), dtype=torch.bool, device=device)
        self.improvable = True  # transformers' is_early_stop_heuristic_unsatisfied
        self.length = 0  # tokens generated so far by every running beam
        self.done = False

    def step(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance by one token. ``log_probs`` is ``[num_beams, V]`` (log-softmax of
        the running beams' logits). Returns ``(parents, token_ids)``, both
        ``[num_beams]``: row ``i`` of the next step continues old row ``parents[i]``
        with ``token_ids[i]``."""
        nb, vocab = self.num_beams, log_probs.shape[-1]
        cur = self.length
        acc = (log_probs.float() + self.running_scores[:, None]).reshape(-1)
        top_scores, top_idx = torch.topk(acc, self.keep)
        parents, tokens = top_idx // vocab, top_idx % vocab
        cand = self.running[parents].clone()
        cand[:, cur] = tokens
        cand_lp = self.running_lp[parents].clone()
        cand_lp[:, cur] = log_probs[parents, tokens].float()
        hits = torch.isin(tokens, self.eos) if self.eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        if cur + 1 >= self.max_new:
            hits = torch.ones_like(hits)

        # Next running beams: the best num_beams candidates that did not finish.
        run_scores = top_scores + hits.float() * _NEG
        nxt = torch.topk(run_scores, nb).indices
        self.running, self.running_lp = cand[nxt], cand_lp[nxt]
        self.running_scores = run_scores[nxt]
        next_parents = parents[nxt]

        # Finished hypotheses: only the top num_beams candidates may enter.
        just = hits & self.top_mask
        fin = top_scores / ((cur + 1) ** self.length_penalty)
        if self.early_stopping is True and bool(self.is_finished.all()):
            fin = fin + _NEG
        if not self.improvable:
            fin = fin + _NEG
        fin = fin + (~just).float() * _NEG
        merged_scores = torch.cat((self.finished_scores, fin))
        merged = torch.cat((self.finished, cand))
        merged_lp = torch.cat((self.finished_lp, cand_lp))
        merged_lens = torch.cat((self.finished_lens, torch.full_like(tokens, cur + 1)))
        merged_flags = torch.cat((self.is_finished, just))
        best = torch.topk(merged_scores, nb).indices
        self.finished, self.finished_scores = merged[best], merged_scores[best]
        self.finished_lp = merged_lp[best]
        self.finished_lens, self.is_finished = merged_lens[best], merged_flags[best]

        self.length = cur + 1
        self._update_done(hits)
        return next_parents, self.running[:, cur]

    def _update_done(self, hits: torch.Tensor) -> None:
        lp = self.length_penalty
        if self.early_stopping == "never" and lp > 0.0:
            best_len = self.max_new
        else:
            best_len = self.length
        best_running = self.running_scores[0] / (best_len**lp)
        all_finished = bool(self.is_finished.all())
        if all_finished:
            self.improvable = self.improvable and bool(best_running > self.finished_scores.min())
        open_beam = not (all_finished and self.early_stopping is True)
        self.done = not (self.improvable and open_beam and not bool(hits.all()))

    def settled_length(self) -> int:
        """How many leading tokens every live beam and every finished hypothesis
        still in the running agree on: they can no longer change."""
        cur = self.length
        if cur == 0:
            return 0
        live = self.running_scores > _NEG / 2
        seqs = [self.running[live, :cur]]
        lens = [cur]
        fin_len = int(self.finished_lens[self.is_finished].min()) if bool(self.is_finished.any()) else cur
        if bool(self.is_finished.any()):
            seqs.append(self.finished[self.is_finished, :cur])
        rows = torch.cat(seqs)
        n = min(min(lens), fin_len)
        if rows.shape[0] == 0 or n == 0:
            return 0
        agree = (rows[:, :n] == rows[:1, :n]).all(dim=0).long().cumprod(0)
        return int(agree.sum())

    def settled(self) -> tuple[list[int], list[float]]:
        """The settled prefix: its token ids and their logprobs."""
        n = self.settled_length()
        row = int(torch.argmax(self.running_scores))
        return self.running[row, :n].tolist(), self.running_lp[row, :n].tolist()

    def best(self) -> tuple[list[int], list[float], float]:
        """The winning hypothesis: token ids, their logprobs, normalised score."""
        n = int(self.finished_lens[0])
        return self.finished[0, :n].tolist(), self.finished_lp[0, :n].tolist(), float(self.finished_scores[0])


class BeamLinks:
    """The history links beam search runs too (the grammar mask), over one request's
    beams: a ``RowState`` per beam, so each beam has its own grammar state.

    ``BeamLinks.start(params, prompt_ids, device, grammars)`` is ``None`` when the
    request switches none of them on. Per step: ``logits = links.apply(logits)`` on the
    beams' logits ``[num_beams, V]``, then ``links.advance(parents, tokens)`` with what
    ``BeamSearch.step`` returned (host lists): each new beam forks its parent's state.
    """

    def __init__(self, rows: list[RowState], links: list[Link], device):
        self.rows = rows
        self.links = links
        self.device = device

    @classmethod
    def start(cls, params, prompt_ids, device, grammars=None) -> "BeamLinks | None":
        links = [link for link in history() if link.with_beam and link.is_on(params)]
        if not links:
            return None
        first = RowState(params, None, prompt_ids, device, grammars)
        return cls([first] + [first.clone() for _ in range(params.num_beams - 1)], links, device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        batch = Batch(self.device, logits.shape[-1])
        for link in self.links:
            columns = link.columns(self.rows, batch)  # rows change every step: built each time
            if columns is not None:
                logits = link.apply(logits, columns)
        return logits

    def advance(self, parents: list[int], tokens: list[int]) -> None:
        forked, rows = set(), []
        for p in parents:  # a parent's first child takes its state, the others a copy
            rows.append(self.rows[p].clone() if p in forked else self.rows[p])
            forked.add(p)
        for row, tok in zip(rows, tokens):
            row.accept(tok)
        self.rows = rows
