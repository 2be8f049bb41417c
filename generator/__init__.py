"""The engine: model loading, the hand-written generation loop, streaming events."""

from .engine import Engine
from .events import TokenEvent, TopLogprob
from .loading import ModelLoadError

__all__ = ["Engine", "ModelLoadError", "TokenEvent", "TopLogprob"]
