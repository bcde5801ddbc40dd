"""OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["APIError", "bad_request", "install_error_handlers", "error_body"]

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def sse_error_event(e: Exception) -> str:
    """The server-sent event that ends a stream whose error was found after the headers went out."""
    status = getattr(e, "status", 400)
    return f"data: {json.dumps(error_body(status, str(getattr(e, 'message', e))))}\n\n"


def _resp(e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(error_body(e.status, e.message, e.param, e.code, e.type), status_code=e.status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError) -> JSONResponse:
        return _resp(e)

    @app.exception_handler(ValueError)
    async def _value(_: Request, e: ValueError) -> JSONResponse:  # bad input deep inside: still a 400
        return _resp(bad_request(str(e)))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = f"{param or 'request'}: {first.get('msg', 'invalid request')}"
        return _resp(bad_request(msg, param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        resp = _resp(APIError(e.status_code, str(e.detail), code=code))
        for k, v in (e.headers or {}).items():  # e.g. 405's Allow
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def _other(_: Request, e: Exception) -> JSONResponse:  # a bug of ours, never a traceback to clients
        import logging

        logging.getLogger("omniloom.serve").exception("internal error")
        return _resp(APIError(500, f"internal error: {type(e).__name__}"))
