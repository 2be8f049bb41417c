"""``tokenflow serve``, registered through the ``tokenflow.commands`` entry point
group (``generator.cli`` finds it there; it never imports ``server``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _bounded_int(low: int, high: int | None = None):
    """An argparse type: an int in [low, high]; a bad value becomes the parser's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def _bounded_float(low: float):
    """An argparse type: a finite float >= low."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= low or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low:g}, got {text}")
        return value
    return parse


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_commands(sub) -> None:
    """Add ``serve`` to the ``tokenflow`` subcommands."""
    from generator.cli.common import add_model_flags

    from .settings import Settings

    p = sub.add_parser("serve", help="serve the model over HTTP (OpenAI-compatible SSE)",
                       description="Serve the model over HTTP: OpenAI-compatible /v1 routes, /api/stream for "
                                   "EventSource, /health, /metrics.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_bounded_int(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("TOKENFLOW_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health, the page and its static "
                        "files (/api/stream also takes ?api_key=) (default: $TOKENFLOW_API_KEY)")
    p.add_argument("--model-name", default="tokenflow", help="the model id clients send and /v1/models lists")
    env = Settings()  # defaults, read from TOKENFLOW_* environment variables
    p.add_argument("--max-waiting", type=_bounded_int(1), default=env.max_waiting,
                   help="queued requests before answering 429 (env TOKENFLOW_MAX_WAITING, default 64)")
    p.add_argument("--max-batch", "--max-active", dest="max_active", type=_bounded_int(1), default=env.max_active,
                   help="rows (KV-cache slots) advanced together in one forward per step; beams and n > 1 take "
                        "several (env TOKENFLOW_MAX_BATCH, default 16)")
    p.add_argument("--max-prompt-tokens", type=_bounded_int(1), default=env.max_prompt_tokens,
                   help="longest prompt accepted (env TOKENFLOW_MAX_PROMPT; default: the context)")
    p.add_argument("--max-total-tokens", type=_bounded_int(2), default=env.max_total_tokens,
                   help="prompt + max_tokens limit per request (env TOKENFLOW_MAX_TOTAL; default: the context)")
    p.add_argument("--stall-timeout", type=float, default=env.stall_timeout_s,
                   help="seconds a client may stop reading its stream before it is dropped and its row freed; "
                        "a connection whose socket then takes no byte for as long is closed "
                        "(env TOKENFLOW_STALL_TIMEOUT, default 30)")
    p.add_argument("--resume-grace", type=float, default=30.0,
                   help="seconds a resumable stream (/api/stream, or an OpenAI stream with "
                        "stream_options.resumable) stays resumable after its reader left")
    p.add_argument("--shutdown-grace", type=_bounded_float(0), default=env.shutdown_grace_s,
                   help="on SIGTERM/SIGINT, seconds open requests may still finish (new ones get 503) before "
                        "each open stream gets a final 'server_shutdown' error event "
                        "(env TOKENFLOW_SHUTDOWN_GRACE, default 5)")
    p.add_argument("--max-body-mb", type=_bounded_float(0.001), default=env.max_body_mb,
                   help="largest request body in MB; a larger one gets 413 before it is parsed "
                        "(env TOKENFLOW_MAX_BODY_MB, default 4)")
    p.add_argument("--allowed-hosts", default="",
                   help="comma-separated Host names accepted besides localhost/127.0.0.1/::1 "
                        "('*': any); other Host headers get 421 (guards against DNS rebinding)")
    p.add_argument("--cors-origins", default="",
                   help="comma-separated origins browsers may call the API from (default: none, CORS off)")
    p.add_argument("--public-metrics", action="store_true",
                   help="with --api-key, leave /metrics open (for a scraper without the key)")
    p.add_argument("--special-tokens-in-messages", action="store_true",
                   help="let chat message content hold control tokens such as <|im_end|> (default: such "
                        "text is read as plain text, so a message cannot forge a turn)")
    p.add_argument("--ray-replicas", type=_bounded_int(1), default=None, metavar="N",
                   help="serve N replicas of the app as a Ray Serve deployment behind one endpoint "
                        "(--host/--port), each with its own model; needs pip install 'tokenflow[ray]'")
    p.add_argument("--ray", dest="ray_address", default=None, metavar="ADDRESS",
                   help="with --ray-replicas: the Ray cluster to deploy on (default: a local Ray started here)")
    p.add_argument("--ray-cpus", type=_bounded_int(1), default=1,
                   help="with --ray-replicas: CPUs (torch threads) per replica (1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_model_flags(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from generator.config import EngineConfig

    from .settings import Settings

    settings = Settings(host=args.host, port=args.port, engine=EngineConfig.from_args(args),
                        model_name=args.model_name, api_key=args.api_key or None, max_waiting=args.max_waiting,
                        max_active=args.max_active, resume_grace_s=args.resume_grace,
                        max_prompt_tokens=args.max_prompt_tokens, max_total_tokens=args.max_total_tokens,
                        stall_timeout_s=args.stall_timeout, shutdown_grace_s=args.shutdown_grace,
                        max_body_mb=args.max_body_mb, allowed_hosts=_names(args.allowed_hosts),
                        cors_origins=_names(args.cors_origins), public_metrics=args.public_metrics,
                        special_tokens_in_messages=args.special_tokens_in_messages)
    if args.ray_replicas:
        try:
            import ray  # noqa: F401 - only to say it is missing, in one line
        except ImportError:
            from generator.cli.common import CLIError

            raise CLIError("--ray-replicas needs Ray: pip install 'tokenflow[ray]'") from None
        from .ray_serve import serve_on_ray

        return serve_on_ray(settings, args.ray_replicas, args.ray_address, args.ray_cpus)
    return serve(settings, log_level=args.log_level)


def serve(settings, engine=None, log_level: str = "info") -> int:
    """Serve ``settings`` (the model it names, or an already loaded ``engine``) until
    SIGTERM or SIGINT; returns the exit status. The first signal drains the server
    (``server.lifecycle``: new requests 503, open ones finish within the shutdown grace,
    then get a final event), then uvicorn stops; a second one exits at once. Ends the
    process with the exit status (0 after a clean stop)."""
    import signal

    import uvicorn

    from .app import create_app
    from .transport import uvicorn_options

    # uvicorn's own grace only backs ours up: by the time it runs, no request is open.
    server = uvicorn.Server(uvicorn.Config(None, host=settings.host, port=settings.port, log_level=log_level,
                                           timeout_graceful_shutdown=2,
                                           **uvicorn_options(settings.stall_timeout_s)))
    apps = []

    def stop() -> None:
        server.should_exit = True

    def on_signal(signum, frame) -> None:  # on the main thread (uvicorn runs on another: see below)
        if server.should_exit or (apps and apps[0].state.lifecycle.draining):
            server.force_exit = server.should_exit = True  # a second signal: exit now
        elif not apps or not apps[0].state.lifecycle.request_shutdown(then=lambda: stop()):
            stop()

    def make_app(host):
        apps.append(create_app(settings, engine=engine, host=host))
        return apps[0]

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failed = serve_with_worker_here(server, make_app)
    status = 1 if failed or not server.started else 0
    # Nothing is left to run, yet the interpreter's teardown (torch and its thread pools)
    # took 2-3 s more here: end the process now, so a stop is grace + about a second.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve_with_worker_here(server, make_app) -> list[BaseException]:
    """Run ``server`` (a ``uvicorn.Server``) on a new thread and the app's model work
    (loading, then the scheduler's loop) on this one, until uvicorn stops; see
    ``WorkerHost`` for why a torch loop on a second thread decodes at about half speed.
    ``make_app(host)`` builds the app. Returns what uvicorn raised (e.g. SystemExit(1)
    when the port is taken)."""
    import threading

    from .scheduler import WorkerHost

    host = WorkerHost()
    app = server.config.app = make_app(host)
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            server.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failed.append(exc)
        finally:
            if app.state.scheduler is not None:  # lets this thread's worker loop return
                app.state.scheduler.stop()

    thread = threading.Thread(target=serve, name="uvicorn", daemon=True)
    thread.start()
    host.run_until(lambda: not thread.is_alive())
    while thread.is_alive():  # short joins, so signal handlers keep running on this thread
        thread.join(0.25)
    return failed
