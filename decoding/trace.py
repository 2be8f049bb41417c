"""The decision trace: why a step chose its token, per row that asked (``trace=True``).

``BatchSampler`` hands a ``TraceRecorder`` to the chain only when some row traces;
each link that runs reports ``record(link, rows, before, after)`` with the logits it
received and returned, and ``finish`` turns the step into a ``StepTrace`` (tensors on
the logits' device). ``StepTrace.to_host`` reads them all in ONE device-to-host copy
and gives each tracing row a plain dict:

    {"entropy": H, "rank": r, "prob": p, "margin": m, "logprob": lp,
     "processed_logprob": plp, "links": [{"name", "kept", "removed_mass", "logit_shift"}, ...]}

``entropy`` is the raw distribution's in nats, ``rank`` the chosen token's rank under it
(1 = most likely), ``prob`` its raw probability and ``margin`` ``prob`` minus the raw
probability of the best other token (negative when a less likely token was chosen).
Per link, in the order they ran: ``kept`` the tokens left finite, ``removed_mass`` the
probability mass (of the distribution the link received) of the tokens it removed, and
``logit_shift`` how far it moved the chosen token's logit (penalties, bias, temperature;
``None`` when the link removed the chosen token, which only a selector can undo).
``processed_logprob`` is the chosen token's log-probability after every link, the
distribution the selector drew from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .lazy import torch


@dataclass
class _LinkRecord:
    name: str
    rows: list[int] | None  # batch rows it ran over (None: all of them), in its logits' order
    kept: torch.Tensor  # (G,) finite entries after the link
    removed: torch.Tensor  # (G,) mass of the entering distribution that it removed
    before: torch.Tensor  # (G, V) what it received
    after: torch.Tensor  # (G, V) what it returned
    on: list[bool]  # per row of ``rows``: the link is switched on for that row


class TraceRecorder:
    """Collects one step's link reports (see the module docstring)."""

    def __init__(self) -> None:
        self.links: list[_LinkRecord] = []

    def record(self, link: Any, rows: list[int] | None, params: Sequence[Any],
               before: torch.Tensor, after: torch.Tensor) -> None:
        """``link`` turned ``before`` into ``after`` for ``rows`` (``params``: theirs, in order)."""
        was = torch.isfinite(before)
        now = torch.isfinite(after)
        probs = before.float().softmax(dim=-1)
        removed = (probs * (was & ~now)).sum(dim=-1)
        on = [link.is_on(p) for p in params]
        self.links.append(_LinkRecord(link.name, rows, now.sum(dim=-1), removed, before, after, on))

    def finish(self, ids: torch.Tensor, raw_logprobs: torch.Tensor, processed: torch.Tensor) -> "StepTrace":
        """The step's trace once ``ids`` (B,) are chosen; ``processed``: the selector's input (B, V)."""
        chosen = raw_logprobs.gather(-1, ids[:, None]).squeeze(-1)
        probs = raw_logprobs.exp()
        entropy = -(probs * raw_logprobs.nan_to_num(neginf=0.0)).sum(dim=-1)
        rank = (raw_logprobs > chosen[:, None]).sum(dim=-1) + 1
        top2, top2_ids = raw_logprobs.topk(min(2, raw_logprobs.shape[-1]), dim=-1)
        other = torch.where(top2_ids[:, 0] == ids, top2[:, -1], top2[:, 0])
        margin = chosen.exp() - other.exp()
        plp = processed.float().log_softmax(dim=-1).gather(-1, ids[:, None]).squeeze(-1)
        shifts = []
        for rec in self.links:
            at = ids if rec.rows is None else ids[rec.rows]
            shifts.append((rec.after.gather(-1, at[:, None]) - rec.before.gather(-1, at[:, None])).squeeze(-1))
        return StepTrace(torch.stack((entropy, rank.float(), chosen.exp(), margin, chosen, plp)),
                         self.links, shifts)


@dataclass
class StepTrace:
    """One step's trace, on the device: ``step`` (6, B) and the links' records."""

    step: torch.Tensor
    links: list[_LinkRecord] = field(default_factory=list)
    shifts: list[torch.Tensor] = field(default_factory=list)

    def to_host(self, tracing: Sequence[bool]) -> list[dict[str, Any] | None]:
        """Per row, its trace dict when ``tracing[row]``, else ``None``; one device read."""
        parts = [self.step.reshape(-1).double()]
        for rec, shift in zip(self.links, self.shifts):
            parts += [rec.kept.double(), rec.removed.double(), shift.double()]
        flat = torch.cat(parts).tolist()  # the one read
        batch = len(tracing)
        out: list[dict[str, Any] | None] = []
        for b in range(batch):
            if not tracing[b]:
                out.append(None)
                continue
            h, rank, p, margin, lp, plp = (flat[k * batch + b] for k in range(6))
            out.append({"entropy": _num(h), "rank": int(rank), "prob": _num(p), "margin": _num(margin),
                        "logprob": _num(lp), "processed_logprob": _num(plp), "links": []})
        at = 6 * batch
        for rec in self.links:
            g = len(rec.on)
            kept, removed, shift = flat[at: at + g], flat[at + g: at + 2 * g], flat[at + 2 * g: at + 3 * g]
            at += 3 * g
            for j in range(g):
                b = j if rec.rows is None else rec.rows[j]
                if out[b] is None or not rec.on[j]:
                    continue
                out[b]["links"].append({"name": rec.name, "kept": int(kept[j]), "removed_mass": _num(removed[j]),
                                        "logit_shift": _num(shift[j])})
        return out


def _num(x: float) -> float | None:
    """A finite float, else ``None`` (plain JSON has no NaN or infinity)."""
    return x if math.isfinite(x) else None
