"""FastAPI over the engine: OpenAI-compatible routes, an EventSource endpoint with
resume, the scheduler whose worker thread owns the model, errors, metrics."""

from .app import create_app
from .jobs import Job, JobGroup
from .scheduler import Scheduler, SchedulerFull
from .settings import Settings

__all__ = ["Job", "JobGroup", "Scheduler", "SchedulerFull", "Settings", "create_app"]
