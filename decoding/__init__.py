"""Pure decoding logic: settings, links, selectors, strategy registry.

No model and no I/O here; everything works on batched tensors ``[B, V]``.
"""

from . import selectors, transforms
from .beam import BeamSearch
from .checks import ParamError
from .links.base import Link, Param
from .params import SamplingParams
from .registry import Processor, Strategy, history, processors, register, register_history, resolve, strategies
from .sampler import BatchSampler, RowState, StepOutput
from .schema import describe
from .selectors import MirostatV2, Selector

__all__ = [
    "BatchSampler",
    "BeamSearch",
    "Link",
    "MirostatV2",
    "Param",
    "ParamError",
    "Processor",
    "RowState",
    "SamplingParams",
    "Selector",
    "StepOutput",
    "describe",
    "history",
    "processors",
    "Strategy",
    "register",
    "register_history",
    "resolve",
    "selectors",
    "strategies",
    "transforms",
]
