"""Server settings: one object, filled from CLI flags or environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class Settings:
    """Everything the app needs to know that is not a request.

    ``model=None`` means the default model. ``api_key`` set makes every ``/v1``
    route require ``Authorization: Bearer <key>``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    model_name: str = "tokenflow"  # the id that /v1/models lists and requests name
    api_key: str | None = field(default_factory=lambda: os.environ.get("TOKENFLOW_API_KEY") or None)
    max_waiting: int = 64  # requests queued beyond the active ones; more gets 429
    max_active: int = 8  # generations the worker advances in turn, one token each
    retry_after_s: int = 1  # what a 429 tells the client to wait
    resume_grace_s: float = field(default_factory=lambda: _env_float("TOKENFLOW_RESUME_GRACE", 30.0))
    keepalive_s: float = 15.0  # idle time before an SSE ": ping" comment
    default_max_tokens: int = 256  # when a request names none (capped by the context)
