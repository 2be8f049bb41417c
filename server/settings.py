"""Server settings: one object, filled from CLI flags or environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from generator.config import EngineConfig


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass
class Settings:
    """Everything the app needs to know that is not a request.

    ``engine``: the model and how it runs (``EngineConfig``; its ``num_slots`` is
    ``max_active``, one KV-cache slot per batch row). ``api_key`` set makes every route but
    ``/health`` and the page's files require ``Authorization: Bearer <key>`` (``/metrics``
    too unless ``public_metrics``). ``allowed_hosts``: ``Host`` names accepted besides the
    loopback ones (``*``: any); ``cors_origins``: origins that browsers may call from
    (none: CORS off).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    engine: EngineConfig = field(default_factory=EngineConfig)
    model_name: str = "tokenflow"  # the id that /v1/models lists and requests name
    api_key: str | None = field(default_factory=lambda: os.environ.get("TOKENFLOW_API_KEY") or None)
    # Limits (flags of `tokenflow serve`, or these environment variables).
    max_waiting: int = field(default_factory=lambda: _env_int("TOKENFLOW_MAX_WAITING", 64))  # more gets 429
    max_active: int = field(default_factory=lambda: _env_int("TOKENFLOW_MAX_BATCH", 16))  # rows per batched step
    max_prompt_tokens: int | None = field(default_factory=lambda: _env_int("TOKENFLOW_MAX_PROMPT", 0) or None)
    max_total_tokens: int | None = field(default_factory=lambda: _env_int("TOKENFLOW_MAX_TOTAL", 0) or None)
    stall_timeout_s: float = field(default_factory=lambda: _env_float("TOKENFLOW_STALL_TIMEOUT", 30.0))
    max_outbox: int = field(default_factory=lambda: _env_int("TOKENFLOW_MAX_OUTBOX", 4096))  # unread events
    retry_after_s: int = 1  # what a 429 tells the client to wait
    resume_grace_s: float = field(default_factory=lambda: _env_float("TOKENFLOW_RESUME_GRACE", 30.0))
    keepalive_s: float = 15.0  # idle time before an SSE ": ping" comment
    default_max_tokens: int = 256  # when a request names none (capped by the context)
    # Reliability and security (server/lifecycle.py, server/guards.py).
    shutdown_grace_s: float = field(default_factory=lambda: _env_float("TOKENFLOW_SHUTDOWN_GRACE", 5.0))
    max_body_mb: float = field(default_factory=lambda: _env_float("TOKENFLOW_MAX_BODY_MB", 4.0))  # else 413
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    public_metrics: bool = False
    special_tokens_in_messages: bool = False  # chat content may hold control tokens (off: read as text)
