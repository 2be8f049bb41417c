"""``tokenflow``: the parser of every subcommand and the one place that turns an
error into one line and an exit status.

Subcommands: ``generate`` and ``strategies`` (generate.py), ``compare``
(compare.py), ``replay`` (replay.py), ``score`` (score.py), ``sweep`` (sweep.py), and any other package's, found through the
``tokenflow.commands`` entry point group (``serve`` from ``server``) so that
``generator`` never imports them.
"""

from __future__ import annotations

import argparse
import os
import sys

from decoding import ParamError

from . import compare, generate, replay, score, sweep
from .common import CLIError, CLIParser


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenflow`` parser with every subcommand; each sets ``func`` to run it."""
    parser = CLIParser(prog="tokenflow", description="Token-by-token generation with decoding strategies you can "
                       "see, swap and compare.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CLIParser)
    generate.add_commands(sub)
    compare.add_commands(sub)
    replay.add_commands(sub)
    score.add_commands(sub)
    sweep.add_commands(sub)
    _add_entry_point_commands(sub)
    return parser


def _add_entry_point_commands(sub) -> None:
    """Subcommands from other packages (e.g. ``serve`` from ``server``), found through
    the ``tokenflow.commands`` entry point group so ``generator`` never imports them."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="tokenflow.commands"), key=lambda e: e.name):
        try:
            add_commands = ep.load()
        except ImportError:
            continue
        add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    """Run ``tokenflow`` with ``argv`` (default: the command line); the exit status.

    A bad flag or setting is one line and 2, a model that will not load one line
    and 1, anything else one line and 1 (``TOKENFLOW_DEBUG=1`` shows the traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except (CLIError, ParamError) as exc:
        print(f"tokenflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error. Silence the final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        from ..loading import ModelLoadError

        if isinstance(exc, ModelLoadError):
            print(f"tokenflow: error: {exc}", file=sys.stderr)
            return 1
        if os.environ.get("TOKENFLOW_DEBUG"):
            raise
        print(f"tokenflow: error: {type(exc).__name__}: {exc} (set TOKENFLOW_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
