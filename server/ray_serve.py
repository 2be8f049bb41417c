"""``tokenflow serve --ray-replicas N``: the same FastAPI app, N times, as a Ray Serve
deployment behind Serve's one HTTP endpoint.

    app = deployment(settings, replicas=2)    # a bound Serve application
    serve_on_ray(settings, replicas=2)        # start Ray (or join --ray ADDRESS), run it, wait

Each replica is a Ray actor that builds the app with ``create_app(settings)`` (a
builder run on the replica, so nothing of a live app is pickled): it loads its own
engine, runs its own scheduler and keeps its own ``/metrics``; every response says
which replica answered in ``x-tokenflow-replica``. Serve's proxy passes a streaming
response through chunk by chunk, so SSE events arrive as the replica writes them, and
a client that goes away cancels the request on its replica (the stream's ``finally``
cancels the job). Ray is imported only here, only when called (``tokenflow[ray]``).
"""

from __future__ import annotations

import os
import socket
import sys
import time


class _ReplicaHeader:
    """ASGI middleware: ``x-tokenflow-replica: HOST:PID`` on every response."""

    def __init__(self, app, name: str):
        self.app, self.name = app, name.encode()

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-tokenflow-replica", self.name)]}
            await send(message)
        await self.app(scope, receive, tagged) if scope["type"] == "http" else await self.app(scope, receive, send)


def deployment(settings, replicas: int, cpus: int = 1):
    """A Serve application of ``replicas`` copies of the tokenflow app (``cpus`` each,
    the replica's torch threads)."""
    from ray import serve

    def build():
        import torch

        from .app import create_app

        torch.set_num_threads(cpus)
        app = create_app(settings)
        app.add_middleware(_ReplicaHeader, name=f"{socket.gethostname()}:{os.getpid()}")
        return app

    ingress = serve.ingress(build)(type("TokenflowReplica", (), {}))
    return serve.deployment(ingress, name="tokenflow", num_replicas=replicas,
                            ray_actor_options={"num_cpus": cpus}).bind()


def start(settings, replicas: int, address: str | None = None, cpus: int = 1, wait_ready: float = 600.0):
    """Start (or join) Ray, Serve's HTTP proxy on ``settings.host:port``, and the
    deployment; returns once every replica's model is loaded (``/health`` ok)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env=None if address else {"env_vars": {"PYTHONPATH": path}})
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(deployment(settings, replicas, cpus), name="tokenflow", route_prefix="/", blocking=False)
    _wait_healthy(settings, replicas, wait_ready)


def _wait_healthy(settings, replicas: int, timeout: float) -> None:
    """Poll ``/health`` until ``replicas`` different replicas have answered ok."""
    import httpx

    url = f"http://{settings.host if settings.host not in ('0.0.0.0', '::') else '127.0.0.1'}:{settings.port}/health"
    ready: set[str] = set()
    end = time.monotonic() + timeout
    while len(ready) < replicas:
        if time.monotonic() > end:
            raise TimeoutError(f"{len(ready)}/{replicas} replicas ready after {timeout:.0f} s")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200 and r.json().get("status") == "ready":
                ready.add(r.headers.get("x-tokenflow-replica", ""))
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)


def serve_on_ray(settings, replicas: int, address: str | None = None, cpus: int = 1) -> int:
    """``tokenflow serve --ray-replicas N``: serve until SIGINT/SIGTERM, then take the
    deployment down."""
    import signal

    from ray import serve

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        start(settings, replicas, address, cpus)
        print(f"tokenflow: {replicas} replicas on http://{settings.host}:{settings.port}", file=sys.stderr,
              flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
