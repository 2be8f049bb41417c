"""The engine: model loading, the hand-written generation loop, streaming events.

The names below are imported on first use (PEP 562), so that ``generator.cli`` and
``generator.config`` load without torch: ``tokenflow --help`` stays instant."""

from importlib import import_module

_WHERE = {"BatchGenerator": ".batch", "EngineConfig": ".config", "Engine": ".engine", "TokenEvent": ".events",
          "TopLogprob": ".events", "ModelLoadError": ".loading"}

__all__ = ["BatchGenerator", "Engine", "EngineConfig", "ModelLoadError", "TokenEvent", "TopLogprob"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'generator' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
