"""Errors the way OpenAI returns them: ``{"error": {message, type, param, code}}``.

Every failure path ends here, so no response ever carries a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from decoding import ParamError

log = logging.getLogger("tokenflow.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body OpenAI clients parse into their error classes."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_param_error(exc: ParamError, rename: dict[str, str] | None = None) -> APIError:
    """A ``decoding.ParamError`` as a 400, with the field under its request name
    (``max_new_tokens`` is ``max_tokens`` on the wire)."""
    param = (rename or {}).get(exc.field, exc.field)
    return APIError(400, f"{param}: {exc.message}", param=param, code="invalid_value")


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _required_fields(request: Request) -> list[str]:
    """The required top-level fields of the route's JSON body model (none when unknown)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    fields = getattr(model, "model_fields", {})
    return [name for name, info in fields.items() if info.is_required()]


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to an OpenAI-style JSON response."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(ParamError)
    async def _param_error(request: Request, exc: ParamError):
        err = from_param_error(exc)
        return _json(err.status, err.body())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # param: the top-level field as the client spelled it; the message has the full path.
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            detail = (first.get("ctx") or {}).get("error", "")
            return _json(400, error_body(f"the body is not valid JSON: {detail}", "invalid_request_error", None,
                                         "invalid_json"))
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header")]
        msg = first.get("msg", "invalid request")
        if not loc and first.get("type") == "missing":  # no body at all: name what it must hold
            loc = _required_fields(request)[:1]
            msg = "required (the request has no JSON body)"
        param = loc[0] if loc else None
        message = f"{'.'.join(loc)}: {msg}" if loc else msg
        return _json(400, error_body(message, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        kind = _TYPES.get(exc.status_code, "invalid_request_error")
        return _json(exc.status_code, error_body(message, kind, getattr(exc, "param", None),
                                                 getattr(exc, "code", None)), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, error_body(f"internal error: {type(exc).__name__}", "server_error", None, None))
