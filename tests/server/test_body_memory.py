"""Memory after big bodies, against a real server process (its RSS from /proc): bodies
over the cap (``--max-body-mb``, 4 by default) are answered 413 without holding memory,
and prompts just under it are refused by their bytes (never tokenized), holding none either. Prints its
figures (``-s`` shows them). ``make test-reliability``."""

from __future__ import annotations

import time

import httpx
import pytest

from server_harness import start_step_server

pytestmark = pytest.mark.reliability

MB = 1_000_000


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_rss_after_bodies_over_and_just_under_the_cap(tiny_model_dir):
    proc, url = start_step_server(tiny_model_dir, delay_s=0.0)  # the default 4 MB cap
    try:
        with httpx.Client(timeout=120) as client:
            assert client.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 1}).status_code == 200
            time.sleep(1)
            before = _rss_mb(proc.pid)

            # Ten 10 MB bodies: five with a Content-Length (refused from the header), five
            # chunked (refused once 4 MB have arrived).
            big = b'{"prompt": "' + b"x" * (10 * MB) + b'", "max_tokens": 1}'

            def chunks():
                for at in range(0, len(big), 64 * 1024):
                    yield big[at:at + 64 * 1024]
            for i in range(10):
                res = client.post(url + "/v1/completions", content=big if i % 2 == 0 else chunks(),
                                  headers={"content-type": "application/json"})
                assert res.status_code == 413 and res.json()["error"]["code"] == "body_too_large", res.text[:200]
            time.sleep(2)  # settle; no gc asked for
            after_bodies = _rss_mb(proc.pid)

            # Ten prompts just under the cap: ~3 MB of text, 1.5 M tokens of the tiny tokenizer,
            # far over its 256-token context: refused by their bytes, before tokenizing.
            text = "Once upon a time there was a small model. " * (3 * MB // 43)
            per_prompt = []
            for _ in range(10):
                res = client.post(url + "/v1/completions", json={"prompt": text, "max_tokens": 1})
                assert res.status_code == 400 and res.json()["error"]["code"] == "context_length_exceeded", \
                    res.text[:200]
                assert "at least" in res.json()["error"]["message"]  # the floor answered, not the tokenizer
                per_prompt.append(_rss_mb(proc.pid))
            time.sleep(3)  # settle; no gc asked for
            after_prompts = _rss_mb(proc.pid)
            assert client.get(url + "/health").status_code == 200
            assert client.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 1}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\nRSS: {before:.0f} MB before, {after_bodies:.0f} MB after ten 10 MB bodies (413), "
          f"{after_prompts:.0f} MB after ten 3 MB prompts; after each prompt {[round(r) for r in per_prompt]}")
    # A refused body holds nothing: observed +0 MB here.
    assert after_bodies - before < 50, (before, after_bodies)
    # Refused untokenized, a 3 MB prompt costs its JSON parse only (tokenizing one peaked at
    # ~450 MB and the allocator kept ~500 MB of it).
    assert after_prompts - before < 50, (before, per_prompt, after_prompts)
