"""``tokenflow replay --verify RECORDING``: re-run a ``generate --record`` recording and
report the first token where the re-run differs from it, or ``identical``.

The recording's header holds what the run needs: the prompt (and its token ids), whether
it went through the chat template, the resolved engine settings (kernel tier included), the
sampling settings with the seed, the strategy chain and the engine's fingerprint
(``generator.fingerprint``). The re-run loads an engine with the same settings; where its
fingerprint differs, the report says which part moved (the weights, a setting, a version),
since then the tokens may differ without anything being wrong.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from .common import CLIError


def cmd_verify(path: str, header: dict[str, Any], events: list[dict[str, Any]]) -> int:
    """Re-run the recording; print the verdict; 0 when identical, 1 when it differs."""
    if header.get("command") != "generate" or "params" not in header or "engine" not in header:
        raise CLIError(f"{path}: --verify re-runs recordings of `tokenflow generate --record`; "
                       f"this one was made by {header.get('command', 'an unknown command')!r}")
    params = _params(path, header["params"])
    if params.seed is None and not params.is_greedy:
        raise CLIError(f"{path}: a sampled run recorded without a seed cannot be re-run exactly")
    from ..config import EngineConfig
    from ..fingerprint import engine_fingerprint, fingerprint_parts
    from .common import load_engine

    names = {f.name for f in dataclasses.fields(EngineConfig)}
    options = {k: v for k, v in header["engine"].items() if k in names}
    engine = load_engine(options)
    if engine.config.kernels != header["engine"].get("kernels"):
        print(f"tokenflow: note: recorded on kernel tier {header['engine'].get('kernels')}, "
              f"re-run on {engine.config.kernels}", file=sys.stderr)
    ids = engine.encode(header["prompt"], bool(header.get("chat")))
    if "prompt_ids" in header and ids != header["prompt_ids"]:
        print("tokenflow: note: the prompt encodes to other token ids than recorded (another tokenizer?); "
              "re-running the recorded ids", file=sys.stderr)
        ids = header["prompt_ids"]
    moved = _moved(header.get("fingerprint_parts"), fingerprint_parts(engine))
    if moved:
        print(f"tokenflow: note: fingerprint {header.get('fingerprint')} recorded, {engine_fingerprint(engine)} "
              f"now: {moved} changed", file=sys.stderr)
    recorded: dict[str, list[int]] = {}
    for ev in events:
        recorded.setdefault(str(ev.get("stream", "0")), []).append(int(ev["token_id"]))
    rerun: dict[str, list[tuple[int, str]]] = {}
    for choice, ev in engine.stream_n(ids, params):
        rerun.setdefault(str(choice), []).append((ev.token_id, ev.text))
    lines, same = [], True
    for stream in sorted(set(recorded) | set(rerun), key=lambda s: (len(s), s)):
        want, got = recorded.get(stream, []), rerun.get(stream, [])
        at = next((i for i, (a, (b, _)) in enumerate(zip(want, got)) if a != b), None)
        label = f"stream {stream}: " if len(recorded) > 1 or len(rerun) > 1 else ""
        if at is None and len(want) == len(got):
            lines.append(f"{label}identical ({len(want)} tokens)")
            continue
        same = False
        if at is None:
            at = min(len(want), len(got))
            lines.append(f"{label}differs at token {at}: the recording has {len(want)} tokens, the re-run {len(got)}")
        else:
            text = engine.tokenizer.decode([want[at]])
            lines.append(f"{label}differs at token {at}: recorded {want[at]} {text!r}, "
                         f"re-run {got[at][0]} {got[at][1]!r} (the {at} tokens before it agree)")
    print("\n".join(lines))
    return 0 if same else 1


def _params(path: str, fields: dict[str, Any]):
    from decoding import SamplingParams

    try:
        return SamplingParams(**fields)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{path}: the recorded sampling settings do not load here: {exc}") from None


def _moved(recorded: dict | None, now: dict) -> str:
    """Which parts of the fingerprint differ ('' when none, or when the recording has none)."""
    if not recorded:
        return ""
    parts = []
    if recorded.get("weights") != now["weights"]:
        parts.append("the weights")
    for group in ("config", "versions"):
        for key, value in (recorded.get(group) or {}).items():
            if now[group].get(key) != value:
                parts.append(f"{key} ({value} -> {now[group].get(key)})")
    return ", ".join(parts)
