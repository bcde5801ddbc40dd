"""omniloom.serve: the OpenAI-compatible server (REST + SSE, Realtime WebSocket) and a web page.

A thin adapter from the OpenAI API to :func:`omniloom.infer.generate.generate`; no model logic.
``create_app(omni, ServeSettings(...))`` builds the FastAPI app; ``omniloom serve`` runs it.
"""

__all__ = ["create_app", "ServeSettings"]


def __getattr__(name: str):
    # lazy, so that `omniloom serve --help` (and the CLI's table of verbs) does not import FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeSettings":
        from .state import ServeSettings

        return ServeSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
