"""The built site in a real browser (headless Debian chromium; `bash tests/docs/setup_browser.sh` installs it):
every page renders with no console error and no failed request, its equations are typeset by the vendored
KaTeX (no network), every image on it loads, and the search finds a chapter. Saves screenshots of three pages
under $BROWSER_ARTIFACTS (default: the test's tmp dir). Slow: CI runs it once, after the default suite."""
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium: bash tests/docs/setup_browser.sh")]


class _Log(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):
        pass

    def log_request(self, code="-", size="-"):
        type(self).requests.append((self.path.split("?")[0], int(code) if str(code).isdigit() else 0))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)], cwd=ROOT,
                   check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Log, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


SEARCH_PROBE = """<html><body><pre id="out">pending</pre><script>
window.postMessage = (m) => {   /* the worker's replies: 1 ready, 3 results */
  if (m.type === 1) window.dispatchEvent(new MessageEvent("message", {data: {type: 2, data: "dropout"}}));
  if (m.type === 3) document.getElementById("out").textContent = "RESULT " + JSON.stringify(m.data);
};
</script><script src="WORKER"></script><script>
fetch("search/search_index.json").then(r => r.json()).then(index => window.dispatchEvent(
  new MessageEvent("message", {data: {type: 0, data: {...index, options: {suggest: false}}}})));
</script></body></html>"""


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", *extra, url],
                          capture_output=True, text=True, timeout=120)


def _pages(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out).parent) for p in out.rglob("index.html")
                  if not {"search", "assets"} & set(p.relative_to(out).parts))


def test_every_page_renders_math_images_and_no_console_errors(site):
    out, base = site
    pages = _pages(out)
    assert len(pages) >= 20
    failures = []
    for page in pages:
        _Log.requests.clear()
        url = f"{base}/{'' if page == '.' else page + '/'}"
        proc = _chromium(url, "--dump-dom")
        dom = proc.stdout
        errors = [l for l in proc.stderr.splitlines() if ":CONSOLE" in l]   # the pages log nothing when well
        bad = [(p, c) for p, c in _Log.requests if c >= 400]
        if errors or bad or 'class="md-content"' not in dom:
            failures.append(f"{page}: console {errors[:2]}, failed requests {bad[:3]}")
        html = (out / page / "index.html").read_text()
        if "arithmatex" in html and ('class="katex"' not in dom or "katex-error" in dom):
            failures.append(f"{page}: equations not typeset")
        fetched = {p for p, c in _Log.requests if c == 200}
        for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
            target = "/" + os.path.normpath(os.path.join(page, src)).lstrip("./") if not src.startswith("http") else src
            if target not in fetched:
                failures.append(f"{page}: image {src} not loaded")
    assert failures == []


def test_search_finds_a_chapter_and_screenshots(site, tmp_path):
    out, base = site
    # Material's own search worker, run in the page (headless chromium's dump does not wait for a Worker
    # thread), over the site's built index: the query reaches the chapter that teaches it.
    worker = next((out / "assets" / "javascripts" / "workers").glob("search.*.min.js")).relative_to(out)
    (out / "search_probe.html").write_text(SEARCH_PROBE.replace("WORKER", worker.as_posix()))
    dom = _chromium(f"{base}/search_probe.html", "--dump-dom").stdout
    assert "RESULT" in dom and "course/01_before_transformer/" in dom, dom[-2000:]
    shots = Path(os.environ.get("BROWSER_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    for name, page in [("home", ""), ("chapter1", "course/01_before_transformer/"), ("fp_guide", "fp_guide/")]:
        png = shots / f"{name}.png"
        _chromium(f"{base}/{page}", f"--screenshot={png}", "--window-size=1280,1600")
        assert png.is_file() and png.stat().st_size > 10_000, png
