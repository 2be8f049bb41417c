"""The README's examples, run against the tiny random model.

Every fenced ```bash and ```python block of README.md is read here. Each shell line
that runs ``.venv/bin/tokenflow`` runs as a subprocess with this interpreter
(``-m generator.cli``, ``--model`` the tiny model's folder for the commands that load
one), pipelines included; each ``curl`` line runs against one ``tokenflow serve`` of
the tiny model on a free port; each Python block is exec'd with ``Engine.load``
loading the tiny model and ``127.0.0.1:8000`` pointing at that server. A README line
that no rule below covers fails, so a new kind of example cannot go unchecked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOKENFLOW = ".venv/bin/tokenflow"
README_URL = re.compile(r"(?:http://)?(?:localhost|127\.0\.0\.1):8000")

# What is not run, and why: every rule the README's blocks rely on is listed here.
NOT_RUN_LANGUAGES = {
    "": "an untyped block is sample output, not a command",
    "html": "runs in a browser; tests/browser drives /api/stream through EventSource",
}
NOT_RUN_LINES = {
    "make ": "make creates .venv and runs the whole suite or a server; this test runs their parts",
    "tokenflow serve": "a server runs until stopped; this test starts one itself "
                       "(`tokenflow serve --model DIR --port P`) for the curl and openai examples",
    "tokenflow sweep --ray": "needs a Ray cluster; tests/cluster runs the same sweep on a local one (make test-ray)",
}
# Subcommands that load a model, so take --model (strategies and replay load none).
MODEL_COMMANDS = ("generate", "compare", "score", "sweep")
# The prompts file the sweep examples read, written into the examples' folder.
SWEEP_PROMPTS = '{"prompt": "Write a haiku about the sea."}\n{"prompt": "Explain streaming"}\n'


def _blocks() -> list[tuple[str, int, str]]:
    """``(language, first line number, text)`` of every fenced block of the README."""
    out, lang, start, body = [], None, 0, []
    for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^```(\w*)\s*$", line)
        if fence and lang is None:
            lang, start, body = fence.group(1), n + 1, []
        elif line.startswith("```") and lang is not None:
            out.append((lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "an unclosed code fence in README.md"
    return out


def _shell_lines(start: int, text: str) -> list[tuple[int, str]]:
    """Logical lines of a shell block (``\\`` continuations joined), comments dropped."""
    out, pending, first = [], "", start
    for n, line in enumerate(text.splitlines(), start):
        if not pending:
            first = n
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    return out


def _classify(line: str) -> str:
    for prefix in NOT_RUN_LINES:
        if line.startswith(prefix) or (prefix.startswith("tokenflow") and prefix in line):
            return "skip"
    if line.startswith("curl "):
        return "curl"
    if TOKENFLOW in line:
        return "cli"
    return "unknown"


BLOCKS = _blocks()
SHELL = [(n, line, _classify(line)) for lang, start, text in BLOCKS if lang == "bash"
         for n, line in _shell_lines(start, text)]
PYTHON = [(start, text) for lang, start, text in BLOCKS if lang == "python"]


def test_every_block_is_run_or_skipped_by_a_rule():
    langs = {lang for lang, _, _ in BLOCKS}
    assert langs <= {"bash", "python", *NOT_RUN_LANGUAGES}, f"no rule for ```{langs - {'bash', 'python'}} blocks"
    unknown = [f"README.md:{n}: {line}" for n, line, kind in SHELL if kind == "unknown"]
    assert not unknown, "README lines no rule of tests/test_readme.py runs or skips:\n" + "\n".join(unknown)
    # The examples this test exists for are there.
    kinds = [kind for _, _, kind in SHELL]
    assert kinds.count("cli") >= 5 and kinds.count("curl") >= 3 and len(PYTHON) >= 2


# -- the CLI ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
            "HF_HUB_OFFLINE": "1", "TOKENFLOW_COMPILE": "0"}


def _cli_command(line: str, model_dir: Path) -> str:
    """The README line with ``.venv/bin/tokenflow SUB`` as this interpreter's CLI, and
    ``--model DIR`` right after the subcommands that load a model."""
    cli = f"{shlex.quote(sys.executable)} -m generator.cli"

    def swap(m: re.Match) -> str:
        sub = m.group(1)
        model = f" --model {shlex.quote(str(model_dir))}" if sub in MODEL_COMMANDS else ""
        return f"{cli} {sub}{model}"

    return re.sub(re.escape(TOKENFLOW) + r" (\w+)", swap, line)


CLI_LINES = [(n, line) for n, line, kind in SHELL if kind == "cli"]


def _runs_after(line: str) -> bool:
    """A line that reads what another one writes (a replay of a recording) runs after them."""
    return " replay " in line


@pytest.fixture(scope="module")
def cli_results(tiny_model_dir, tmp_path_factory, readme_server) -> dict[int, subprocess.CompletedProcess]:
    """Every CLI example run in one folder, several at a time (each pays Python's and
    torch's start-up; the server below starts meanwhile), replays after the rest."""
    workdir = tmp_path_factory.mktemp("readme")
    (workdir / "prompts.jsonl").write_text(SWEEP_PROMPTS)

    def run(item: tuple[int, str]) -> tuple[int, subprocess.CompletedProcess]:
        n, line = item
        return n, subprocess.run(["bash", "-o", "pipefail", "-c", _cli_command(line, tiny_model_dir)],
                                 cwd=workdir, env=_env(), capture_output=True, text=True, errors="replace",
                                 timeout=300)

    results: dict[int, subprocess.CompletedProcess] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for wave in ([x for x in CLI_LINES if not _runs_after(x[1])], [x for x in CLI_LINES if _runs_after(x[1])]):
            results.update(pool.map(run, wave))
    return results


@pytest.mark.parametrize("n,line", [pytest.param(n, line, id=f"README.md:{n}") for n, line in CLI_LINES])
def test_cli_example(n, line, cli_results):
    proc = cli_results[n]
    assert proc.returncode == 0, f"README.md:{n}: exit {proc.returncode}\n{line}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip(), f"README.md:{n}: no output\n{line}\n{proc.stderr[-2000:]}"
    if "--stats" in line:
        assert "[engine]" in proc.stderr and "[stats]" in proc.stderr, proc.stderr


# -- the server: curl and the openai client ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``tokenflow serve`` on the tiny model, started at once; ``url`` waits until it is ready."""

    def __init__(self, model_dir: Path):
        port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "generator.cli", "serve", "--model", str(model_dir),
                                      "--port", str(port), "--log-level", "warning"],
                                     cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._url = f"http://127.0.0.1:{port}"
        self._ready = False

    @property
    def url(self) -> str:
        deadline = time.monotonic() + 180
        while not self._ready:
            if self.proc.poll() is not None:
                pytest.fail(f"tokenflow serve exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                self._ready = httpx.get(self._url + "/health").status_code == 200
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tokenflow serve never became ready"
            time.sleep(0.2)
        return self._url

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def readme_server(tiny_model_dir):
    """One server for every curl and openai example (as the README runs it, on a free port)."""
    server = _Server(tiny_model_dir)
    try:
        yield server
    finally:
        server.stop()


def _sse(text: str) -> list[dict]:
    """SSE events as ``{"event", "data"}`` (comments dropped)."""
    events = []
    for chunk in text.replace("\r\n", "\n").strip().split("\n\n"):
        ev: dict = {}
        for line in chunk.split("\n"):
            field, _, value = line.partition(":")
            if field in ("event", "data", "id"):
                ev[field] = value[1:] if value.startswith(" ") else value
        if "data" in ev:
            events.append(ev)
    return events


def _check_shape(url: str, request: dict | None, body: str) -> None:
    """The answer has the shape the README shows for that route."""
    if "/api/stream" in url:
        events = _sse(body)
        names = [e.get("event") for e in events]
        assert names[-1] == "done" and set(names[:-1]) == {"token"}, names
        assert all("id" in e for e in events)
        assert json.loads(events[-1]["data"])["finish_reason"] in ("stop", "length")
        return
    chat = "/chat/" in url
    if request and request.get("stream"):
        events = _sse(body)
        assert events[-1]["data"] == "[DONE]"
        chunks = [json.loads(e["data"]) for e in events[:-1]]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
        if chat:
            assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        assert any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks)
    else:
        answer = json.loads(body)
        assert answer["object"] == ("chat.completion" if chat else "text_completion")
        choice = answer["choices"][0]
        assert isinstance(choice["message"]["content"] if chat else choice["text"], str)
        assert answer["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("n,line", [pytest.param(n, line, id=f"README.md:{n}")
                                    for n, line, kind in SHELL if kind == "curl"])
def test_curl_example(n, line, readme_server):
    url = readme_server.url
    args = [README_URL.sub(url, a) for a in shlex.split(line, comments=True)]
    proc = subprocess.run([*args, "-sS", "--max-time", "60", "-w", "\n%{http_code}"],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"README.md:{n}: curl exit {proc.returncode}: {proc.stderr}"
    body, _, status = proc.stdout.rpartition("\n")
    assert status == "200", f"README.md:{n}: HTTP {status}: {body[:2000]}"
    data = args[args.index("-d") + 1] if "-d" in args else None
    target = next(a for a in args[1:] if a.startswith(url))
    _check_shape(target, json.loads(data) if data else None, body)


# -- Python ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,code", [pytest.param(n, code, id=f"README.md:{n}") for n, code in PYTHON])
def test_python_example(n, code, request, tiny_model_dir, monkeypatch):
    from generator import Engine

    load = Engine.load  # bound to the class: the tiny model whatever the example asks for

    def tiny_load(cls, model=None, **options):
        return load(model=str(tiny_model_dir), **{**options, "device": "cpu"})

    monkeypatch.setattr(Engine, "load", classmethod(tiny_load))
    if README_URL.search(code):
        code = README_URL.sub(request.getfixturevalue("readme_server").url, code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{n}", "exec"), {"__name__": "readme_example"})
    assert out.getvalue().strip(), f"README.md:{n}: the example printed nothing"
