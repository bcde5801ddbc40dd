"""Run the app on a loopback port in a background thread (tests, benchmarks, the browser test)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["free_port", "serve_in_thread", "mp4_data_url"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app, port: int | None = None, log_level: str = "warning") -> Iterator[str]:
    """Yield ``http://127.0.0.1:PORT`` while uvicorn serves ``app``; stopped on exit."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, ws="websockets-sansio",
                                           lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


def mp4_data_url(frames: int = 4, size: int = 64, fps: int = 4) -> str:
    """A small grey-ramp MP4 (mpeg4) as a ``data:video/mp4;base64,...`` URL, for video_url parts."""
    import base64
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 60 * i % 256, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()

