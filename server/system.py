"""The routes about the server itself rather than a generation: ``/health``,
``/metrics`` (Prometheus text), ``/strategies`` (the decoding catalogue) and
``/v1/models``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

import decoding
from generator.fingerprint import engine_fingerprint
from generator.loading import LOAD_STAGES
from generator.model.cuda import gpu_name

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request):
    """The one model this server serves, as OpenAI lists models."""
    settings = request.app.state.settings
    return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                        "created": request.app.state.started, "owned_by": "tokenflow"}]}


@router.get("/strategies")
async def list_strategies():
    """The decoding catalogue as data (``decoding.describe()``): strategies, processors,
    and every setting a request may use with its bounds and help."""
    return JSONResponse(decoding.describe())


@router.get("/health")
async def health(request: Request):
    """``ready`` (200) once the model is loaded, with what it runs on (``device``, and ``gpu``:
    the GPU's name on CUDA) and the queue;
    ``loading`` (503, with the stage in hand and ``progress``: the share of the load's
    stages done) or ``error`` (503) before."""
    state = request.app.state
    if state.load_error is not None:
        status, code = "error", 503
    elif state.scheduler is None:
        status, code = "loading", 503
    else:
        status, code = "ready", 200
    body = {"status": status, "model": state.settings.model_name}
    if status == "loading":
        # Which of the load's stages runs, and the share of them already done.
        stage = state.loading["stage"]
        done = LOAD_STAGES.index(stage) if stage in LOAD_STAGES else 0
        body.update(stage=stage, progress=round(done / len(LOAD_STAGES), 2), detail=state.loading["detail"])
    if state.load_error is not None:
        body["error"] = state.load_error
    if state.scheduler is not None:
        engine, scheduler = state.engine, state.scheduler
        # gpu: the GPU's name on CUDA (``NVIDIA H200``), null on the CPU
        body.update(device=str(engine.device), gpu=gpu_name(engine.device),
                    dtype=str(engine.dtype).replace("torch.", ""),
                    quant=engine.quant, activations=engine.activations, context_length=engine.context_length,
                    queue_depth=scheduler.queue_depth, running=scheduler.active_count,
                    free_slots=engine.free_slots, slots=engine.runner.num_slots,
                    worker_thread=scheduler.worker_thread, engine=engine.config.as_dict(),
                    system_fingerprint=engine_fingerprint(engine))
        cache = getattr(engine, "prefix_cache", None)
        if cache is not None:  # on or off, and why (prefix_cache.py)
            body["prefix_cache"] = cache.status()
    return JSONResponse(body, status_code=code)


@router.get("/metrics")
async def metrics(request: Request):
    """Prometheus text format, the queue and batch gauges read now."""
    state = request.app.state
    return Response(state.metrics.render(state.scheduler), media_type=CONTENT_TYPE_LATEST)
