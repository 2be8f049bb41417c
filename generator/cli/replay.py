"""Record a token stream with its timing, and play it back at the recorded pace.

A recording is JSON Lines: one ``header`` line (what ran), then one ``token``
line per ``TokenEvent`` with ``t``, its wall-clock offset in seconds from the
start of the recording, and ``stream``, a label (``tokenflow compare`` records
several streams into one file). This is how a streaming bug is captured once
and reproduced at will.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, TextIO

from ..events import TokenEvent
from .columns import LiveColumns
from .common import CLIError, add_model_flags

FORMAT_VERSION = 1


class RecordingError(ValueError):
    """A recording file that cannot be read; the message names the file and line."""


class StreamRecorder:
    """Writes events to a JSONL file as they happen, flushed per line so a crash
    mid-stream still leaves everything up to that token on disk."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None,
                 clock=time.perf_counter):
        self.path = path
        self._clock = clock
        self._file: TextIO = open(path, "w", encoding="utf-8")
        self.start = clock()
        head = {"type": "header", "version": FORMAT_VERSION,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        head.update(header or {})
        self._write(head)

    def _write(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()

    def event(self, ev: TokenEvent, stream: str = "0", at: float | None = None) -> None:
        """Record one event; ``at`` is its ``perf_counter`` time (default: now)."""
        t = (self._clock() if at is None else at) - self.start
        self._write({"type": "token", "t": round(t, 6), "stream": stream, **asdict(ev)})

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "StreamRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def engine_header(engine) -> dict[str, Any]:
    """What a recording says of the engine that made it: the model, its one-line
    description (weights, activations, kernel tier), the whole resolved config and the
    fingerprint of its arithmetic (``generator.fingerprint``: weights, tier, versions)."""
    from ..fingerprint import engine_fingerprint, fingerprint_parts

    return {"model": engine.name, "engine_summary": engine.describe(), "engine": engine.config.as_dict(),
            "kernels": engine.config.kernels, "fingerprint": engine_fingerprint(engine),
            "fingerprint_parts": fingerprint_parts(engine)}


def read_recording(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the token lines of a recording, tokens in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as exc:
        raise RecordingError(f"cannot read recording {path}: {exc.strerror}") from None
    header: dict[str, Any] | None = None
    events = []
    for no, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{path}:{no}: not JSON ({exc.msg})") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "header":
            header = obj
        elif kind == "token":
            if not isinstance(obj.get("t"), (int, float)) or not isinstance(obj.get("text"), str):
                raise RecordingError(f"{path}:{no}: a token line needs a number 't' and a string 'text'")
            events.append(obj)
        else:
            raise RecordingError(f"{path}:{no}: unknown line type {kind!r}")
    if header is None:
        raise RecordingError(f"{path}: no header line; is this a tokenflow recording?")
    return header, events


def replay_events(events: list[dict[str, Any]], speed: float = 1.0,
                  sleep=time.sleep, clock=time.perf_counter) -> Iterator[dict[str, Any]]:
    """Yield each recorded event when its offset (divided by ``speed``) comes due."""
    if speed <= 0:
        raise ValueError("speed must be > 0")
    start = clock()
    for ev in events:
        wait = ev["t"] / speed - (clock() - start)
        if wait > 0:
            sleep(wait)
        yield ev


def stream_texts(events: list[dict[str, Any]]) -> dict[str, str]:
    """The full text of every stream in a recording, by stream label."""
    texts: dict[str, str] = {}
    for ev in events:
        texts[ev.get("stream", "0")] = texts.get(ev.get("stream", "0"), "") + ev["text"]
    return texts


# -- `tokenflow replay` ------------------------------------------------------

def add_commands(sub) -> None:
    """Add ``tokenflow replay`` to the CLI."""
    rep = sub.add_parser("replay", help="play a recorded stream back at its recorded pace",
                         description="Play back a recording made with `--record` (generate or compare) "
                                     "at the pace it was recorded, or faster with --speed.")
    rep.add_argument("recording", help="a .jsonl file written by --record")
    rep.add_argument("--speed", type=float, default=1.0, help="play this many times faster (default 1)")
    rep.add_argument("--stream", default=None,
                     help="play only this stream (compare recordings hold one per strategy and sample)")
    rep.add_argument("--verify", action="store_true",
                     help="re-run a `generate --record` recording with its engine settings, strategy chain and "
                          "seed, and report the first token where the re-run differs, or 'identical' "
                          "(exit status 1 when it differs)")
    rep.add_argument("--fork", metavar="INDEX:TOKEN",
                     help="continue the recorded stream from its first INDEX tokens with TOKEN (an id or a "
                          "one-token text) at INDEX; loads the model (generate recordings)")
    rep.add_argument("--strategy", metavar="SPEC", help="--fork: continue with this strategy spec "
                     "(default: the recorded settings)")
    rep.add_argument("--max-new-tokens", type=int, default=None,
                     help="--fork: tokens after the fork (default: what the recording had left)")
    add_model_flags(rep)
    rep.set_defaults(func=cmd_replay)


def cmd_replay(args) -> int:
    """Play a recording to stdout (one stream) or side by side (several)."""
    if not args.speed > 0:
        raise CLIError(f"--speed must be > 0, got {args.speed}")
    try:
        header, events = read_recording(args.recording)
    except RecordingError as exc:
        raise CLIError(str(exc)) from None
    if args.verify:
        from .verify import cmd_verify

        return cmd_verify(args.recording, header, events)
    streams = list(dict.fromkeys(ev.get("stream", "0") for ev in events))
    if args.stream is not None:
        if args.stream not in streams:
            raise CLIError(f"--stream {args.stream!r} is not in the recording; it has: {', '.join(streams)}")
        events = [ev for ev in events if ev.get("stream", "0") == args.stream]
        streams = [args.stream]
    if args.fork is not None:
        if len(streams) > 1:
            raise CLIError("--fork continues one stream: choose it with --stream")
        from .research import run_fork

        return run_fork(args, header, events)
    if len(streams) <= 1:
        out = sys.stdout
        for ev in replay_events(events, args.speed):
            if ev["text"]:
                out.write(ev["text"])
                out.flush()
        out.write("\n")
        out.flush()
        return 0
    # Several streams: side by side, as compare showed them.
    labels = header.get("streams") or {}
    view = LiveColumns([labels.get(s, s) for s in streams])
    index = {s: i for i, s in enumerate(streams)}
    with view:
        for ev in replay_events(events, args.speed):
            view.append(index[ev.get("stream", "0")], ev["text"])
    return 0
