"""The ``tokenflow`` commands: generate, compare, replay, strategies (and ``serve``, found
through the ``tokenflow.commands`` entry points)."""

from .main import main

__all__ = ["main"]
