"""Helpers for the server tests: a real uvicorn on 127.0.0.1 in a thread, engine
wrappers that count or slow down steps, and an SSE reader."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

# A chat request body the server tests build on (add max_tokens, stream, ...).
CHAT = {"messages": [{"role": "user", "content": "Once upon a time"}], "ignore_eos": True}


class LiveServer:
    """``create_app(...)`` served by uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app, wait_ready: bool = True):
        self.app = app
        from server.transport import uvicorn_options  # what `tokenflow serve` runs

        settings = getattr(app.state, "settings", None)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                **uvicorn_options(getattr(settings, "stall_timeout_s", 30.0)))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became ready")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class StepEngine:
    """Wraps an Engine for the server's scheduler: the batches it makes count the
    tokens produced, optionally sleep per step (so a test can act mid-generation),
    and can fail a generation after some tokens (a mid-stream error)."""

    def __init__(self, engine, delay_s: float = 0.0, fail_after: int | None = None):
        self._engine = engine
        self.delay_s = delay_s
        self.fail_after = fail_after
        self.steps = 0  # tokens produced, all generations together

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def batch(self, prefill_budget=None):
        """The batch the server's scheduler drives, with the counting, delay and failure."""
        return _StepBatch(self, self._engine.batch(prefill_budget))


class _StepBatch:
    """A ``BatchGenerator`` whose steps count tokens, sleep and fail (``StepEngine``)."""

    def __init__(self, owner: StepEngine, batch):
        self._owner = owner
        self._batch = batch
        self._emitted: dict[int, int] = {}

    def __getattr__(self, name):
        return getattr(self._batch, name)

    def step(self):
        owner, out = self._owner, []
        for handle, ev in self._batch.step():
            n = self._emitted.get(handle, 0)
            self._emitted[handle] = n + 1
            if owner.fail_after is not None and n >= owner.fail_after:
                self._batch.cancel(handle)
                out.append((handle, RuntimeError("simulated device failure")))
                continue
            owner.steps += 1
            out.append((handle, ev))
        if owner.delay_s:
            time.sleep(owner.delay_s)
        return out


def sse_events(lines) -> list[dict]:
    """Parse SSE lines into ``{"event", "id", "data", "retry"}`` dicts (comments as ``{"comment"}``)."""
    out, cur = [], {}
    for line in lines:
        if line == "":
            if cur:
                out.append(cur)
                cur = {}
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            out.append({"comment": value})
        elif field == "data":
            cur["data"] = cur["data"] + "\n" + value if "data" in cur else value
        else:
            cur[field] = value
    if cur:
        out.append(cur)
    return out


def iter_sse(response):
    """Yield parsed SSE events from an httpx streaming response as they arrive."""
    cur: dict = {}
    for line in response.iter_lines():
        if line == "":
            if cur:
                yield cur
                cur = {}
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            yield {"comment": value}
        elif field == "data":
            cur["data"] = cur["data"] + "\n" + value if "data" in cur else value
        else:
            cur[field] = value
    if cur:
        yield cur


def data_json(event: dict):
    return json.loads(event["data"])


@pytest.fixture
def serve():
    """Start servers on demand (``serve(engine, **settings)``); stop them all at the end."""
    from server import Settings, create_app

    started = []

    def start(engine, **settings):
        server = LiveServer(create_app(Settings(**settings), engine=engine))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(predicate, timeout=10.0, interval=0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class FaultEngine:
    """Wraps an Engine so that the forward fails for one chosen request (fault injection):
    the request whose prompt holds token id ``marker``. ``where="prefill"`` fails the
    forward that writes its prompt; ``where="decode"`` lets the prompt in and fails every
    later decode that includes its slot. Wrap it in ``StepEngine`` to slow the steps."""

    def __init__(self, engine, marker: int, where: str = "decode"):
        self._engine = engine
        self.marker = marker
        self.where = where
        self.runner = _FaultRunner(engine.runner, self)  # one proxy: a batch keeps its runner
        self.failures = 0  # forwards that raised

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def batch(self, prefill_budget=None):
        from generator.batch import BatchGenerator

        return BatchGenerator(self, prefill_budget)


class _FaultRunner:
    def __init__(self, runner, owner: FaultEngine):
        self._runner = runner
        self._owner = owner
        self.poisoned: set[int] = set()  # slots that hold the marked prompt

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def _fail(self):
        self._owner.failures += 1
        raise RuntimeError("injected forward failure")

    def prefill_many(self, slots, id_lists, starts):
        for slot, ids in zip(slots, id_lists):
            if self._owner.marker in list(ids):
                if self._owner.where == "prefill":
                    self._fail()
                self.poisoned.add(int(slot))
        return self._runner.prefill_many(slots, id_lists, starts)

    def decode(self, slots, token_ids):
        if self._owner.where == "decode" and self.poisoned & {int(s) for s in slots}:
            self._fail()
        return self._runner.decode(slots, token_ids)

    def release(self, slots):
        self.poisoned -= {int(s) for s in slots}
        return self._runner.release(slots)


def serve_step_engine_main(model_dir: str, port: int, delay_s: float, **settings) -> None:
    """What ``tokenflow serve`` runs (signals, drain, uvicorn beside the worker), over a
    ``StepEngine`` of the model in ``model_dir`` that sleeps ``delay_s`` a step; the tests
    start it in a subprocess: ``python -c "import server_harness as h; h.serve_step_engine_main(...)"``."""
    import sys

    from generator import Engine
    from server import Settings
    from server.cli import serve

    engine = StepEngine(Engine.load(model=model_dir, device="cpu", dtype="float32"), delay_s=delay_s)
    sys.exit(serve(Settings(port=port, **settings), engine=engine, log_level="info"))


def start_step_server(model_dir, delay_s: float = 0.02, **settings):
    """A subprocess serving the tiny model with slow steps (``serve_step_engine_main``);
    returns ``(process, url)`` once ``/health`` says ready (its log: ``read_log(process)``)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(here), here,
                                                        os.environ.get("PYTHONPATH", "")])}
    code = (f"import server_harness as h; h.serve_step_engine_main({str(model_dir)!r}, {port}, {delay_s!r}, "
            f"**{settings!r})")
    # The log goes to a file, not a pipe: nobody reads a pipe while the server runs, and
    # a full one (the access log of a thousand requests) would block the server's writes.
    import tempfile

    log = tempfile.NamedTemporaryFile("w+", prefix="tokenflow-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=env)
    proc.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    if not wait_for_health(url, proc, interval=0.1):
        proc.kill()
        raise RuntimeError("the step server did not start: " + read_log(proc)[-2000:])
    return proc, url


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started as a process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc, timeout: float = 60.0, interval: float = 0.1) -> bool:
    """Wait until the server process ``proc`` at ``url`` answers ``/health`` with 200;
    False if it exits first or the timeout passes."""

    def ready():
        try:
            return httpx.get(url + "/health").status_code == 200
        except httpx.TransportError:
            return proc.poll() is not None
    return wait_until(ready, timeout=timeout, interval=interval) and proc.poll() is None


def read_log(proc) -> str:
    """What a ``start_step_server`` process has logged so far."""
    with open(proc.log_path) as f:
        return f.read()
