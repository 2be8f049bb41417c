"""Pure decoding logic: settings, logits transforms, selectors, strategy registry.

No model and no I/O here; everything works on batched tensors ``[B, V]``.
"""

from . import selectors, transforms
from .beam import BeamSearch
from .params import ParamError, SamplingParams
from .registry import Processor, Strategy, describe, processors, register, resolve, strategies
from .sampler import BatchSampler, RowState, StepOutput
from .selectors import MirostatV2

__all__ = [
    "BatchSampler",
    "BeamSearch",
    "MirostatV2",
    "ParamError",
    "Processor",
    "RowState",
    "SamplingParams",
    "StepOutput",
    "describe",
    "processors",
    "Strategy",
    "register",
    "resolve",
    "selectors",
    "strategies",
    "transforms",
]
