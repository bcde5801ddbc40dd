"""omniloom serve, web page: headless Chromium loads /, sends a typed message, sees the streamed answer,
and draws an image (driven over the DevTools protocol; skipped when chromium is not installed)."""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")]
SCREENSHOT = os.environ.get("OMNILOOM_SCREENSHOT")  # set to write docs/images/serve-page.png


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate, screenshot."""

    def __init__(self):
        from websockets.sync.client import connect

        self.dir = tempfile.mkdtemp()
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--remote-debugging-port=0", f"--user-data-dir={self.dir}",
                                      "--window-size=1000,700", "--autoplay-policy=no-user-gesture-required",
                                      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.dir) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.time() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=2**26)
        self.n = 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        return r["result"].get("value")

    def wait(self, expr, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr}")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def test_page_sends_a_message_and_shows_the_answer(browser):
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", default_max_tokens=24))
    with serve_in_thread(app) as url:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url + "/?mode=text")
        browser.wait("document.getElementById('status').textContent.startsWith('connected')")
        browser.js("document.getElementById('input').value = 'what color is the star?';"
                   "document.getElementById('send').click(); true")
        answer = browser.wait("(() => { const a = document.querySelector('.assistant[data-done]');"
                              " return a && a.textContent; })()")
        assert "tokens" in answer  # the streamed answer and its response.done meta line
        user = browser.js("document.querySelector('.user').textContent")
        assert user == "what color is the star?"
        # an image answer appears as an <img> holding a PNG data URL
        browser.js("document.getElementById('mode').value = 'image';"
                   "document.getElementById('input').value = 'draw a small blue square';"
                   "document.getElementById('send').click(); true")
        src = browser.wait("(() => { const i = document.querySelector('.assistant img'); return i && i.src; })()")
        assert src.startswith("data:image/png;base64,")
        w = browser.wait("document.querySelector('.assistant img').naturalWidth")
        assert w == 64
        if SCREENSHOT:
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
            Path(SCREENSHOT).write_bytes(png)


def test_page_push_to_talk_gets_a_spoken_answer(browser):
    """Chromium's fake microphone (a beep) held for a second: committed, answered in voice, played."""
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny"))
    with serve_in_thread(app) as url:
        browser.call("Page.navigate", url=url + "/?mode=audio")
        browser.wait("document.getElementById('status').textContent.startsWith('connected')")
        browser.js("window.__deltas = 0; const o = onEvent; onEvent = (e) => {"
                   " if (e.type === 'response.output_audio.delta') window.__deltas++; o(e); }; true")
        browser.js("document.getElementById('ptt').dispatchEvent(new MouseEvent('mousedown')); true")
        browser.wait("document.getElementById('status').textContent === 'recording…'")
        time.sleep(1.2)
        browser.js("document.getElementById('ptt').dispatchEvent(new MouseEvent('mouseup')); true")
        meta = browser.wait("(() => { const a = document.querySelector('.assistant[data-done]');"
                            " return a && a.textContent; })()")
        assert not meta.startswith("⚠"), meta
        assert browser.js("document.querySelector('.user').textContent") == "🎤 (spoken)"
        assert browser.js("window.__deltas") > 0
        assert browser.js("audioCtx.state") == "running"


def test_page_previews_a_3d_answer(browser):
    """'3D model' mode asks /v1/3d/generations for an STL and draws it on a canvas, with a download link."""
    app = create_app(build_tiny_model(mesh=True), ServeSettings(model_id="tiny"))
    with serve_in_thread(app) as url:
        browser.call("Page.navigate", url=url + "/?mode=3d")
        browser.wait("document.getElementById('status').textContent.startsWith('connected')")
        browser.js("document.getElementById('input').value = 'make a 3D model of a big cube';"
                   "document.getElementById('send').click(); true")
        tris = browser.wait("(() => { const c = document.querySelector('.assistant canvas.mesh');"
                            " return c && Number(c.dataset.triangles); })()")
        link = browser.js("document.querySelector('.assistant a').download")
        assert link == "shape.stl"
        # an untrained codec may decode an empty grid (0 triangles: nothing drawn); when it has
        # triangles, the canvas must show them (pixels that are not the clear background)
        painted = browser.js("(() => { const c = document.querySelector('.assistant canvas.mesh');"
                             " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                             " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()")
        assert (painted > 0) == (tris > 0), (tris, painted)


def test_page_draws_an_stl_it_is_given(browser):
    """The page's STL reader and renderer on a known mesh (a box's marching-cubes surface), painted."""
    import numpy as np

    from omniloom.codecs.mesh import mesh_bytes

    vox = np.zeros((16, 16, 16), bool)
    vox[4:12, 4:12, 0:8] = True
    stl = base64.b64encode(mesh_bytes(vox, "stl")).decode()
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny"))
    with serve_in_thread(app) as url:
        browser.call("Page.navigate", url=url + "/?mode=text")
        browser.wait("document.getElementById('status').textContent.startsWith('connected')")
        n, painted = browser.js(
            f"(() => {{ const b = Uint8Array.from(atob('{stl}'), (c) => c.charCodeAt(0));"
            " const t = parseSTL(b.buffer); const c = document.createElement('canvas'); c.width = c.height = 100;"
            " drawMesh(c, t, { yaw: -0.6, pitch: 0.6 });"
            " const d = c.getContext('2d').getImageData(0, 0, 100, 100).data; let p = 0;"
            " for (let i = 3; i < d.length; i += 4) if (d[i]) p++; return [t.length / 9, p]; })()")
        assert n > 0 and 500 < painted < 10000, (n, painted)
