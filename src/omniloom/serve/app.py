"""The FastAPI app: OpenAI-compatible REST, the Realtime WebSocket and the web page.

``create_app(omni, settings)`` builds it around an :class:`~omniloom.infer.generate.OmniModel`.
Every route except the page (``/``, ``/static``) and ``/health`` needs ``Authorization: Bearer KEY``
when ``settings.api_key`` is set (the WebSocket also takes the key as the subprotocol
``openai-insecure-api-key.KEY``, which is how a browser sends it). A request from a browser page
(it carries ``Origin``) is refused with 403 unless the page is this server's own, on loopback, or in
``settings.allowed_origins``: another web site the user visits cannot drive a local server.
"""

from __future__ import annotations

import hmac
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..infer.generate import OmniModel
from .errors import APIError, error_body, install_error_handlers
from .state import ServerState, ServeSettings

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/", "/health", "/favicon.ico")


def _ws_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"sec-websocket-protocol":
            for proto in value.decode("latin-1").split(","):
                proto = proto.strip()
                if proto.startswith("openai-insecure-api-key."):
                    return proto[len("openai-insecure-api-key."):]
    return None


def _bearer(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer KEY``; any other scheme (or a bare key) is no key."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            v = value.decode("latin-1")
            return v[7:].strip() or None if v[:7].lower() == "bearer " else None
    return None


def _header(scope: Scope, key: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == key:
            return value.decode("latin-1")
    return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1; brackets allowed)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name, not an address: only "localhost" counts
        return False


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page at ``origin`` may call this server (requests without Origin: not a browser).

    Allowed: the server's own origin (Origin's host:port equals the Host header), loopback origins
    (``http://localhost:*``, ``127.0.0.1``, ``[::1]``) and the ``--allow-origin`` list (``*``: any).
    """
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    from urllib.parse import urlsplit

    try:
        u = urlsplit(origin)
        hostname = u.hostname
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or not hostname:
        return False  # "null" (sandboxed frames, file:// pages) and other schemes
    if host is not None and u.netloc.lower() == host.lower():
        return True
    return is_loopback(hostname)


class GuardMiddleware:
    """API key on every route and the WebSocket; a body larger than the limit is a 413."""

    def __init__(self, app: ASGIApp, settings: ServeSettings):
        self.app, self.settings = app, settings

    async def _reject(self, send: Send, status: int, message: str, code: str, websocket: bool = False) -> None:
        """An error response in OpenAI's envelope; for a WebSocket, as the handshake's HTTP answer."""
        body = json.dumps(error_body(status, message, code=code)).encode()
        kind = "websocket.http.response" if websocket else "http.response"
        await send({"type": f"{kind}.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": f"{kind}.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        origin = _header(scope, b"origin")
        if not origin_allowed(origin, _header(scope, b"host"), self.settings.allowed_origins):
            msg = (f"Origin {origin!r} may not call this server (allowed: same origin, loopback, and "
                   "--allow-origin)")
            return await self._reject(send, 403, msg, "origin_not_allowed", scope["type"] == "websocket")
        key = self.settings.api_key
        if key and path not in PUBLIC and not path.startswith("/static/"):
            given = _bearer(scope) or (_ws_key(scope) if scope["type"] == "websocket" else None)
            if not given or not hmac.compare_digest(given.encode(), key.encode()):
                msg = "Incorrect API key provided" if given else "Missing API key: send 'Authorization: Bearer KEY'"
                return await self._reject(send, 401, msg, "invalid_api_key", scope["type"] == "websocket")
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await self._reject(send, 400, "invalid Content-Length", "invalid_request")
        if length is not None:
            if length > limit:
                return await self._reject(send, 413, f"request body of {length} bytes exceeds the limit of "
                                                     f"{limit} bytes", "request_too_large")
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): read the body here, up to the limit, then hand it on in one piece
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            more = msg.get("more_body", False)
            if seen > limit:
                return await self._reject(send, 413, f"request body exceeds the limit of {limit} bytes",
                                          "request_too_large")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(omni: OmniModel, settings: ServeSettings | None = None, verifier: Any = None) -> FastAPI:
    """The server app around ``omni`` (generation runs in ``settings.workers`` threads); ``verifier``
    (an :class:`omniloom.infer.best_of.Verifier`) enables best-of-N chat answers."""
    settings = settings or ServeSettings()
    state = ServerState.build(omni, settings, verifier)
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.scheduler.close()

    app = FastAPI(lifespan=lifespan, title="omniloom", version="1", description="OpenAI-compatible API of an omni model "
                  "(text, image, audio in and out), the Realtime voice API at /v1/realtime and a web page at /.")
    app.state.omni = state
    install_error_handlers(app)
    from . import audio, chat, completions, embeddings, images, mesh3d, realtime

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(audio.router)
    app.include_router(images.router)
    app.include_router(embeddings.router)
    app.include_router(mesh3d.router)
    app.include_router(realtime.router)
    created = int(time.time())

    def _card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "omniloom",
                "input_modalities": state.input_modalities, "output_modalities": state.output_modalities,
                "voices": state.voices, "voice_aliases": state.voice_aliases, "context_length": state.context,
                **({"served_by": settings.model_id} if name != settings.model_id else {})}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_card(n) for n in state.model_names]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        state.check_model(model_id)
        return _card(model_id)

    @app.get("/health")
    async def health() -> dict:
        s = state.scheduler
        return {"status": "ok", "model": settings.model_id, "waiting": s.waiting, "running": s.running,
                **s.stats}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        p = STATIC / name
        if "/" in name or name.startswith(".") or not p.is_file():
            raise APIError(404, f"no static file {name!r}", code="not_found")
        return FileResponse(p)

    def openapi() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = openai_shaped_schema(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes),
                state.model_names, bool(settings.api_key))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(GuardMiddleware, settings=settings)
    return app


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ERRORS = {"400": "Invalid request: a bad value, missing field or unreadable media (OpenAI sends 400 where "
                  "FastAPI would send 422)",
           "401": "Missing or wrong API key (only when the server has --api-key)",
           "403": "A browser Origin that may not call this server",
           "404": "Unknown model", "413": "Request body over --max-body-mb",
           "429": "Server busy: the queue of waiting requests is full (Retry-After: 1)"}


def openai_shaped_schema(schema: dict, model_names: list[str], keyed: bool) -> dict:
    """FastAPI's schema, made to match what the server sends: 400 (not 422) for invalid requests, the
    401/403/404/413/429 errors in OpenAI's envelope, and ``model`` limited to the names served (so
    clients and fuzzers know which to send)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if not path.startswith("/v1/"):
                continue
            codes = ["400", "403", "404", "413"] + (["401"] if keyed else [])
            if op.get("requestBody"):  # the generating routes queue for a worker
                codes.append("429")
            for code in codes:
                responses[code] = {"description": _ERRORS[code], **ref}
            for p in op.get("parameters", []):
                if p.get("name") == "model_id":
                    p["schema"] = {"type": "string", "enum": list(model_names), "title": "Model Id"}
    for comp in comps.values():
        props = comp.get("properties") or {}
        if "model" in props:
            props["model"] = {"type": "string", "enum": list(model_names), "title": "Model",
                              "description": "the served model's name"}
    return schema


