"""A module imported on its first use, so that what only describes (the settings,
their flags, ``tokenflow --help``) never pays for torch.

    from .lazy import torch      # in place of ``import torch``

``torch.tensor(...)`` imports torch the first time and keeps each attribute it
looked up, so later uses cost what a module attribute costs. Only code that runs
pays: a class body or a default value that reads ``torch.X`` imports it at once.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module ``name`` until an attribute is read; then imports it."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        object.__setattr__(self, attr, value)  # found in the instance next time, no lookup
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


torch: Any = LazyModule("torch")
numpy: Any = LazyModule("numpy")
