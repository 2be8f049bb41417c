"""Take docs/screenshot.png: the web page on the default model, three strategies side
by side, tokens coloured by probability, the decision trace on, one token hovered (its
alternatives and what each link of its chain kept and removed).

    .venv/bin/python docs/screenshot.py [--out docs/screenshot.png] [--max-tokens 48]

Needs what `make test-browser` installs (/usr/bin/chromium and playwright).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from decoding import SamplingParams
from generator import Engine
from server import Settings, create_app

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve(app) -> tuple[uvicorn.Server, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompt", default="Explain in two sentences why the sky is blue.")
    args = parser.parse_args()

    engine = Engine.load(device="cpu", dtype="float32")
    for _ in engine.stream("Hello", SamplingParams(max_new_tokens=4)):  # warm-up: first-call costs
        pass
    server, url = serve(create_app(Settings(), engine=engine))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#prompt", args.prompt)
            page.fill("#common input[name=max_new_tokens]", str(args.max_tokens))
            page.click("#add-column")
            page.click("#add-column")
            names = page.locator(".column").nth(0).locator("select.strategy option").evaluate_all(
                "options => options.map(o => o.value)")
            picks = ["greedy", "top_p" if "top_p" in names else "sample", "beam"]
            for i, name in enumerate(picks):
                page.locator(".column").nth(i).locator("select.strategy").select_option(name)
            seed = page.locator(".column").nth(1).locator("input[name=seed]")
            if seed.count():
                seed.fill("7")
            page.check("#colour")
            page.check("#trace")
            page.click("#run")
            page.wait_for_function("[...document.querySelectorAll('.column')].every("
                                   "c => ['done', 'error'].includes(c.dataset.state))", timeout=300_000)
            page.locator(".column").nth(1).locator(".tok:not(:empty)").nth(6).hover()
            page.wait_for_selector("#tooltip:not([hidden])")
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.should_exit = True
    # A 256-colour palette keeps the PNG small enough to commit.
    Image.open(args.out).convert("RGB").quantize(colors=256).save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
