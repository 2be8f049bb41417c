"""Fixtures the server tests share: the tiny engine served by a real uvicorn on a free
loopback port (one per test module), and the official ``openai`` client pointed at it."""

from __future__ import annotations

import openai
import pytest

from server import Settings, create_app
from server_harness import LiveServer


@pytest.fixture(scope="module")
def live(tiny_engine):
    server = LiveServer(create_app(Settings(), engine=tiny_engine))
    yield server
    server.stop()


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)
