"""Serve a model over the OpenAI API (REST + SSE), the Realtime voice API and a web page.

  omniloom serve                         # the bundled reference model ("world")
  omniloom serve --model DIR --port 8000 --api-key KEY

Routes: /v1/models, /v1/chat/completions, /v1/audio/speech, /v1/audio/transcriptions,
/v1/images/generations, /v1/images/edits, /v1/embeddings, ws /v1/realtime, and the page at /.
A tiny random model for trying it out: python -m omniloom.serve.tiny DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--model-id", default=None, help="the name clients send as 'model' (default: --model's name)")
    p.add_argument("--alias-openai-models", action="store_true",
                   help="also answer to OpenAI's model names (gpt-4o*, whisper-1, tts-1, gpt-image-1, ...) so apps "
                        "written for OpenAI work unchanged; /v1/models lists them then")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API route "
                   "(needed to bind anything but loopback)")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback --host without --api-key (anyone who reaches the port can use it)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin (e.g. https://app.example.com) allowed to call the API besides this "
                        "server's own page and loopback; repeatable; '*' allows any")
    p.add_argument("--workers", type=int, default=1, help="generation threads (each has its own KV cache; default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting for a worker before 429 (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default; default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=25.0, help="largest request body in MB (413 above; default: %(default)s)")
    p.add_argument("--max-audio-seconds", type=float, default=120.0, help="longest input audio in seconds (400 above; default: %(default)s)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest input image in pixels (400 above; default: %(default)s)")
    p.add_argument("--max-image-aspect", type=float, default=32.0,
                   help="longest input image side over its shortest (400 above; default: %(default)s)")
    p.add_argument("--max-session-items", type=int, default=1000,
                   help="items one Realtime conversation holds (an error event above; default: %(default)s)")
    p.add_argument("--max-session-audio-seconds", type=float, default=600.0,
                   help="input audio one Realtime conversation stores (default: %(default)s)")
    p.add_argument("--max-audio-ids", type=int, default=4096,
                   help="spoken answers' message.audio ids remembered at once, oldest dropped first (default: %(default)s)")
    p.add_argument("--max-job-events", type=int, default=256,
                   help="events an answer may run ahead of a slow client before generation waits (default: %(default)s)")
    p.add_argument("--stall-timeout", type=float, default=60.0,
                   help="seconds a client may take none of its answer's events before the answer is cancelled "
                        "(default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on max_tokens (default: the context)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--int8", action="store_true",
                   help="int8 weight-only quantization of the decoder (CPU): faster decoding, slightly different answers")
    p.add_argument("--verifier", default=None, metavar="DIR",
                   help="a verifier trained on this model (omniloom verifier train): chat requests may then ask for "
                        "best_of N answers, the one it scores highest returned")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="best-of-N for every chat request that does not say (needs --verifier; default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (each worker's first answer waits for the compilation)")


def resolve_model(name: str) -> tuple[Path, str]:
    """A bundled name, a model directory or a training run -> (model directory, model id)."""
    from ..infer.generate import resolve_model_dir

    d = resolve_model_dir(name)
    return d, name if not Path(name).is_dir() else Path(name).resolve().name


def run(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from .app import is_loopback

    if not is_loopback(args.host) and not args.api_key and not args.insecure:
        print(f"omniloom serve: refusing to bind {args.host} without --api-key: anyone who can reach the port could "
              "use the model. Give --api-key KEY, or --insecure if that is what you want.", file=sys.stderr)
        return 2

    from ..infer.generate import OmniModel
    from .app import create_app
    from .state import ServeSettings

    directory, mid = resolve_model(args.model)
    omni = OmniModel.load(directory, device=args.device, int8=args.int8, compile=args.compile)
    verifier = None
    if args.verifier:
        from ..infer.best_of import Verifier

        verifier = Verifier.load(args.verifier, directory)
    settings = ServeSettings(model_id=args.model_id or mid, api_key=args.api_key, workers=args.workers,
                             allowed_origins=tuple(args.allow_origin),
                             alias_openai_models=args.alias_openai_models,
                             max_queue=args.max_queue, threads=args.threads or None,
                             max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                             max_audio_seconds=args.max_audio_seconds, max_image_pixels=args.max_image_pixels,
                             max_image_aspect=args.max_image_aspect, max_session_items=args.max_session_items,
                             max_session_audio_seconds=args.max_session_audio_seconds,
                             max_audio_ids=args.max_audio_ids, max_job_events=args.max_job_events,
                             stall_timeout_s=args.stall_timeout,
                             max_tokens=args.max_tokens, best_of=args.best_of)
    app = create_app(omni, settings, verifier)
    print(f"omniloom serve: model {settings.model_id!r} from {directory} on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", ws="websockets-sansio")
    return 0
