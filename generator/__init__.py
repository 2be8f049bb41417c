"""The engine: model loading, the hand-written generation loop, streaming events."""

from .batch import BatchGenerator
from .config import EngineConfig
from .engine import Engine
from .events import TokenEvent, TopLogprob
from .loading import ModelLoadError

__all__ = ["BatchGenerator", "Engine", "EngineConfig", "ModelLoadError", "TokenEvent", "TopLogprob"]
