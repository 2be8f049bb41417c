"""A sweep's cells fanned out to Ray actors: ``tokenflow sweep --ray [ADDRESS]``.

    connect(address)                                    # local Ray in this process, or a cluster
    fan = RayFanOut(engine_options, prompts, workers=2)  # each actor loads the engine once
    for row in fan.rows(chunks): ...                     # rows stream back as cells finish

Ray is imported here only, and only when called: the core, ``--help`` and a sweep
without ``--ray`` never import it (``pip install 'tokenflow[ray]'`` adds it).

Actors, not Ray Data: a worker is state (a loaded model, built kernels, a KV cache)
that many cells reuse, and a cell is a row of the worker's ``BatchGenerator``, not a
record of a table; an actor method that is a generator streams each row back the
moment its cell ends (Ray's streaming generators), where a Data pipeline hands
results over in blocks. Each actor runs one chunk at a time (``sweep.run_cells``,
the code the in-process sweep runs), so a chunk gives the same rows wherever it
runs. An actor that dies loses its chunk's unfinished cells only: they go back to
the queue for the others; with none left the run stops and a rerun finishes them.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .sweep import Cell, run_cells


class RayError(RuntimeError):
    """Ray is missing, unreachable, or lost every worker: one line for the user."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'tokenflow[ray]'") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) that answers a TCP connect, else ``RayError``."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--ray {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayError(f"--ray {address}: cannot reach a Ray cluster there ({exc.strerror or exc})") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster at ``address`` (``auto``: the one this machine runs) or start a
    local one in this process (``None``); a no-op when Ray is already up. Returns
    ``ray.cluster_resources()``."""
    ray = _ray()
    if not ray.is_initialized():
        if address and address != "auto":
            _reachable(address)
        # Local workers find tokenflow where this process does (an uninstalled checkout too).
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False,
                     runtime_env=None if address else {"env_vars": {"PYTHONPATH": path}})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayError(f"--ray {address or '(local)'}: {exc}".splitlines()[0]) from None
    return ray.cluster_resources()


class SweepWorker:
    """A Ray actor's body: one engine, loaded once, running chunks of cells."""

    def __init__(self, engine_options: dict[str, Any], prompts: Sequence[str], chat: bool, threads: int):
        import torch

        from ..config import EngineConfig
        from ..engine import Engine

        torch.set_num_threads(threads)
        self.engine = Engine.from_config(EngineConfig(**engine_options), lambda stage, msg: None)
        self.prompts = list(prompts)
        self.chat = chat
        self.name = f"ray:{socket.gethostname()}:{os.getpid()}"

    def fingerprint(self) -> str:
        from ..fingerprint import engine_fingerprint

        return engine_fingerprint(self.engine)

    def run(self, cells: list[Cell]) -> Iterator[dict[str, Any]]:
        yield from run_cells(self.engine, cells, self.prompts, chat=self.chat, worker=self.name)


class RayFanOut:
    """``workers`` ``SweepWorker`` actors (``cpus`` each; the engine's threads) and the
    driver's side: chunks out, rows back as they finish."""

    def __init__(self, engine_options: dict[str, Any], prompts: Sequence[str], *, workers: int | None = None,
                 cpus: int = 1, chat: bool = False):
        ray = _ray()
        self.ray = ray
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        actor = ray.remote(num_cpus=cpus, max_restarts=0)(SweepWorker)
        self.actors = [actor.remote(engine_options, list(prompts), chat, cpus) for _ in range(workers)]
        try:
            self.fingerprints = ray.get([a.fingerprint.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            raise RayError(f"a Ray worker could not load the engine: {str(exc).splitlines()[-1]}") from None
        if len(set(self.fingerprints)) > 1:
            raise RayError(f"the Ray workers loaded different weights or kernels: {sorted(set(self.fingerprints))}")

    @property
    def fingerprint(self) -> str:
        return self.fingerprints[0]

    def rows(self, chunks: Sequence[list[Cell]]) -> Iterator[dict[str, Any]]:
        """Every chunk's rows, each as its cell finishes, whichever actor runs it."""
        ray = self.ray
        queue = deque(chunks)
        idle = list(self.actors)
        running: dict[Any, tuple[Any, list[Cell], set[str]]] = {}  # stream -> (actor, chunk, keys seen)

        def submit():
            while idle and queue:
                actor, chunk = idle.pop(), queue.popleft()
                running[actor.run.options(num_returns="streaming").remote(chunk)] = (actor, chunk, set())

        submit()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            stream = ready[0]
            actor, chunk, seen = running[stream]
            try:
                row = ray.get(next(stream))
            except StopIteration:
                del running[stream]
                idle.append(actor)
                submit()
                continue
            except ray.exceptions.RayError:
                # The actor died: its chunk's unfinished cells go back for the others.
                del running[stream]
                self.actors.remove(actor)
                lost = [c for c in chunk if c.key not in seen]
                if lost:
                    queue.appendleft(lost)
                if not self.actors:
                    left = sum(len(c) for c in queue)
                    raise RayError(f"every Ray worker died; {left} cells not run (run the same command "
                                   "again: the finished ones are kept)") from None
                submit()
                continue
            seen.add(row["key"])
            yield row

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
