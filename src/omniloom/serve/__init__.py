"""omniloom.serve: the OpenAI-compatible server (REST + SSE, Realtime WebSocket) and a web page.

A thin adapter from the OpenAI API to :func:`omniloom.infer.generate.generate`; no model logic.
``create_app(omni, ServeSettings(...))`` builds the FastAPI app; ``omniloom serve`` runs it.
"""

from .app import create_app
from .state import ServeSettings

__all__ = ["create_app", "ServeSettings"]
