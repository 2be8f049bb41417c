"""The web page in a real headless Chromium against a live server on the tiny model.

Run with ``make test-browser`` (it installs chromium and playwright). Skipped, with
the reason, where /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from decoding import SamplingParams
from server import Settings, create_app
from server_harness import LiveServer, StepEngine

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"
PROMPT = "Once upon a time"

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (make test-browser installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test-browser)",
                             exc_type=ImportError)


class DroppingProxy:
    """A TCP proxy in front of the server that can cut the browser's open
    ``/api/stream`` connections, the way a flaky network does."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.streams: list[tuple[socket.socket, socket.socket]] = []
        self.stream_requests: list[bytes] = []  # request heads of every /api/stream GET
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = (client, upstream)
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while data := src.recv(65536):
                if pair is not None and b"GET /api/stream" in data:
                    with self.lock:
                        self.streams.append(pair)
                        self.stream_requests.append(data.split(b"\r\n\r\n")[0])
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop_streams(self) -> int:
        with self.lock:
            pairs, self.streams = self.streams, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return len(pairs)

    def close(self):
        self.listener.close()


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_engine(tiny_engine):
    return StepEngine(tiny_engine, delay_s=0.03)  # slow enough to watch tokens arrive


@pytest.fixture(scope="module")
def server(slow_engine):
    live = LiveServer(create_app(Settings(resume_grace_s=30.0), engine=slow_engine))
    _LIVE.append(live)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    messages = []
    page.on("pageerror", lambda exc: messages.append(f"pageerror: {exc}"))
    # Script errors only: the browser's own "Failed to load resource" lines are the
    # 4xx answers some tests provoke on purpose.
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource")
            and messages.append(f"console: {msg.text}"))
    page.js_errors = messages
    yield page
    context.close()


def open_page(page, url: str):
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=15000)
    page.click("label:has(input[name=format][value=raw])")
    assert page.locator("input[name=format][value=raw]").is_checked()
    page.locator("#prompt").fill(PROMPT)


def set_param(page, column: int, name: str, value) -> None:
    """Set a generated control, whatever input the page made for it."""
    col = page.locator(".column").nth(column)
    col.locator("details.more").evaluate("d => d.open = true")
    field = col.locator(f"input[name={name}]")
    if field.get_attribute("type") == "checkbox":
        field.set_checked(bool(value))
    else:
        field.fill(str(value).lower() if isinstance(value, bool) else str(value))


def set_max_tokens(page, n: int) -> None:
    page.locator("#common input[name=max_new_tokens]").fill(str(n))


def column_state(page, i: int) -> dict:
    return page.evaluate("""i => {
        const c = document.querySelectorAll('.column')[i];
        return {state: c.dataset.state, status: c.querySelector('.status').textContent,
                count: c.querySelectorAll('.tok').length, text: c.querySelector('.output').textContent,
                shown: Number(c.querySelector('.count').textContent),
                error: c.querySelector('.error').hidden ? null : c.querySelector('.error').textContent};
    }""", i)


def wait_state(page, i: int, states: tuple[str, ...], timeout_ms: int = 90000) -> dict:
    try:
        page.wait_for_function("([i, states]) => states.includes(document.querySelectorAll('.column')[i].dataset.state)",
                               arg=[i, list(states)], timeout=timeout_ms)
    except sync_api.TimeoutError:
        raise AssertionError(f"column {i} never reached {states}: {column_state(page, i)}; "
                             f"server: {_server_view()}") from None
    return column_state(page, i)


_LIVE: list = []  # the servers of this module, for failure messages


def _server_view() -> list:
    """Each live server's streams: how many events stored, finished or not, readers."""
    return [[(sid, len(st.events), st.finished, st.subscribers) for sid, st in live.app.state.streams.streams.items()]
            for live in _LIVE]


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def expected_text(engine, max_tokens: int) -> str:
    params = SamplingParams(strategy="greedy", max_new_tokens=max_tokens, ignore_eos=True)
    return "".join(ev.text for ev in engine.stream(PROMPT, params))


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- tests ----------------------------------------------------------------------------------
def test_tokens_stream_into_the_page_and_done_closes_the_event_source(page, server, tiny_engine):
    open_page(page, server.url)
    set_max_tokens(page, 40)
    set_param(page, 0, "ignore_eos", True)
    requests_before = metric(server.url, "tokenflow_requests_total", '{method="GET",route="/api/stream",status="200"}')
    page.click("#run")
    # Tokens are on the page while the column is still streaming.
    page.wait_for_function("document.querySelectorAll('.column .tok').length >= 3")
    early = column_state(page, 0)
    assert early["state"] == "running" and 3 <= early["count"] < 40
    done = wait_state(page, 0, ("done", "error"))
    assert done["state"] == "done" and done["status"] == "done \u00b7 length", done
    assert done["count"] == done["shown"] == 40
    assert done["text"] == expected_text(tiny_engine, 40)  # nothing lost, nothing twice
    stats = page.locator(".column .stats").inner_text()
    assert re.search(r"TTFT \d+ ms", stats) and re.search(r"[\d.]+ tok/s", stats), stats
    # The page closed its EventSource on `done`: no stream left open, and no
    # automatic reconnect after the server ended the response (retry is 1 s).
    assert wait_until(lambda: metric(server.url, "tokenflow_active_streams") == 0, 5)
    time.sleep(1.5)
    requests_after = metric(server.url, "tokenflow_requests_total", '{method="GET",route="/api/stream",status="200"}')
    assert requests_after - requests_before == 1
    # Regenerate runs the last prompt again (not what the box holds now).
    page.locator("#prompt").fill("something else")
    page.click("#regenerate")
    page.wait_for_function("document.querySelector('.column').dataset.state === 'running'")
    again = wait_state(page, 0, ("done", "error"))
    assert again["state"] == "done" and again["text"] == done["text"]
    assert not page.js_errors, page.js_errors


def test_stop_cancels_the_generation_on_the_server(page, server, slow_engine):
    open_page(page, server.url)
    set_max_tokens(page, 200)
    set_param(page, 0, "ignore_eos", True)
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.column .tok').length >= 3")
    assert httpx.get(server.url + "/health").json()["running"] == 1
    # Generate again mid-stream: the new run replaces the old one on the server too.
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.column .tok').length >= 3")
    assert wait_until(lambda: httpx.get(server.url + "/health").json()["running"] == 1, 5)
    page.click("#stop")
    stopped = wait_state(page, 0, ("stopped",))
    # The server's open streams and running generations go back to 0, well before 200 tokens.
    assert wait_until(lambda: metric(server.url, "tokenflow_active_streams") == 0, 5)
    assert wait_until(lambda: httpx.get(server.url + "/health").json()["running"] == 0, 5)
    steps = slow_engine.steps
    time.sleep(0.3)
    assert slow_engine.steps == steps
    assert stopped["count"] < 200 and column_state(page, 0)["count"] == stopped["count"]
    assert not page.js_errors, page.js_errors


def test_two_columns_stream_the_same_prompt_at_once(page, server, tiny_engine):
    open_page(page, server.url)
    set_max_tokens(page, 30)
    page.click("#add-column")
    assert page.locator(".column").count() == 2
    page.locator(".column").nth(0).locator("select.strategy").select_option("greedy")
    page.locator(".column").nth(1).locator("select.strategy").select_option("sample")
    for i in (0, 1):
        set_param(page, i, "ignore_eos", True)
    set_param(page, 1, "seed", 7)
    page.click("#run")
    # Both columns hold tokens while both are still streaming: they run together.
    page.wait_for_function("""() => [...document.querySelectorAll('.column')].every(
        c => c.dataset.state === 'running' && c.querySelectorAll('.tok').length >= 2)""")
    greedy, sampled = wait_state(page, 0, ("done", "error")), wait_state(page, 1, ("done", "error"))
    assert greedy["state"] == sampled["state"] == "done"
    assert greedy["count"] == sampled["count"] == 30
    assert greedy["text"] == expected_text(tiny_engine, 30)
    seeded = SamplingParams(strategy="sample", max_new_tokens=30, ignore_eos=True, seed=7)
    assert sampled["text"] == "".join(ev.text for ev in tiny_engine.stream(PROMPT, seeded))
    assert not page.js_errors, page.js_errors


def test_hover_shows_logprob_and_alternatives_and_colour_by_probability(page, server):
    open_page(page, server.url)
    set_max_tokens(page, 24)
    set_param(page, 0, "ignore_eos", True)
    page.click("#add-column")
    # Beam search next to it: where the engine cannot report alternatives for beams
    # (a 400 naming the setting), the page runs that column without them.
    page.locator(".column").nth(1).locator("select.strategy").select_option("beam")
    set_param(page, 1, "ignore_eos", True)
    page.click("#run")
    assert wait_state(page, 0, ("done", "error"))["state"] == "done"
    beam = wait_state(page, 1, ("done", "error"))
    assert beam["state"] == "done" and beam["count"] == 24, beam

    # (A token may show no text of its own: bytes of a character held back for the next one.)
    token = page.locator(".column").nth(0).locator(".tok:not(:empty)").nth(2)
    token.hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    rows = tooltip.locator("tr.alt")
    assert rows.count() == 5
    head = tooltip.locator(".head").inner_text()
    match = re.search(r"logprob (-?[\d.]+) \u00b7 p ([\d.]+)%", head)
    assert match, head
    # Greedy picks the most likely token: the first alternative is the chosen one,
    # with the same probability as the token itself; probabilities fall down the list.
    assert tooltip.locator("tr.alt.chosen").count() == 1
    assert "chosen" in rows.nth(0).get_attribute("class")
    probs = [float(rows.nth(i).locator("td.num").nth(0).inner_text().rstrip("%")) for i in range(5)]
    assert probs == sorted(probs, reverse=True) and abs(probs[0] - float(match.group(2))) < 0.1
    token_p = token.evaluate("t => Number(t.style.getPropertyValue('--p'))")
    assert abs(token_p * 100 - float(match.group(2))) < 0.1

    # Colouring by probability gives each token a background from its p.
    background = "el => getComputedStyle(el).backgroundColor"
    assert token.evaluate(background) == "rgba(0, 0, 0, 0)"
    page.check("#colour")
    coloured = token.evaluate(background)
    assert coloured != "rgba(0, 0, 0, 0)"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator(".column").nth(0).locator(".tok:not(:empty)").nth(5).hover()
    page.screenshot(path=str(OUTPUT / "page.png"))
    assert (OUTPUT / "page.png").stat().st_size > 10_000
    assert not page.js_errors, page.js_errors


def test_dropped_connection_resumes_without_gaps_or_repeats(page, server, tiny_engine):
    proxy = DroppingProxy(server.port)
    try:
        open_page(page, proxy.url)
        set_max_tokens(page, 60)
        set_param(page, 0, "ignore_eos", True)
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('.column .tok').length >= 5")
        assert proxy.drop_streams() >= 1
        done = wait_state(page, 0, ("done", "error"), timeout_ms=90000)
        assert done["state"] == "done", done
        assert done["count"] == 60 and done["text"] == expected_text(tiny_engine, 60)
        # The browser really reconnected, and said where it had got to.
        heads = [h.decode("latin-1").lower() for h in proxy.stream_requests]
        assert len(heads) >= 2 and "last-event-id:" in heads[-1], heads
    finally:
        proxy.close()
    assert not page.js_errors, page.js_errors


def test_errors_are_shown_to_the_person(page, tiny_engine):
    failing = StepEngine(tiny_engine, fail_after=3)
    live = LiveServer(create_app(Settings(), engine=failing))
    try:
        open_page(page, live.url)
        set_max_tokens(page, 20)
        set_param(page, 0, "ignore_eos", True)
        page.click("#run")
        failed = wait_state(page, 0, ("error", "done"))
        # A failure mid-stream arrives as the server's `error` event, after the tokens before it.
        assert failed["state"] == "error" and "simulated device failure" in failed["error"], failed
        assert failed["count"] == 3
        # A request the server refuses (400) is explained, with the field named.
        page.locator(".column").nth(0).locator("select.strategy").select_option("sample")
        set_param(page, 0, "top_p", "1.5")
        page.click("#run")
        refused = wait_state(page, 0, ("error", "done"))
        assert refused["state"] == "error" and refused["error"].startswith("top_p"), refused
        assert refused["count"] == 0
    finally:
        live.stop()


def test_trace_on_hover_colour_by_certainty_and_divergence_marks(page, server):
    open_page(page, server.url)
    set_max_tokens(page, 16)
    set_param(page, 0, "ignore_eos", True)
    page.click("#add-column")
    page.locator(".column").nth(1).locator("select.strategy").select_option("top_k")
    set_param(page, 1, "ignore_eos", True)
    set_param(page, 1, "seed", 3)
    page.check("#trace")
    page.click("#run")
    for i in (0, 1):
        assert wait_state(page, i, ("done", "error"))["state"] == "done"
    ids = page.evaluate("() => [...document.querySelectorAll('.column')].map((c) => "
                        "[...c.querySelectorAll('.tok')].map((s) => Number(s.dataset.id)))")
    # hover a top-k token: its trace, with the link's kept count, under the alternatives
    token = page.locator(".column").nth(1).locator(".tok:not(:empty)").nth(1)
    token.hover()
    trace = page.locator("#tooltip .trace")
    trace.wait_for(state="visible")
    assert "top_k" in trace.locator("tr.link").nth(0).inner_text()
    entropy = float(re.search(r"entropy ([\d.]+)", trace.inner_text()).group(1))
    # colour by certainty: --p is e^-entropy of the token's trace
    page.check("#colour")
    page.select_option("#colour-by", "certainty")
    p = token.evaluate("t => Number(t.style.getPropertyValue('--p'))")
    assert abs(p - math.exp(-entropy)) < 0.01
    # the first token where the columns part is marked in both
    at = next((k for k, (a, b) in enumerate(zip(ids[0], ids[1])) if a != b), None)
    marked = page.evaluate("() => [...document.querySelectorAll('.tok.diverge')].map((s) => Number(s.dataset.i))")
    assert at is not None and marked == [at, at]
    assert not page.js_errors, page.js_errors


def test_fork_from_an_alternative_continues_in_a_new_column(page, server, tiny_engine):
    open_page(page, server.url)
    set_max_tokens(page, 6)
    set_param(page, 0, "ignore_eos", True)
    page.click("#run")
    assert wait_state(page, 0, ("done", "error"))["state"] == "done"
    token = page.locator(".column").nth(0).locator(".tok:not(:empty)").nth(2)
    k = int(token.get_attribute("data-i"))
    token.hover()
    alt = page.locator("#tooltip tr.alt.forkable").nth(0)
    alt.wait_for(state="visible")
    alt.click()
    assert wait_state(page, 1, ("done", "error"))["state"] == "done"
    ids = page.evaluate("() => [...document.querySelectorAll('.column')].map((c) => "
                        "[...c.querySelectorAll('.tok')].map((s) => [Number(s.dataset.id), s.className]))")
    base, fork = ids
    assert [i for i, _ in fork[:k]] == [i for i, _ in base[:k]] and all("shared" in c for _, c in fork[:k])
    assert "fork" in fork[k][1] and fork[k][0] != base[k][0] and len(fork) == k + 1 + 6
    prompt = tiny_engine.encode(PROMPT) + [i for i, _ in fork[:k + 1]]
    want = [ev.token_id for ev in tiny_engine.stream(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True))]
    assert [i for i, _ in fork[k + 1:]] == want  # greedy from the fork point, the prefix not generated again
    assert page.locator(".column").nth(1).locator(".tok.diverge").get_attribute("data-i") == str(k)
    assert not page.js_errors, page.js_errors


def test_export_is_a_recording_that_replay_reads_and_forks(page, server, tiny_model_dir, tmp_path, capsys):
    from generator.cli.main import main
    from generator.cli.replay import read_recording, stream_texts

    open_page(page, server.url)
    set_max_tokens(page, 5)
    set_param(page, 0, "ignore_eos", True)
    page.check("#trace")
    page.click("#run")
    assert wait_state(page, 0, ("done", "error"))["state"] == "done"
    with page.expect_download() as download:
        page.click("#export")
    path = tmp_path / "run.jsonl"
    download.value.save_as(path)
    header, events = read_recording(path)
    assert header["prompt"] == PROMPT and header["columns"]["c0"]["settings"]["ignore_eos"] == "true"
    assert len(events) == 5 and all(e["trace"] is not None for e in events)
    assert stream_texts(events)["c0"] == column_state(page, 0)["text"]
    ids = [e["token_id"] for e in events]
    # the recorded token at 1, greedy: the fork goes on as the page did
    assert main(["replay", str(path), "--fork", f"1:{ids[1]}", "--max-new-tokens", "3",
                 "--model", str(tiny_model_dir)]) == 0
    engine_text = capsys.readouterr().out.rstrip("\n")
    assert engine_text == "".join(e["text"] for e in events)


# -- same seed, same text, whatever the server is doing ---------------------------------
@pytest.fixture(scope="module")
def int4_server():
    """The default model as it serves by default (int4 weights, int8 head, our kernels)."""
    from generator import Engine

    engine = Engine.load(num_slots=16)
    live = LiveServer(create_app(Settings(), engine=StepEngine(engine, delay_s=0.01)))
    _LIVE.append(live)
    yield live, engine
    live.stop()


def test_regenerate_gives_the_same_seeded_text_under_any_load(page, int4_server):
    """The page's two columns, greedy and seeded top_p: Generate while other requests are
    decoding (the columns join a running batch), then Regenerate with the server otherwise
    idle, then once more beside a different load: the same text every time, and the text
    the engine gives each request alone."""
    server, engine = int4_server
    tokens = 24

    def load(n: int, max_tokens: int) -> list[threading.Thread]:
        def one(i: int):
            httpx.post(server.url + "/v1/completions", timeout=120,
                       json={"prompt": f"Background request {i}", "max_tokens": max_tokens, "ignore_eos": True,
                             "strategy": "sample", "temperature": 1.3, "seed": i})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        assert wait_until(lambda: httpx.get(server.url + "/health").json()["running"] >= n, timeout=30)
        return threads

    def generate(button: str) -> tuple[str, str]:
        page.click(button)
        page.wait_for_function("document.querySelector('.column').dataset.state === 'running'")
        first, second = wait_state(page, 0, ("done", "error")), wait_state(page, 1, ("done", "error"))
        assert first["state"] == second["state"] == "done", (first, second)
        return first["text"], second["text"]

    open_page(page, server.url)
    set_max_tokens(page, tokens)
    page.click("#add-column")
    page.locator(".column").nth(0).locator("select.strategy").select_option("greedy")
    page.locator(".column").nth(1).locator("select.strategy").select_option("top_p")
    for i in (0, 1):
        set_param(page, i, "ignore_eos", True)
    set_param(page, 1, "seed", 1)
    busy = load(5, 60)  # five rows already decoding when the columns join
    under_load = generate("#run")
    for t in busy:
        t.join(120)
    idle = generate("#regenerate")
    busy = load(11, 40)  # another crowd, other sizes
    again = generate("#regenerate")
    for t in busy:
        t.join(120)
    assert under_load == idle == again
    alone = [SamplingParams(strategy="greedy", max_new_tokens=tokens, ignore_eos=True),
             SamplingParams(strategy="top_p", max_new_tokens=tokens, ignore_eos=True, seed=1)]
    assert under_load == tuple("".join(ev.text for ev in engine.stream(PROMPT, p)) for p in alone)
    assert not page.js_errors, page.js_errors
