"""The web page: ``GET /`` and its static assets, plus the one route the page
needs beyond ``/api/stream``: an explicit cancel for its Stop button.

Everything the page uses lives in ``server/web/static/`` (no build step, no CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import APIError
from ..openai.routes import require_api_key

STATIC_DIR = Path(__file__).parent / "static"

web = APIRouter()


@web.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page itself; it loads ``/static/app.js`` and ``/static/app.css``."""
    # no-cache: a restarted server with a new page is picked up on reload.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@web.post("/api/stream/{stream_id}/cancel", dependencies=[Depends(require_api_key)])
async def cancel_stream(stream_id: str, request: Request) -> Response:
    """Stop a ``/api/stream`` generation now.

    Closing an ``EventSource`` looks to the server exactly like a dropped
    connection, which keeps the stream resumable for the grace period; a person
    pressing Stop means "no more", so the page says so here.
    """
    stream = request.app.state.streams.streams.get(stream_id)
    if stream is None:
        raise APIError(404, "stream not found: it finished or expired", param="stream_id",
                       code="stream_not_found")
    stream.expire()
    return Response(status_code=204)


def install_web(app: FastAPI) -> None:
    """Add the page, its assets under ``/static`` and the cancel route to ``app``."""
    app.include_router(web)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
