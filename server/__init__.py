"""FastAPI over the engine: OpenAI-compatible routes, an EventSource endpoint with
resume, the scheduler whose worker thread owns the model, errors, metrics.

The names below are imported on first use (PEP 562): ``tokenflow serve --help``
reaches ``server.cli`` without FastAPI or torch."""

from importlib import import_module

_WHERE = {"create_app": ".app", "Job": ".jobs", "JobGroup": ".jobs", "Scheduler": ".scheduler",
          "SchedulerFull": ".scheduler", "Settings": ".settings"}

__all__ = ["Job", "JobGroup", "Scheduler", "SchedulerFull", "Settings", "create_app"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
