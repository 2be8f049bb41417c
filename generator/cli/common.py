"""What every ``tokenflow`` command shares: the one-line error, the parser that
raises it, the decoding and model flags, and settings read from text (strategy
specs ``name:key=value,...``, engine options ``key=value``, prompt files).

Nothing here imports torch, transformers or rich beyond ``decoding``: building
the parser (``tokenflow --help``) stays light; the commands load the rest when run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from decoding import ParamError, SamplingParams
from decoding.checks import value_from_text

from ..config import EngineConfig, add_engine_flags
from ..eval.sweep import is_sampling  # noqa: F401 - compare and generate read it from here


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class CLIParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``CLIError`` line, not usage + exit."""

    def error(self, message: str):
        raise CLIError(f"{message} (see '{self.prog} --help')")


# -- one value of a SamplingParams field, from text --------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}


def field_value(name: str, text: str) -> Any:
    """One value of ``SamplingParams`` field ``name`` from text: what a flag
    (``--top-k 50``) and a spec item (``top_k=50``) both go through.

    The field's type says how to read it: ``int``, ``float``, ``str``; ``bool``
    (true/false, 1/0, yes/no); ``bool | str`` (those or ``never``); ``none`` for a
    field that may be unset. A list field takes one element per occurrence (the
    flag or key is repeated): a token id, a text, an ``ID=BIAS`` pair for the bias
    map, ``ID,ID,...`` for one banned sequence. A bad value is a ``ParamError``
    naming the field; ``SamplingParams`` checks the bounds.
    """
    kind = str(_FIELDS[name].type)
    if _FIELDS[name].metadata.get("file"):
        return _file_or_text(name, text)
    try:
        if kind.startswith("dict[int"):
            key, sep, value = text.partition("=")
            if not sep:
                raise ValueError
            return int(key), float(value)
        if kind.startswith("tuple[tuple[int"):
            return tuple(int(part) for part in text.split(","))
        return value_from_text(kind, text)
    except ValueError:
        raise ParamError(name, f"expected {_EXPECTED.get(kind.removesuffix(' | None'), kind)}, got {text!r}") from None


def _file_or_text(name: str, text: str) -> str:
    """A schema or grammar field: the file ``text`` names, or ``text`` itself when it is
    inline (a JSON object, a grammar rule with ``:``)."""
    path = Path(text)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParamError(name, f"cannot read {text}: {exc}") from None
    if text.lstrip().startswith("{") or ":" in text:
        return text
    raise ParamError(name, f"no such file: {text}")


_EXPECTED = {
    "int": "an integer", "float": "a number", "bool": "true or false", "bool | str": "true, false or never",
    "dict[int, float]": "ID=BIAS (e.g. 42=-5.5)", "tuple[tuple[int, ...], ...]": "comma-separated token ids",
    "tuple[int, ...]": "an integer token id", "tuple[int | str, ...]": "a token id or a text",
}


def _is_list(name: str) -> bool:
    """A field given once per element (``--stop a --stop b``, ``stop=a,stop=b``)."""
    return str(_FIELDS[name].type).startswith(("tuple[", "dict["))


# -- flags ------------------------------------------------------------------------

_METAVARS = {"dict[int, float]": "ID=BIAS", "tuple[tuple[int, ...], ...]": "ID[,ID...]", "tuple[str, ...]": "TEXT",
             "tuple[int, ...]": "ID", "tuple[int | str, ...]": "ID|TEXT", "bool | str": "{true,false,never}"}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``SamplingParams`` field, help text from the field itself."""
    group = parser.add_argument_group("decoding (see `tokenflow strategies`)")
    for f in dataclasses.fields(SamplingParams):
        if f.name == "speculative":  # a command line is one request: the engine's --speculate says it
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = str(f.type)
        if kind == "bool" and f.default is True:  # on unless turned off: --no-skip-special-tokens
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default: on)")
        elif kind == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        elif f.metadata.get("file"):
            group.add_argument(flag, dest=f.name, type=_flag_type(f.name), metavar="FILE", help=help_text)
        elif _is_list(f.name) or kind in _METAVARS:
            group.add_argument(flag, dest=f.name, action="append" if _is_list(f.name) else "store",
                               type=_flag_type(f.name), metavar=_METAVARS.get(kind), help=help_text)
        else:
            shown = "the strategy's, else off" if f.default is None and "off" in f.metadata else f.default
            group.add_argument(flag, dest=f.name, type=_flag_type(f.name), default=None,
                               help=f"{help_text} (default: {shown})")


def add_constraint_flags(parser: argparse.ArgumentParser) -> None:
    """``--json-schema FILE``, ``--regex REGEX``, ``--grammar FILE`` alone (``compare``
    applies them to every strategy; ``generate`` has them among every field's flags)."""
    for name in ("json_schema", "regex", "grammar"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_flag_type(name),
                            metavar="FILE" if _FIELDS[name].metadata.get("file") else "REGEX",
                            help=_FIELDS[name].metadata["help"])


def _flag_type(name: str):
    """An argparse ``type`` for field ``name``: ``field_value``, its error the parser's one line."""
    def parse(text: str) -> Any:
        try:
            return field_value(name, text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    return parse


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """Build the validated settings from parsed flags (only the ones given)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingParams)
             if getattr(args, f.name, None) is not None}
    return _settings(given)


def _settings(given: dict[str, Any]) -> SamplingParams:
    """``SamplingParams`` from values read by ``field_value``; a map field's repeated
    ``(key, value)`` pairs become its dict (a later pair for the same key wins)."""
    for name in given:
        if str(_FIELDS[name].type).startswith("dict["):
            given[name] = dict(given[name])
    return SamplingParams(**given)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the model and how it runs: ``EngineConfig``'s, made from its fields."""
    add_engine_flags(parser)


def engine_options(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``Engine.load``'s keyword arguments from the model flags and ``extra`` (``--engine-arg``
    settings), validated here, before anything loads."""
    try:
        config = EngineConfig.from_args(args)
        return dataclasses.asdict(config.replace(**extra) if extra else config)
    except TypeError as exc:  # an --engine-arg key that is no setting
        known = ", ".join(f.name for f in dataclasses.fields(EngineConfig))
        raise CLIError(f"--engine-arg: {str(exc).rsplit(' ', 1)[-1]} is no engine setting; known: {known}") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def load_engine(options: dict[str, Any], *, verbose: bool = False, stats: bool = False):
    """``Engine.load(**options)``, saying what it does on stderr: each stage of the load
    (``-v``; on a terminal, a spinner with the stage in hand; else only a first run's
    download and conversion), then one ``[engine]`` line naming what runs (``-v``, ``--stats``)."""
    import sys

    from ..engine import Engine
    from ..loading import report

    spinner = None
    if sys.stderr.isatty():
        from rich.console import Console

        spinner = Console(stderr=True).status("loading the model", spinner="dots")
        spinner.start()

    def progress(stage: str, message: str) -> None:
        if spinner is not None:
            spinner.update(f"{stage}: {message}")
        if verbose:
            print(f"tokenflow: [{stage}] {message}", file=sys.stderr, flush=True)
        else:
            report(None, stage, message)  # the once-only stages, as every load says them

    try:
        engine = Engine.from_config(EngineConfig(**options), progress)
    finally:
        if spinner is not None:
            spinner.stop()
    if verbose or stats:
        print(f"[engine] {engine.describe()}", file=sys.stderr, flush=True)
    return engine


# -- settings from text -------------------------------------------------------------

def parse_strategy_spec(spec: str, **defaults: Any) -> SamplingParams:
    """``"sample:temperature=0.8,top_k=50"`` -> validated ``SamplingParams``.

    ``name`` alone, ``name:k=v,...`` or just ``k=v,...`` (default strategy).
    Repeat a key for list fields (``stop=a,stop=b``, ``logit_bias=42=-5``); values
    are read by ``field_value``. ``defaults`` fill fields the spec leaves out.
    Errors are ``ParamError`` naming the field.
    """
    text = spec.strip()
    if ":" in text:
        name, _, rest = text.partition(":")
    elif "=" in text:
        name, rest = "", text
    else:
        name, rest = text, ""
    name = name.strip()
    given: dict[str, Any] = {}
    if name:
        given["strategy"] = name
    elif ":" in text:
        raise ParamError("strategy", f"no strategy name before ':' in {spec!r}")
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ParamError(key or "strategy", f"expected key=value, got {item!r} in {spec!r}")
        if key not in _FIELDS:
            known = ", ".join(n for n in _FIELDS if n != "strategy")
            raise ParamError(key, f"unknown setting in {spec!r}; known: {known}")
        val = field_value(key, value.strip())
        given[key] = (*given.get(key, ()), val) if _is_list(key) else val
    merged = {**{k: v for k, v in defaults.items() if v is not None}, **given}
    return _settings(merged)


def parse_engine_args(items: list[str] | None) -> dict[str, Any]:
    """``["quant=int4", "compile=false"]`` -> ``{"quant": "int4", "compile": False}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ParamError("engine_arg", f"expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = _guess_value(value.strip())
    return out


def _guess_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_prompts_file(path: str) -> list[str]:
    """Prompts from JSON Lines: each line ``{"prompt": "..."}`` or a JSON string."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"--prompts: cannot read {path}: {exc.strerror}") from None
    prompts = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--prompts: {path}:{no}: not JSON ({exc.msg})") from None
        prompt = obj.get("prompt") if isinstance(obj, dict) else obj
        if not isinstance(prompt, str) or not prompt:
            raise CLIError(f"--prompts: {path}:{no}: expected {{\"prompt\": \"...\"}} or a JSON string")
        prompts.append(prompt)
    if not prompts:
        raise CLIError(f"--prompts: {path} has no prompts")
    return prompts
