"""Screenshot of the web page's 3D mode answering one prompt with a real model (headless Chromium).

    python examples/screenshot_3d.py MODEL_DIR docs/images/serve-page-3d.png "make a 3D model of ..."

Drives the page as tests/test_serve_page.py does (its DevTools-protocol Browser); needs chromium.
"""
import base64
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve_page import Browser  # noqa: E402
from omniloom.infer.generate import OmniModel  # noqa: E402
from omniloom.serve import ServeSettings, create_app  # noqa: E402
from omniloom.serve.testing import serve_in_thread  # noqa: E402

model, out, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
app = create_app(OmniModel.load(model), ServeSettings(model_id=Path(model).name))
b = Browser()
try:
    with serve_in_thread(app) as url:
        b.call("Page.navigate", url=url + "/?mode=3d")
        b.wait("document.getElementById('status').textContent.startsWith('connected')")
        b.js(f"document.getElementById('input').value = {prompt!r}; document.getElementById('send').click(); true")
        tris = b.wait("(() => { const c = document.querySelector('.assistant canvas.mesh'); return c && Number(c.dataset.triangles); })()", timeout=120)
        print("triangles", tris)
        time.sleep(0.5)
        Path(out).write_bytes(base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"]))
finally:
    b.close()
