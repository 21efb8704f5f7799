"""The built book, as a reader's browser shows it: headless Chromium, no network.

``make test`` builds the book cold and strictly, then runs

    pytest tests/test_book_html.py --book-html=_build/html

Without ``--book-html`` these tests are skipped (so ``pytest tests`` stays a quick unit-test run);
with it, a missing or empty build is a failure. The built HTML is served from a local
``http.server`` on 127.0.0.1 and opened in Debian's Chromium (``/usr/bin/chromium``, or the
``CHROMIUM`` environment variable), driven over the Chrome DevTools Protocol through
``--remote-debugging-pipe`` (stdlib only: no websocket client, no browser download). Chromium's
resolver is pointed at nothing but 127.0.0.1, and every request each page makes is recorded.

For every page in ``_toc.yml``, and the search page, the tests assert that

* every request stays on 127.0.0.1 (or is a ``data:``/``blob:`` URL) and none fails or returns >= 400;
* the page raises no JavaScript exception and logs no console error;
* every math element is typeset by MathJax (an ``mjx-container`` inside), no MathJax error box
  (undefined macros are errors, see ``mathjax3_config`` in ``_config.yml``), and no raw TeX
  (``$$``, ``$...$``, ``\\(``, ``\\[``, ``\\command``) is left in the visible text outside code;
* every ``<img>`` has loaded (``naturalWidth > 0``);
* searching for "ELBO" finds pages, offline.

A screenshot of each page is written to ``$BOOK_SCREENS`` (default ``/tmp/screens``) for a human look.
A static check also scans every HTML and CSS file for resources that would load from another host.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from book_toc import toc_docnames

ROOT = Path(__file__).resolve().parents[1]
SCREENS = Path(os.environ.get("BOOK_SCREENS", "/tmp/screens"))
PAGE_TIMEOUT = 60.0  # seconds for one page to load, typeset and report

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
    "--hide-scrollbars",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
    # Nothing but the local server resolves: a stray external request fails instead of leaking,
    # and it is still recorded (and fails the test).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,900",
]


# ---------------------------------------------------------------------------------------------
# Pages of the book
# ---------------------------------------------------------------------------------------------



PAGES = toc_docnames()


def source_has_math(docname: str) -> bool:
    """Whether the page's source contains TeX math outside code cells and code blocks."""
    for suffix in (".md", ".ipynb", ".rst"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            text = path.read_text(encoding="utf-8")
            text = re.sub(r"(?ms)^(`{3,}|~{3,}).*?^\1", "", text)  # drop fenced blocks
            text = re.sub(r"``.*?``|`[^`\n]*`", "", text)  # drop inline code
            return bool(re.search(r"\$[^$]+\$|\{math\}|\\begin\{", text))
    return False


# ---------------------------------------------------------------------------------------------
# A local web server and a Chromium driven over the DevTools protocol (pipe transport)
# ---------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium speaking the DevTools protocol over fds 3 and 4 (``--remote-debugging-pipe``)."""

    def __init__(self, executable: str, user_data_dir: str, log_path: Path) -> None:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Move the child's ends above fd 9 so the shell's 3<&N 4>&M redirections cannot clobber them.
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        cmd = [
            "/bin/bash",  # dash cannot redirect fds above 9
            "-c",
            f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-',
            executable,
            *CHROMIUM_FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={user_data_dir}",
            "about:blank",
        ]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(child_in, child_out),
            start_new_session=True,  # its own process group, so close() ends its helpers too
        )
        os.close(child_in)
        os.close(child_out)
        self._write_fd = to_chrome_w
        self._read_fd = from_chrome_r
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.send("Target.setDiscoverTargets", {"discover": False})

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError(f"no reply to {method} (browser {'exited' if self._closed else 'timed out'})")
                self._cond.wait(remaining)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, start: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[start:]:
                    if ev.get("method") == method and ev.get("sessionId") == session:
                        return ev
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise CDPError(f"no {method} event within {timeout:.0f} s")
                self._cond.wait(remaining)

    def session_events(self, session: str, start: int = 0) -> list[dict]:
        with self._cond:
            return [ev for ev in self.events[start:] if ev.get("sessionId") == session]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:  # helpers (renderer, zygote) that outlived the browser, by our own process group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for fd in (self._write_fd, self._read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


def _find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------




@pytest.fixture(scope="module")
def server(html_dir):
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(html_dir, tmp_path_factory):
    executable = _find_chromium()
    if executable is None:
        pytest.fail("Chromium not found: apt-get install -y chromium (or set CHROMIUM)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="elbo-book-chromium-")
    log = tmp_path_factory.mktemp("chromium") / "chromium.log"
    chrome = Chromium(executable, profile, log)
    yield chrome
    chrome.close()
    shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading one page and measuring it
# ---------------------------------------------------------------------------------------------

# Runs in the page after the load event: waits for MathJax and for every image, then reports.
PAGE_REPORT_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = [...document.images];
  await Promise.all(images.map(img => {
    img.loading = "eager";
    if (img.complete) return null;
    return new Promise(done => {
      img.addEventListener("load", done);
      img.addEventListener("error", done);
      setTimeout(done, 15000);
    });
  }));
  const rawTex = [];
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight, kbd, samp";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const pattern = /\$\$|\$[^$\s][^$]*\$|\\\(|\\\)|\\\[|\\\]|\\[A-Za-z]{2,}/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const text = node.textContent;
    if (pattern.test(text)) rawTex.push(text.trim().slice(0, 120));
  }
  const mathElements = [...document.querySelectorAll(".math")];
  return {
    title: document.title,
    mathElements: mathElements.length,
    untypeset: mathElements.filter(e => !e.querySelector("mjx-container"))
                            .map(e => e.textContent.trim().slice(0, 120)),
    mjxContainers: document.querySelectorAll("mjx-container").length,
    mathErrors: [...document.querySelectorAll("mjx-merror")]
                  .map(e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 120)),
    images: images.length,
    brokenImages: images.filter(i => !(i.complete && i.naturalWidth > 0))
                        .map(i => i.getAttribute("src")),
    rawTex: rawTex,
    mathjaxVersion: (window.MathJax && MathJax.version) || null,
  };
})()
"""


def _evaluate(chrome: Chromium, session: str, expression: str, timeout: float = PAGE_TIMEOUT):
    result = chrome.send(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True,
         "timeout": int(timeout * 1000)},
        session=session,
        timeout=timeout + 5,
    )
    if "exceptionDetails" in result:
        raise AssertionError(f"JavaScript failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def _is_favicon(url: str) -> bool:
    return urllib.parse.urlsplit(url).path == "/favicon.ico"


def new_tab(chrome: Chromium) -> tuple[str, str]:
    """A fresh 1280 x 900 tab with the Page, Network, Runtime and Log domains on and the cache off;
    returns (target id, session id). Close it with ``Target.closeTarget``."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        chrome.send(f"{domain}.enable", session=session)
    chrome.send("Network.setCacheDisabled", {"cacheDisabled": True}, session=session)
    chrome.send("Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
    return target, session


def open_page(chrome: Chromium, url: str, screenshot: Path | None = None):
    """Load ``url`` in a fresh tab; return (report, problems with network, console and scripts)."""
    target, session = new_tab(chrome)
    try:
        start = len(chrome.events)
        chrome.send("Page.navigate", {"url": url}, session=session)
        chrome.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        report = _evaluate(chrome, session, PAGE_REPORT_JS)
        time.sleep(0.3)  # let late requests (fonts, autoloaded MathJax extensions) be reported
        if screenshot is not None:
            shot = chrome.send("Page.captureScreenshot", {"format": "png"}, session=session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = chrome.session_events(session, start)
    finally:
        chrome.send("Target.closeTarget", {"targetId": target})
    return report, network_problems(events, url), events


def network_problems(events: list[dict], page_url: str) -> dict[str, list[str]]:
    origin = "{0.scheme}://{0.netloc}/".format(urllib.parse.urlsplit(page_url))
    requested, external, failed, errors = [], [], [], []
    urls = {}
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            requested.append(url)
            if not (url.startswith(origin) or url.startswith(("data:", "blob:", "about:"))):
                external.append(url)
        elif method == "Network.responseReceived":
            url, status = params["response"]["url"], params["response"]["status"]
            if status >= 400 and not _is_favicon(url):
                failed.append(f"{status} {url}")
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            if not _is_favicon(url) and not params.get("canceled"):
                failed.append(f"{params.get('errorText')} {url}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            if not _is_favicon(entry.get("url", "")):
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
    return {"requested": requested, "external": external, "failed": failed, "errors": errors}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("docname", PAGES)
def test_page_renders_offline(docname, html_dir, server, browser):
    html = html_dir / f"{docname}.html"
    assert html.is_file(), f"{docname} is in _toc.yml but {html} was not built"
    screenshot = SCREENS / f"{docname.replace('/', '_')}.png"
    report, net, _ = open_page(browser, f"{server}/{docname}.html", screenshot)

    assert net["requested"], "the page made no requests at all"
    assert not net["external"], f"{docname}: requests left the machine: {net['external']}"
    assert not net["failed"], f"{docname}: failed requests: {net['failed']}"
    assert not net["errors"], f"{docname}: JavaScript errors: {net['errors']}"

    if source_has_math(docname):
        assert report["mathElements"] > 0, f"{docname}: the source has math but the page has none"
    if report["mathElements"]:
        assert report["mathjaxVersion"], f"{docname}: MathJax did not load"
        assert report["mjxContainers"] >= report["mathElements"], report
    assert not report["untypeset"], f"{docname}: math not typeset: {report['untypeset']}"
    assert not report["mathErrors"], f"{docname}: MathJax errors: {report['mathErrors']}"
    assert not report["rawTex"], (
        f"{docname}: raw TeX left in the text (math MyST did not parse; a common cause is a line "
        f"inside $...$ that starts with '+ ', '- ' or '* ', which Markdown reads as a list item): "
        f"{report['rawTex']}"
    )
    assert not report["brokenImages"], f"{docname}: images that did not load: {report['brokenImages']}"


def test_search_works_offline(html_dir, server, browser):
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Page.enable", session=session)
        browser.send("Runtime.enable", session=session)
        start = len(browser.events)
        browser.send("Page.navigate", {"url": f"{server}/search.html?q=ELBO"}, session=session)
        browser.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        # Sphinx's searchtools lists matching objects first, then pages, then writes a summary.
        hits = _evaluate(browser, session, r"""
          new Promise(resolve => {
            const t0 = Date.now();
            (function poll() {
              const summary = document.querySelector("#search-results .search-summary");
              const done = summary && /found|did not match/i.test(summary.textContent);
              if (done || Date.now() - t0 > 30000) {
                resolve([...document.querySelectorAll("#search-results ul.search li a")]
                          .map(a => a.getAttribute("href")));
              } else setTimeout(poll, 100);
            })();
          })""")
        SCREENS.mkdir(parents=True, exist_ok=True)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        (SCREENS / "search.png").write_bytes(base64.b64decode(shot["data"]))
        events = browser.session_events(session, start)
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    assert hits, "searching the book for 'ELBO' found nothing"
    assert any("book/intro" in h for h in hits), hits
    net = network_problems(events, server + "/")
    assert not net["external"], net["external"]


def test_index_redirects_to_preface(html_dir, server, browser):
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Page.enable", session=session)
        browser.send("Page.navigate", {"url": f"{server}/index.html"}, session=session)
        deadline = time.monotonic() + PAGE_TIMEOUT
        path = ""
        while time.monotonic() < deadline:
            path = _evaluate(browser, session, "location.pathname")
            if path.endswith(f"/{PAGES[0]}.html"):
                break
            time.sleep(0.2)
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    assert path.endswith(f"/{PAGES[0]}.html"), f"index.html led to {path}"


_REMOTE = re.compile(r"^(https?:)?//", re.I)
_LOADING_TAG = re.compile(
    r"<(script|img|iframe|source|video|audio|embed)\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)"
    r"|<link\b(?=[^>]*\brel\s*=\s*[\"'][^\"']*(?:stylesheet|preload|modulepreload|icon|manifest))"
    r"[^>]*?\bhref\s*=\s*[\"']([^\"']+)",
    re.I,
)
_CSS_REMOTE = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])((?:https?:)?//[^\"')\s]+)", re.I)


def test_no_remote_resources_in_built_files(html_dir):
    """Static complement of the browser check: nothing in any built page or stylesheet loads remotely."""
    offenders = []
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        for match in _LOADING_TAG.finditer(text):
            url = match.group(2) or match.group(3)
            if _REMOTE.match(url):
                offenders.append(f"{page.relative_to(html_dir)}: {url}")
    for sheet in sorted(html_dir.rglob("*.css")):
        for url in _CSS_REMOTE.findall(sheet.read_text(encoding="utf-8", errors="replace")):
            offenders.append(f"{sheet.relative_to(html_dir)}: {url}")
    assert not offenders, "remote resources:\n" + "\n".join(offenders)


def test_every_figure_rendered_as_an_image(html_dir):
    """A matplotlib figure whose drawing fails (a mathtext error in a label, say) is still "displayed": IPython
    falls back to its text form, "<Figure size 1200x360 with 3 Axes>", and neither execution nor the strict
    build notices. The page would show that text where the figure belongs."""
    offenders = []
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"&lt;Figure size \d+x\d+ with \d+ Axes&gt;", text):
            offenders.append(f"{page.relative_to(html_dir)}: {match.group(0)}")
    assert not offenders, "figures shown as text (their PNG failed to render):\n" + "\n".join(offenders)



_RUN_TIME = re.compile(
    r'<p class="chapter-run-time"><strong>Run time: </strong>about (\d+ min(?: \d+ s)?|\d+ s), measured when this '
    r'page was built \(on \d+ CPU cores?\)\.</p>')


def test_every_chapter_says_its_measured_run_time(html_dir):
    """Each chapter's opening box ("Learning goals") ends with the run time myst-nb measured
    (_ext/run_time.py); it is not typed in the source."""
    chapters = [d for d in PAGES if re.search(r"(^|/)ch\d+_", d)]
    assert len(chapters) >= 12, chapters
    for docname in chapters:
        page = (html_dir / f"{docname}.html").read_text(encoding="utf-8")
        found = _RUN_TIME.findall(page)
        assert len(found) == 1, f"{docname}: expected one measured run time, found {found}"
        goals = page.index("Learning goals")
        assert goals < page.index('class="chapter-run-time"'), f"{docname}: run time outside the goals box"
        source = (ROOT / f"{docname}.md").read_text(encoding="utf-8")
        assert "Run time:" not in source, f"{docname}: the run time is typed in the source"

# ---------------------------------------------------------------------------------------------
# The live latent explorer of chapter 6 (_static/latent_explorer.js, vaelib/explorer.py)
# ---------------------------------------------------------------------------------------------

EXPLORER_PAGE = "book/ch6_generative"
# Codes inside the plane and far outside the prior, where logits are large and a naive sigmoid breaks.
EXPLORER_CODES = [[0.0, 0.0], [0.7, -1.3], [-2.5, 2.2], [3.4, 3.4], [8.0, -8.0], [30.0, 30.0],
                  [-30.0, 12.0], [-200.0, -150.0]]
_EXPLORER_DATA = re.compile(
    r'<script type="application/json" class="vaelib-explorer-data">([^<]*)</script>')


def explorer_reference(html_file: Path):
    """The model embedded in the page, loaded into vaelib VAEs of its shape: (payload, float32, float64).

    Read with NumPy from the documented layout (base64 little-endian float32, weight (out, in)), not
    through vaelib.explorer, so the test does not trust the code that wrote it.
    """
    import numpy as np
    import torch

    import vaelib

    found = _EXPLORER_DATA.findall(html_file.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{html_file}: expected one latent explorer, found {len(found)}"
    payload = json.loads(found[0])
    layers = payload["layers"]
    hidden = tuple(layer["out"] for layer in layers[:-1])
    models = []
    for dtype in (torch.float32, torch.float64):
        model = vaelib.VAE(payload["x_dim"], payload["z_dim"], hidden=tuple(reversed(hidden)), seed=0).to(dtype)
        linears = [*list(model.decoder.body)[::2], model.decoder.to_x]
        assert len(linears) == len(layers)
        with torch.no_grad():
            for lin, layer in zip(linears, layers):
                w = np.frombuffer(base64.b64decode(layer["weight"]), "<f4").reshape(layer["out"], layer["in"])
                b = np.frombuffer(base64.b64decode(layer["bias"]), "<f4")
                lin.weight.copy_(torch.from_numpy(w.copy()))
                lin.bias.copy_(torch.from_numpy(b.copy()))
        models.append(model)
    return payload, models[0], models[1]


# The explorer's state, as the test reads it after each action.
EXPLORER_STATE_JS = r"""
(() => {
  const X = window.vaelibExplorer;
  const ctx = X.image.getContext("2d");
  const [h, w] = X.imageShape;
  const drawn = Array.from(ctx.getImageData(0, 0, w, h).data.filter((_, i) => i % 4 === 0));
  return {z: X.getZ(), pixels: Array.from(X.pixels()), drawn: drawn,
          text: X.element.querySelector("output.vaelib-explorer-z").textContent,
          focused: document.activeElement === X.plane};
})()
"""

# Colours the reader sees, in each theme: the page, the explorer's text and its plane.
EXPLORER_LOOK_JS = r"""
(() => {
  const X = window.vaelibExplorer;
  const probe = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgb = css => { probe.clearRect(0, 0, 1, 1); probe.fillStyle = "#000"; probe.fillStyle = css;
                       probe.fillRect(0, 0, 1, 1); return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3)); };
  const style = e => getComputedStyle(e);
  // the background behind the explorer: the first opaque one among it and its ancestors
  let page = X.element;
  while (page && style(page).backgroundColor === "rgba(0, 0, 0, 0)") page = page.parentElement;
  const vars = style(X.element);
  const corner = Array.from(X.plane.getContext("2d").getImageData(2, 2, 1, 1).data.slice(0, 3));
  const readout = X.element.querySelector("output.vaelib-explorer-z");
  const legend = X.element.querySelector(".vaelib-explorer-legend");
  const section = X.element.closest("section");
  return {
    theme: document.documentElement.dataset.theme,
    page: rgb(page ? style(page).backgroundColor : "#fff"),
    readout: rgb(style(readout).color), legend: rgb(style(legend).color),
    caption: rgb(style(X.element.querySelector(".vaelib-explorer-caption")).color),
    help: rgb(style(X.element.querySelector(".vaelib-explorer-help")).color),
    planeBg: rgb(vars.getPropertyValue("--vx-plane-bg")), planeInk: rgb(vars.getPropertyValue("--vx-ink")),
    planeCorner: corner,
    tabIndex: X.plane.tabIndex, ariaLabel: X.plane.getAttribute("aria-label") || "",
    swatches: X.element.querySelectorAll(".vaelib-explorer-swatch").length,
    fallbackLeft: !!X.element.querySelector(".vaelib-explorer-fallback"),
    imagesInSection: section ? section.querySelectorAll("img").length : 0,
    planeCss: [X.plane.clientWidth, X.plane.clientHeight],
  };
})()
"""


def _luminance(rgb) -> float:
    def lin(c):
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _parse_readout(text: str) -> list[float]:
    m = re.fullmatch(r"z = \(([−-]?\d+\.\d\d), ([−-]?\d+\.\d\d)\)", text)
    assert m, f"the code is not shown as 'z = (z1, z2)': {text!r}"
    return [float(v.replace("−", "-")) for v in m.groups()]


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_latent_explorer(theme, html_dir, server, browser):
    """The explorer decodes like vaelib, follows a drag and the arrow keys, offline, in both themes."""
    import numpy as np
    import torch

    html_file = html_dir / f"{EXPLORER_PAGE}.html"
    assert html_file.is_file(), f"{html_file} was not built"
    payload, ref32, ref64 = explorer_reference(html_file)
    R = payload["extent"]

    chrome = browser
    target, session = new_tab(chrome)
    try:
        # The theme's default mode is "auto": it follows the reader's system preference.
        chrome.send("Emulation.setEmulatedMedia",
                    {"features": [{"name": "prefers-color-scheme", "value": theme}]}, session=session)
        start = len(chrome.events)
        chrome.send("Page.navigate", {"url": f"{server}/{EXPLORER_PAGE}.html"}, session=session)
        chrome.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        _evaluate(chrome, session, PAGE_REPORT_JS)

        def ev(js):
            return _evaluate(chrome, session, js)

        assert ev("typeof window.vaelibExplorer") == "object", "the explorer did not start"

        # 1. decode agrees with vaelib's decoder for the same weights, inside the plane and far outside.
        js = np.array(ev(f"{json.dumps(EXPLORER_CODES)}.map(z => Array.from(vaelibExplorer.decode(z)))"))
        z = torch.tensor(EXPLORER_CODES)
        with torch.no_grad():
            want32 = ref32.mean(z).double().numpy()
            want64 = ref64.mean(torch.tensor(EXPLORER_CODES, dtype=torch.float64)).numpy()
        assert js.shape == (len(EXPLORER_CODES), payload["x_dim"])
        assert np.isfinite(js).all() and (js >= 0).all() and (js <= 1).all()
        err32, err64 = np.abs(js - want32).max(), np.abs(js - want64).max()
        assert err32 < 1e-5, f"decode differs from vaelib's float32 decoder by {err32:.2e}"
        assert err64 < 1e-9, f"decode differs from the same model in float64 by {err64:.2e}"
        far = np.abs(np.array(ev("Array.from(vaelibExplorer.logits([30, 30]))"))).max()
        assert far > 30, f"[30, 30] should give large logits (the sigmoid's hard case), got {far:.1f}"

        # 2. what the reader sees: the decoded image, the code as text, a legend, both themes readable.
        ev("vaelibExplorer.element.scrollIntoView({block: 'center'})")
        time.sleep(0.2)
        look = ev(EXPLORER_LOOK_JS)
        assert look["theme"] == theme, look
        assert look["tabIndex"] >= 0 and len(look["ariaLabel"]) > 20, look
        assert look["swatches"] == 10 and not look["fallbackLeft"], look
        assert look["imagesInSection"] >= 1, "the static grid is no longer beside the explorer"
        assert look["planeCss"][0] >= 200 and look["planeCss"][0] == look["planeCss"][1], look
        for what in ("readout", "legend", "caption", "help"):
            assert _contrast(look[what], look["page"]) >= 4.5, (what, look)
        assert _contrast(look["planeInk"], look["planeBg"]) >= 4.5, look
        assert look["planeCorner"] == look["planeBg"], look
        assert (_luminance(look["planeBg"]) < 0.1) == (theme == "dark"), look

        def state():
            s = ev(EXPLORER_STATE_JS)
            p = np.array(s["pixels"])
            with torch.no_grad():
                want = ref64.mean(torch.tensor(s["z"], dtype=torch.float64)).numpy()
            assert np.abs(p - want).max() < 1e-9, "the image drawn is not the decoder's for z"
            drawn = np.array(s["drawn"])
            assert np.abs(drawn - np.round(255 * (1 - p))).max() <= 1, "the canvas does not show pixels()"
            assert np.allclose(_parse_readout(s["text"]), s["z"], atol=0.0051), s["text"]
            return s

        def shot(name):
            clip = ev("(() => { const r = vaelibExplorer.element.getBoundingClientRect();"
                      " return {x: r.x - 8 + scrollX, y: r.y - 8 + scrollY, width: r.width + 16,"
                      " height: r.height + 16, scale: 1}; })()")
            data = chrome.send("Page.captureScreenshot", {"format": "png", "clip": clip}, session=session)
            SCREENS.mkdir(parents=True, exist_ok=True)
            (SCREENS / f"explorer_{theme}_{name}.png").write_bytes(base64.b64decode(data["data"]))

        before = state()
        assert before["z"] == payload["start"]
        shot("0_start")

        # 3. a drag: press in the middle of the plane, move left and up, release.
        x, y, w, h = ev("(() => { const r = vaelibExplorer.plane.getBoundingClientRect();"
                        " return [r.x, r.y, r.width, r.height]; })()")
        cx, cy = x + 0.55 * w, y + 0.45 * h

        def mouse(kind, px, py, buttons):
            chrome.send("Input.dispatchMouseEvent",
                        {"type": kind, "x": px, "y": py, "button": "left" if kind != "mouseMoved" else
                         ("left" if buttons else "none"), "buttons": buttons, "clickCount": 1},
                        session=session)

        mouse("mouseMoved", cx, cy, 0)
        mouse("mousePressed", cx, cy, 1)
        pressed = state()
        assert pressed["z"] != before["z"], "pressing on the plane did not move the point there"
        assert pressed["focused"], "the plane did not take the keyboard focus when pressed"
        for k in range(1, 7):
            mouse("mouseMoved", cx - 10 * k, cy - 7 * k, 1)
        mouse("mouseReleased", cx - 60, cy - 42, 0)
        dragged = state()
        # 60 px left and 42 px up of a plane 2R wide in about w - 46 px: z1 down, z2 up
        per_px = 2 * R / (w - 46)
        assert dragged["z"][0] == pytest.approx(pressed["z"][0] - 60 * per_px, abs=0.05), dragged["z"]
        assert dragged["z"][1] == pytest.approx(pressed["z"][1] + 42 * per_px, abs=0.05), dragged["z"]
        assert np.abs(np.array(dragged["pixels"]) - np.array(before["pixels"])).max() > 0.05, \
            "dragging did not change the image"
        mouse("mouseMoved", cx + 50, cy + 50, 0)  # after the release the point stays
        assert state()["z"] == dragged["z"]
        shot("1_dragged")

        # 4. the arrow keys: one step right, a Shift step up.
        def key(name, code, modifiers=0):
            for kind in ("rawKeyDown", "keyUp"):
                chrome.send("Input.dispatchKeyEvent",
                            {"type": kind, "key": name, "code": name, "windowsVirtualKeyCode": code,
                             "modifiers": modifiers}, session=session)

        key("ArrowRight", 39)
        right = state()
        assert right["z"][0] == pytest.approx(dragged["z"][0] + 0.1, abs=1e-12)
        assert right["z"][1] == dragged["z"][1]
        assert np.abs(np.array(right["pixels"]) - np.array(dragged["pixels"])).max() > 1e-3, \
            "the arrow key did not change the image"
        key("ArrowUp", 38, modifiers=8)  # Shift
        up = state()
        assert up["z"] == [right["z"][0], pytest.approx(min(R, right["z"][1] + 0.5), abs=1e-12)]
        shot("2_keys")
        key("Home", 36)
        assert state()["z"] == payload["start"]
        # setZ clamps to the plane; decode does not.
        assert ev("vaelibExplorer.setZ([30, -30])") == [R, -R]
        # the reader switches the theme (the theme's button sets html[data-theme]): the plane follows.
        other = "light" if theme == "dark" else "dark"
        ev(f"document.documentElement.dataset.theme = '{other}'")
        switched = ev(EXPLORER_LOOK_JS)
        assert switched["planeCorner"] == switched["planeBg"] != look["planeBg"], switched
        assert _contrast(switched["readout"], switched["page"]) >= 4.5, switched

        events = chrome.session_events(session, start)
    finally:
        chrome.send("Target.closeTarget", {"targetId": target})
    net = network_problems(events, f"{server}/{EXPLORER_PAGE}.html")
    assert not net["external"], f"requests left the machine: {net['external']}"
    assert not net["failed"], f"failed requests: {net['failed']}"
    assert not net["errors"], f"JavaScript errors: {net['errors']}"


def evaluate_from_file(browser, html_file: Path, expression: str):
    """Open ``html_file`` from file:// (no server) in a new tab, evaluate ``expression`` there once the page
    has loaded, and return ``(its value, the page's URL, the tab's events)``."""
    url = html_file.resolve().as_uri()
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for domain in ("Page", "Runtime"):
            browser.send(f"{domain}.enable", session=session)
        start = len(browser.events)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        result = _evaluate(browser, session, expression)
        events = browser.session_events(session, start)
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    return result, url, events


def test_latent_explorer_from_file(html_dir, browser):
    """Opened from file:// (no server), the explorer starts and decodes: its data is inline."""
    result, url, events = evaluate_from_file(
        browser, html_dir / f"{EXPLORER_PAGE}.html",
        "(() => { const X = window.vaelibExplorer; return X ? [X.decode([1, -1]).length, X.getZ()] : null; })()")
    assert result is not None, "the explorer did not start from file://"
    assert result[0] == 784
    explorer_errors = [e for e in network_problems(events, url)["errors"] if "explorer" in str(e).lower()]
    assert not explorer_errors, explorer_errors


# ---------------------------------------------------------------------------------------------
# The live reverse process of chapter 12 (_static/diffusion_explorer.js,
# vaelib.explorer.reverse_process_html)
# ---------------------------------------------------------------------------------------------

DIFFUSION_PAGE = "book/ch12_diffusion"
_DIFFUSION_DATA = re.compile(
    r'<script type="application/json" class="vaelib-diffusion-data">([^<]*)</script>')
# run(noise) against vaelib's reverse_process in float64 on the same weights and noise: both compute in
# float64 from the same float32 weights, so they differ only by rounding (summation order, sin/exp in
# the last bit), about 1e-15, carried through 100 steps; 1e-9 of the cloud's scale leaves room for that
# and catches any wrong formula (a float32 network would already miss it by 1e-7).
DIFFUSION_RTOL = 1e-9


def diffusion_reference(html_file: Path):
    """The sampler's payload and the model it holds, rebuilt as a float64 vaelib Diffusion.

    The weights are read with NumPy from the documented layout (base64 little-endian float32, weight
    (out, in) row-major) and copied into a fresh DenoisingMLP, not loaded through vaelib's export code,
    so the test does not trust the code that wrote them. The schedule is the payload's table of log-SNRs
    on the grid t = 1 - k/T (all that the reverse process asks of it), checked to fall from t = 0 to 1.
    """
    import numpy as np
    import torch

    from vaelib.diffusion import DenoisingMLP, Diffusion, Schedule

    found = _DIFFUSION_DATA.findall(html_file.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{html_file}: expected one diffusion sampler, found {len(found)}"
    payload = json.loads(found[0])
    assert payload["format"] == "vaelib-diffusion/1" and payload["x_dim"] == 2, payload["format"]
    T = payload["steps"]
    lam = np.array(payload["logsnr"], dtype=np.float64)
    assert lam.shape == (T + 1,) and np.all(np.diff(lam) > 0), "log-SNRs must rise from t = 1 to t = 0"

    class Table(Schedule):
        """lambda_t at the grid's times t = 1 - k/T, as the payload lists them."""

        def logsnr(self, t):
            t = self._t(t)
            k = torch.round((1 - t.double()) * T)
            assert torch.allclose(k, (1 - t.double()) * T, atol=1e-9), "a time off the grid"
            return torch.from_numpy(lam)[k.long()].to(t.dtype)

    layers, blocks, omega = payload["layers"], payload["blocks"], payload["omega"]
    assert len(layers) == 2 + 2 * blocks and layers[0]["in"] == 2 + 2 * len(omega)
    net = DenoisingMLP(2, width=layers[0]["out"], blocks=blocks, frequencies=len(omega), seed=0).double()
    linears = [net.inp, *[lin for block in net.hidden for lin in block], net.out]
    with torch.no_grad():
        net.omega.copy_(torch.tensor(omega, dtype=torch.float64))
        for lin, layer in zip(linears, layers, strict=True):
            w = np.frombuffer(base64.b64decode(layer["weight"]), "<f4").reshape(layer["out"], layer["in"])
            b = np.frombuffer(base64.b64decode(layer["bias"]), "<f4")
            assert lin.weight.shape == w.shape and lin.bias.shape == b.shape
            lin.weight.copy_(torch.from_numpy(w.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
    model = Diffusion(net, 2, Table(float(lam[-1]), float(lam[0])))
    return payload, model


def diffusion_trajectory(model, noise):
    """vaelib's reverse_process of ``model`` (float64) from ``noise`` (T + 1, m, 2), as NumPy."""
    import numpy as np
    import torch

    from vaelib.diffusion import reverse_process

    noise = torch.as_tensor(np.asarray(noise, dtype=np.float64))
    return reverse_process(model, noise.shape[1], noise.shape[0] - 1, noise=noise).numpy()


def _close(got, want, what):
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max() / (1 + np.abs(want).max())
    assert err < DIFFUSION_RTOL, f"{what}: differs from vaelib's reverse_process by {err:.2e} (relative)"
    return err


# The sampler's state, as the test reads it after each action: the step, the cloud, what the slider and
# the text say, and what the canvas shows (a checksum, and how many points have a point-coloured pixel at
# their centre).
DIFFUSION_STATE_JS = r"""
(() => {
  const X = window.vaelibDiffusion, c = X.plane, g = c.getContext("2d");
  const probe = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgb = css => { probe.clearRect(0, 0, 1, 1); probe.fillStyle = "#000"; probe.fillStyle = css;
                       probe.fillRect(0, 0, 1, 1);
                       return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3)); };
  const vars = getComputedStyle(X.element);
  const bg = rgb(vars.getPropertyValue("--vd-plane-bg")), pt = rgb(vars.getPropertyValue("--vd-point"));
  const img = g.getImageData(0, 0, c.width, c.height).data;
  let sum = 0;
  for (let i = 0; i < img.length; i += 4) sum = (sum * 31 + img[i] + 7 * img[i + 1] + 13 * img[i + 2]) % 1000000007;
  // the plot square, as the script lays it out (margins 38, 8, 8, 32 CSS pixels)
  const dpr = window.devicePixelRatio || 1, W = c.width, x0 = 38 * dpr, y0 = 8 * dpr;
  const side = Math.min(W - x0 - 8 * dpr, W - y0 - 32 * dpr), R = X.extent;
  const pts = X.points();
  let inside = 0, marked = 0;
  const dist = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  for (const [x, y] of pts) {
    const px = Math.round(x0 + (x + R) / (2 * R) * side - 0.5), py = Math.round(y0 + (R - y) / (2 * R) * side - 0.5);
    if (px < x0 + 3 || py < y0 + 3 || px > x0 + side - 3 || py > y0 + side - 3) continue;
    inside++;
    const i = 4 * (py * W + px), p = [img[i], img[i + 1], img[i + 2]];
    if (dist(p, pt) < dist(p, bg) && dist(p, bg) > 40) marked++;
  }
  return {step: X.step, t: X.t, ready: X.ready, points: pts, checksum: sum, inside: inside, marked: marked,
          slider: Number(X.slider.value), valuetext: X.slider.getAttribute("aria-valuetext"),
          text: X.element.querySelector("output.vaelib-diffusion-t").textContent,
          label: X.plane.getAttribute("aria-label"), focused: document.activeElement === X.slider};
})()
"""

# Colours the reader sees, in each theme: the page, the sampler's text, its buttons and its plane.
DIFFUSION_LOOK_JS = r"""
(() => {
  const X = window.vaelibDiffusion;
  const probe = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgb = css => { probe.clearRect(0, 0, 1, 1); probe.fillStyle = "#000"; probe.fillStyle = css;
                       probe.fillRect(0, 0, 1, 1);
                       return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3)); };
  const style = e => getComputedStyle(e);
  let page = X.element;
  while (page && style(page).backgroundColor === "rgba(0, 0, 0, 0)") page = page.parentElement;
  const vars = style(X.element), q = s => X.element.querySelector(s);
  const text = {};
  for (const s of [".vaelib-diffusion-caption", ".vaelib-diffusion-legend", ".vaelib-diffusion-ends",
                   "output.vaelib-diffusion-t", ".vaelib-diffusion-status", ".vaelib-diffusion-help"]) {
    text[s] = q(s) ? rgb(style(q(s)).color) : null;
  }
  const buttons = [X.playButton, X.resampleButton].map(b => ({
    ink: rgb(style(b).color), bg: rgb(style(b).backgroundColor), label: b.textContent,
    type: b.type, disabled: b.disabled}));
  return {
    theme: document.documentElement.dataset.theme,
    page: rgb(page ? style(page).backgroundColor : "#fff"), text: text, buttons: buttons,
    planeBg: rgb(vars.getPropertyValue("--vd-plane-bg")), planeInk: rgb(vars.getPropertyValue("--vd-ink")),
    point: rgb(vars.getPropertyValue("--vd-point")),
    planeCorner: Array.from(X.plane.getContext("2d").getImageData(2, 2, 1, 1).data.slice(0, 3)),
    planeCss: [X.plane.clientWidth, X.plane.clientHeight],
    sliderLabels: X.slider.labels ? X.slider.labels.length : 0,
    sliderType: X.slider.type, sliderRange: [X.slider.min, X.slider.max].map(Number),
    planeRole: X.plane.getAttribute("role"), planeLabel: X.plane.getAttribute("aria-label") || "",
    fallbackLeft: !!q(".vaelib-diffusion-fallback"),
    error: q(".vaelib-diffusion-error") ? q(".vaelib-diffusion-error").textContent : null,
    status: q(".vaelib-diffusion-status").textContent,
  };
})()
"""


def _press_key(chrome: Chromium, session: str, name: str, code: int) -> None:
    for kind in ("rawKeyDown", "keyUp"):
        chrome.send("Input.dispatchKeyEvent",
                    {"type": kind, "key": name, "code": name, "windowsVirtualKeyCode": code}, session=session)


def _click(chrome: Chromium, session: str, x: float, y: float) -> None:
    chrome.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y, "button": "none",
                                             "buttons": 0}, session=session)
    for kind, buttons in (("mousePressed", 1), ("mouseReleased", 0)):
        chrome.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                 "buttons": buttons, "clickCount": 1}, session=session)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_diffusion_sampler(theme, html_dir, server, browser):
    """The in-page reverse process computes vaelib's, follows the slider and the buttons, offline, in both themes."""
    import numpy as np
    import torch

    html_file = html_dir / f"{DIFFUSION_PAGE}.html"
    assert html_file.is_file(), f"{html_file} was not built"
    payload, model = diffusion_reference(html_file)
    T, n = payload["steps"], payload["n"]

    chrome = browser
    target, session = new_tab(chrome)
    try:
        chrome.send("Emulation.setEmulatedMedia",
                    {"features": [{"name": "prefers-color-scheme", "value": theme}]}, session=session)
        start = len(chrome.events)
        chrome.send("Page.navigate", {"url": f"{server}/{DIFFUSION_PAGE}.html"}, session=session)
        chrome.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        _evaluate(chrome, session, PAGE_REPORT_JS)

        def ev(js):
            return _evaluate(chrome, session, js)

        assert ev("typeof window.vaelibDiffusion") == "object", "the sampler did not start"
        assert ev("vaelibDiffusion.whenReady()") is True, "the sampler's first computation did not finish"
        assert (ev("vaelibDiffusion.steps"), ev("vaelibDiffusion.n")) == (T, n)

        # 1. run(noise) is vaelib's reverse_process on the same noise (float64, same weights).
        noise = torch.randn(T + 1, 64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        want = diffusion_trajectory(model, noise)
        got = ev(f"vaelibDiffusion.run({json.dumps(noise.tolist())})")
        err = _close(got, want, "run(noise)")
        flat = ev(f"Array.from(vaelibDiffusion.run(new Float64Array({json.dumps(noise.flatten().tolist())})))")
        assert np.array_equal(np.array(flat), np.array(got).ravel()), "the flat layout gives other numbers"
        for bad in ("[[[0, 0]]]", "new Float64Array(7)", "null", f"Array({T + 1}).fill([[0, NaN]])"):
            assert ev(f"(() => {{ try {{ vaelibDiffusion.run({bad}); return null; }}"
                      f" catch (e) {{ return e.name; }} }})()") in ("RangeError", "TypeError"), bad
        spread = np.abs(want[-1]).max()
        assert 0.5 < spread < 2 * payload["extent"], f"the samples reach {spread:.2f}: not the ring"
        # the network alone, at points and log-SNRs inside and far outside the grid
        zs = [[0.0, 0.0], [0.7, -1.3], [3.0, 2.5], [-40.0, 25.0]]
        for lam in (payload["logsnr"][0], 0.37, payload["logsnr"][-1], 25.0):
            js = np.array([ev(f"vaelibDiffusion.eps({json.dumps(z)}, {lam!r})") for z in zs])
            with torch.no_grad():
                ref = model.net(torch.tensor(zs, dtype=torch.float64), torch.full((4,), lam, dtype=torch.float64))
            assert np.abs(js - ref.numpy()).max() < 1e-12 * (1 + np.abs(ref.numpy()).max()), (lam, js, ref)

        # 2. what the reader sees first: the samples (t = 0) of the page's own noise, drawn.
        ev("vaelibDiffusion.element.scrollIntoView({block: 'center'})")
        time.sleep(0.2)
        page_noise = np.array(ev("vaelibDiffusion.noise()"))
        assert page_noise.shape == (T + 1, n, 2)
        assert abs(page_noise.mean()) < 0.05 and abs(page_noise.std() - 1) < 0.05, "the noise is not N(0, 1)"
        traj = diffusion_trajectory(model, page_noise)

        def state():
            s = ev(DIFFUSION_STATE_JS)
            assert s["slider"] == s["step"] and s["t"] == pytest.approx(1 - s["step"] / T, abs=1e-15)
            _close(s["points"], traj[s["step"]], f"the cloud drawn at step {s['step']}")
            assert s["inside"] == 0 or s["marked"] >= 0.98 * s["inside"], \
                f"only {s['marked']} of {s['inside']} points in the plane are drawn"
            t_text = f"{1 - s['step'] / T:.2f}"
            assert s["valuetext"] == f"t = {t_text}, step {s['step']} of {T}", s["valuetext"]
            assert s["text"].split()[:3] == ["t", "=", t_text], s["text"]
            assert f"t = {t_text}" in s["label"], s["label"]
            return s

        def shot(name):
            clip = ev("(() => { const r = vaelibDiffusion.element.getBoundingClientRect();"
                      " return {x: r.x - 8 + scrollX, y: r.y - 8 + scrollY, width: r.width + 16,"
                      " height: r.height + 16, scale: 1}; })()")
            data = chrome.send("Page.captureScreenshot", {"format": "png", "clip": clip}, session=session)
            SCREENS.mkdir(parents=True, exist_ok=True)
            (SCREENS / f"diffusion_{theme}_{name}.png").write_bytes(base64.b64decode(data["data"]))

        first = state()
        assert first["step"] == T and first["ready"], first["step"]
        assert first["inside"] > 0.9 * n, "most samples should lie in the plane"
        shot("0_samples")

        look = ev(DIFFUSION_LOOK_JS)
        assert look["theme"] == theme, look
        assert look["error"] is None and not look["fallbackLeft"], look
        assert look["sliderType"] == "range" and look["sliderRange"] == [0, T] and look["sliderLabels"] >= 1, look
        assert look["planeRole"] == "img" and len(look["planeLabel"]) > 20, look
        assert look["planeCss"][0] >= 200 and look["planeCss"][0] == look["planeCss"][1], look
        for what, colour in look["text"].items():
            assert colour is not None, f"{what} is missing"
            assert _contrast(colour, look["page"]) >= 4.5, (what, look)
        for b in look["buttons"]:
            assert b["type"] == "button" and not b["disabled"], b
            assert _contrast(b["ink"], b["bg"]) >= 4.5, b
        assert [b["label"] for b in look["buttons"]] == ["Play", "New samples"], look["buttons"]
        assert _contrast(look["planeInk"], look["planeBg"]) >= 4.5, look
        assert _contrast(look["point"], look["planeBg"]) >= 3, look  # a graphic: WCAG's 3:1
        assert look["planeCorner"] == look["planeBg"], look
        assert (_luminance(look["planeBg"]) < 0.1) == (theme == "dark"), look
        assert "computed" in look["status"], look["status"]

        # 3. the slider, with real input: a click in its middle, then the keyboard.
        x, y, w, h = ev("(() => { const r = vaelibDiffusion.slider.getBoundingClientRect();"
                        " return [r.x, r.y, r.width, r.height]; })()")
        _click(chrome, session, x + w / 2, y + h / 2)
        mid = state()
        assert abs(mid["step"] - T / 2) <= 2, mid["step"]
        assert mid["focused"], "the slider did not take the keyboard focus when clicked"
        assert mid["checksum"] != first["checksum"], "moving the slider did not redraw the cloud"
        shot("1_middle")
        _press_key(chrome, session, "Home", 36)
        noise_state = state()
        assert noise_state["step"] == 0 and noise_state["valuetext"].startswith("t = 1.00"), noise_state["valuetext"]
        assert np.array_equal(np.array(noise_state["points"]), page_noise[0]), "t = 1 must show z_1, the noise"
        shot("2_noise")
        _press_key(chrome, session, "ArrowRight", 39)
        _press_key(chrome, session, "ArrowRight", 39)
        assert state()["step"] == 2
        _press_key(chrome, session, "End", 35)
        end = state()
        assert end["step"] == T and end["checksum"] == first["checksum"], "End should show the samples again"
        assert ev("vaelibDiffusion.setStep(1e9)") == T and ev("vaelibDiffusion.setStep(-3)") == 0
        assert ev("vaelibDiffusion.setStep(37)") == 37
        state()

        # 4. "New samples", clicked: new noise, a new trajectory, computed in slices (the page stays live).
        ev("""(() => { window.__vdLong = []; window.__vdChanges = 0;
                new PerformanceObserver(l => l.getEntries().forEach(e => __vdLong.push(e.duration)))
                  .observe({type: "longtask"});
                vaelibDiffusion.element.addEventListener("vaelib-diffusion-change", () => __vdChanges++);
                vaelibDiffusion.element.addEventListener("vaelib-diffusion-ready",
                                                         e => { window.__vdReady = e.detail; });
              })()""")
        bx, by = ev("(() => { const r = vaelibDiffusion.resampleButton.getBoundingClientRect();"
                    " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        _click(chrome, session, bx, by)
        busy = ev("[vaelibDiffusion.ready, vaelibDiffusion.element.getAttribute('aria-busy'),"
                  " vaelibDiffusion.element.querySelector('.vaelib-diffusion-status').textContent]")
        assert busy[0] is False and busy[1] == "true" and busy[2].startswith("computing"), busy
        assert ev("vaelibDiffusion.whenReady()") is True
        long_tasks = ev("__vdLong")
        # the observer works: a 120 ms block of the main thread is reported
        assert ev("new Promise(done => { setTimeout(() => { const t0 = performance.now();"
                  " while (performance.now() - t0 < 120) {} }, 0);"
                  " setTimeout(() => done(__vdLong.length > 0 && Math.max(...__vdLong) >= 100), 400); })"), \
            "the long-task observer reports nothing: the check above would be empty"
        assert ev("__vdChanges") >= 2, "the plane did not follow the computation"
        assert max(long_tasks, default=0) < 250, f"the computation froze the page for {max(long_tasks):.0f} ms"
        compute_ms = ev("vaelibDiffusion.computeMs")
        ready = ev("window.__vdReady")
        assert ready and ready["computeMs"] == compute_ms and ready["wallMs"] >= compute_ms, ready
        new_noise = np.array(ev("vaelibDiffusion.noise()"))
        assert not np.array_equal(new_noise, page_noise), "New samples did not draw new noise"
        traj = diffusion_trajectory(model, new_noise)
        again = state()
        assert again["step"] == T and again["checksum"] != first["checksum"], "the cloud did not change"
        shot("3_new_samples")

        # 5. "Play" runs the slider from t = 1 to t = 0.
        px, py = ev("(() => { const r = vaelibDiffusion.playButton.getBoundingClientRect();"
                    " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        ev("window.__vdChanges = 0")
        _click(chrome, session, px, py)
        assert ev("vaelibDiffusion.playing") is True
        assert ev("new Promise(done => { const t0 = Date.now(); (function wait() {"
                  " if (!vaelibDiffusion.playing || Date.now() - t0 > 20000) done(vaelibDiffusion.playing);"
                  " else setTimeout(wait, 50); })(); })") is False, "Play did not finish"
        assert ev("__vdChanges") >= 5 and state()["step"] == T

        # 6. the reader switches the theme (the theme's button sets html[data-theme]): the plane follows.
        other = "light" if theme == "dark" else "dark"
        ev(f"document.documentElement.dataset.theme = '{other}'")
        switched = ev(DIFFUSION_LOOK_JS)
        assert switched["planeCorner"] == switched["planeBg"] != look["planeBg"], switched
        assert _contrast(switched["text"]["output.vaelib-diffusion-t"], switched["page"]) >= 4.5, switched

        events = chrome.session_events(session, start)
    finally:
        chrome.send("Target.closeTarget", {"targetId": target})
    print(f"diffusion sampler ({theme}): {n} points x {T} steps computed in {compute_ms:.0f} ms "
          f"({ready['wallMs']:.0f} ms from the click to the last slice), "
          f"longest task {max(long_tasks, default=0):.0f} ms; run(noise) within {err:.1e} of vaelib")
    net = network_problems(events, f"{server}/{DIFFUSION_PAGE}.html")
    assert not net["external"], f"requests left the machine: {net['external']}"
    assert not net["failed"], f"failed requests: {net['failed']}"
    assert not net["errors"], f"JavaScript errors: {net['errors']}"


def test_diffusion_sampler_from_file(html_dir, browser):
    """Opened from file:// (no server), the sampler starts and computes: its data is inline."""
    result, url, events = evaluate_from_file(browser, html_dir / f"{DIFFUSION_PAGE}.html", """(async () => {
            const X = window.vaelibDiffusion;
            if (!X) return null;
            const ready = await X.whenReady();
            const noise = Array.from({length: X.steps + 1}, () => [[0.5, -0.5]]);
            return [ready, X.step, X.points().length, X.run(noise).length, X.run(noise)[X.steps][0].length]; })()""")
    assert result is not None, "the sampler did not start from file://"
    ready, step, n_points, rows, d = result
    assert ready is True and rows == step + 1 and d == 2 and n_points > 0, result
    errors = [e for e in network_problems(events, url)["errors"] if "diffusion" in str(e).lower()]
    assert not errors, errors
