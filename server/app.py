"""The FastAPI app: state built in ``lifespan``, the model loaded in the background
(``/health`` says ``loading`` and ``/v1`` answers 503 until it is ready)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import system, tokens
from .errors import install_error_handlers
from .guards import ApiKey, BodyLimit, HostCheck, redact_access_log
from .lifecycle import Drain, Lifecycle
from .metrics import Metrics, RequestMetrics
from .openai.routes import v1
from .openapi import install_openapi
from .scheduler import Scheduler, WorkerHost
from .settings import Settings
from .resume import StreamStore
from .web.routes import install_web

log = logging.getLogger("tokenflow.server")


def create_app(settings: Settings | None = None, engine=None, host: WorkerHost | None = None) -> FastAPI:
    """The app. Pass ``engine`` to serve an already loaded ``generator.Engine``
    (tests do); otherwise the lifespan loads ``settings.engine`` in a thread. The
    scheduler's worker loop runs on ``host``'s thread if given, else on its own thread."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        state.streams = StreamStore(settings.resume_grace_s)
        state.lifecycle.bind(asyncio.get_running_loop())
        loader = asyncio.create_task(_load(app, engine))
        try:
            yield
        finally:
            loader.cancel()
            state.streams.close_all()
            if state.scheduler is not None:
                await asyncio.to_thread(state.scheduler.stop)

    app = FastAPI(title="tokenflow", version="0.1.0", lifespan=lifespan,
                  description="Token-by-token generation, OpenAI-compatible SSE streaming.")
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.engine = None
    app.state.scheduler = None
    app.state.load_error = None
    app.state.loading = {"stage": "starting", "detail": "starting the loader"}  # the load's stage, for /health
    app.state.started = int(time.time())
    app.state.worker_host = host
    app.state.lifecycle = Lifecycle(settings.shutdown_grace_s)
    install_error_handlers(app)
    app.include_router(v1)  # the OpenAI routes
    app.include_router(system.router)  # /health, /metrics, /strategies, /v1/models
    app.include_router(tokens.router)  # /tokenize, /detokenize, /tokenizer_info
    install_web(app)  # GET / (the page), /static, /api/stream and its cancel
    install_openapi(app)  # /openapi.json as the server answers: 400s, not 422s
    # Middlewares, innermost first: each of these answers before a route runs.
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 1e6))
    app.add_middleware(ApiKey, key=settings.api_key, public_metrics=settings.public_metrics)
    if settings.cors_origins:  # off unless asked for: outside the key check, so preflights pass
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(Drain, lifecycle=app.state.lifecycle)
    app.add_middleware(HostCheck, bind_host=settings.host, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    redact_access_log()
    return app


async def _load(app: FastAPI, engine) -> None:
    """Load the model off the event loop, then start the worker that owns it."""
    settings, state = app.state.settings, app.state
    try:
        if engine is None:
            from generator import Engine
            from generator.fingerprint import engine_fingerprint

            # One KV-cache slot per batch row (beams and n > 1 take several).
            config = settings.engine.replace(num_slots=settings.max_active)
            log.info("loading model %s", config.model or "(default)")

            def progress(stage: str, message: str) -> None:  # on the loading thread; /health reads it
                state.loading = {"stage": stage, "detail": message}
                log.info("loading [%s] %s", stage, message)

            def load():
                loaded = Engine.from_config(config, progress)
                engine_fingerprint(loaded)  # hashes the weights once, here rather than in a request
                return loaded

            host = state.worker_host  # all torch work on one thread: see WorkerHost
            engine = await (asyncio.wrap_future(host.submit(load)) if host is not None else asyncio.to_thread(load))
        scheduler = Scheduler(engine, settings.max_waiting, settings.max_active, observer=state.metrics.observe,
                              stall_timeout_s=settings.stall_timeout_s, max_outbox=settings.max_outbox)
        scheduler.start(state.worker_host)
        state.engine = engine
        state.scheduler = scheduler
        log.info("model ready: %s", engine.describe())
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported by /health and as 503, never a traceback
        log.error("model load failed: %s: %s", type(exc).__name__, exc)
        state.load_error = f"{type(exc).__name__}: {exc}"

