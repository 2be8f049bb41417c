"""Pure decoding logic: settings, logits transforms, selectors, strategy registry.

No model and no I/O here; everything works on batched tensors ``[B, V]``.
"""

from . import selectors, transforms
from .beam import BeamSearch
from .params import ParamError, SamplingParams
from .registry import Strategy, register, resolve, strategies
from .sampler import BatchSampler, StepOutput

__all__ = [
    "BatchSampler",
    "BeamSearch",
    "ParamError",
    "SamplingParams",
    "StepOutput",
    "Strategy",
    "register",
    "resolve",
    "selectors",
    "strategies",
    "transforms",
]
