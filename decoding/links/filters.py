"""The strategies' own links: temperature and the truncation filters.

Each wraps the plain function of ``decoding.transforms`` of the same name. None can
change a greedy row's choice (they keep the most likely token, or act only on a
random draw), so greedy rows skip them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..lazy import torch

from .. import selectors, transforms
from .base import Batch, ColumnLink, Param


class Temperature(ColumnLink):
    name = "temperature"
    params = (Param("temperature", "float", 1.0, "divide logits by this before sampling; 0 means greedy",
                    low=0.0, off=1.0),)

    def apply(self, logits, columns):
        return transforms.temperature(logits, columns[0])


class DynamicTemperature(Temperature):
    """llama.cpp's ``temp-ext``: the temperature, dynamic when ``dynatemp_range`` > 0 (one
    link, as there, since a dynamic temperature replaces the fixed one; it shows as
    ``temperature`` in a chain and in a ``samplers`` order)."""

    params = (Temperature.params[0],
              Param("dynatemp_range", "float | None", None, "dynamic temperature: between temperature -/+ this, "
                    "by the entropy of the distribution (0 = off)", low=0.0, off=0.0),
              Param("dynatemp_exponent", "float", 1.0, "dynamic temperature: exponent of the normalised entropy",
                    low=0.0))

    def is_on(self, params):
        return params.temperature != 1.0 or params.dynatemp_range != 0.0

    def columns(self, rows, batch):
        if not any(self.is_on(r.params) for r in rows):
            return None
        t = torch.tensor([r.params.temperature for r in rows], device=batch.device)
        if all(r.params.dynatemp_range == 0 for r in rows):
            return t, None, None
        return (t, torch.tensor([r.params.dynatemp_range for r in rows], device=batch.device),
                torch.tensor([r.params.dynatemp_exponent for r in rows], device=batch.device))

    def apply(self, logits, columns):
        t, delta, exponent = columns
        if delta is None:
            return transforms.temperature(logits, t)
        return transforms.dynamic_temperature(logits, t, delta, exponent)


class QuadraticSmoothing(ColumnLink):
    name = "smoothing"
    params = (Param("smoothing_factor", "float | None", None, "quadratic sampling: logit -> top - factor x "
                    "(logit - top)^2 (0 = off)", low=0.0, off=0.0),)

    def apply(self, logits, columns):
        return transforms.quadratic_smoothing(logits, columns[0])


class TopK(ColumnLink):
    name = "top_k"
    params = (Param("top_k", "int | None", None, "keep only the k most likely tokens (0 = off)", low=0, off=0,
                    strict=False),)
    dtype = "long"

    def columns(self, rows, batch):
        cols = super().columns(rows, batch)
        if cols is None:
            return None
        # rows with k == 0 keep everything, so only the live rows' largest k bounds the partial sort
        ks = [r.params.top_k for r in rows]
        return (*cols, None if 0 in ks else max(ks))

    def apply(self, logits, columns):
        k, min_keep, k_max = columns
        return transforms.top_k(logits, k, min_keep, k_max=k_max)


class _Truncation(ColumnLink):
    """A filter whose transform is ``f(logits, column, min_tokens_to_keep)``."""

    def apply(self, logits, columns):
        return getattr(transforms, self.name)(logits, *columns)


class TopP(_Truncation):
    name = "top_p"
    params = (Param("top_p", "float | None", None,
                    "keep the smallest set of tokens with this much probability (1 = off)",
                    low=0.0, high=1.0, low_open=True, off=1.0, strict=False),)


class MinP(_Truncation):
    name = "min_p"
    params = (Param("min_p", "float | None", None, "drop tokens below min_p x the top token's probability (0 = off)",
                    low=0.0, high=1.0, off=0.0),)


class TypicalP(_Truncation):
    name = "typical_p"
    params = (Param("typical_p", "float | None", None, "locally typical sampling: keep this much mass of the "
                    "tokens closest to the entropy (1 = off)", low=0.0, high=1.0, low_open=True, off=1.0),)


class EpsilonCutoff(_Truncation):
    name = "epsilon_cutoff"
    params = (Param("epsilon_cutoff", "float | None", None, "drop tokens with probability below this (0 = off)",
                    low=0.0, high=1.0, high_open=True, off=0.0),)


class EtaCutoff(_Truncation):
    name = "eta_cutoff"
    params = (Param("eta_cutoff", "float | None", None,
                    "drop tokens below min(eta, sqrt(eta) * exp(-entropy)) (0 = off)",
                    low=0.0, high=1.0, high_open=True, off=0.0),)


class TopNSigma(_Truncation):
    name = "top_n_sigma"
    params = (Param("top_nsigma", "float | None", None, "top-n-sigma: keep tokens whose logit is within n "
                    "standard deviations of the top one (0 = off)", low=0.0, off=0.0),)


class ExcludeTopChoices(ColumnLink):
    """Exclude Top Choices. It can remove the most likely token, but only on a random
    draw, and a greedy row draws nothing: greedy rows skip it."""

    name = "xtc"
    params = (Param("xtc_probability", "float | None", None,
                    "XTC: chance per step of excluding the top choices (0 = off)", low=0.0, high=1.0, off=0.0),
              Param("xtc_threshold", "float", 0.1, "XTC: tokens at or above this probability count as top choices",
                    low=0.0, high=1.0))

    def columns(self, rows: Sequence, batch: Batch):
        cols = super().columns(rows, batch)
        if cols is None:
            return None
        threshold = torch.tensor([r.params.xtc_threshold for r in rows], device=batch.device)
        # host-side list of the rows that draw, so a step needs no device read to know it
        drawing = [j for j, r in enumerate(rows) if r.params.xtc_probability > 0]
        # the coin comes from each row's second stream: the selector's noise stays where it was
        return (*cols, threshold, torch.tensor(drawing, device=batch.device),
                [rows[j].extra_generator for j in drawing])

    def apply(self, logits, columns):
        probability, min_keep, threshold, drawing, generators = columns
        # each row draws from its own stream, so the coin depends on that row alone
        u = torch.ones(logits.shape[0], device=logits.device)
        u = u.index_copy(0, drawing, selectors.uniform(generators, logits.device))
        return transforms.xtc(logits, probability, threshold, u, min_keep)


TEMPERATURE = Temperature()
DYNAMIC_TEMPERATURE = DynamicTemperature()
SMOOTHING = QuadraticSmoothing()
TOP_K = TopK()
TOP_P = TopP()
MIN_P = MinP()
TYPICAL_P = TypicalP()
EPSILON_CUTOFF = EpsilonCutoff()
ETA_CUTOFF = EtaCutoff()
XTC = ExcludeTopChoices()
TOP_N_SIGMA = TopNSigma()
