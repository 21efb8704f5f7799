"""The built book on a phone (400 px wide) and on a wide screen (1400 px): headless Chromium, no network.

Needs the built book, like tests/test_book_html.py (whose Chromium helper and local server it uses):

    pytest tests/test_phone.py --book-html=_build/html

For every page of ``_toc.yml``, at 400 CSS px (a phone: mobile viewport, overlay scrollbars):

* the page itself never scrolls sideways (``documentElement.scrollWidth <= clientWidth``);
* nothing in the article is wider than its container unless it can be scrolled sideways: every element
  whose right edge passes the article's (or that a ``hidden`` ancestor clips) must be inside a box with
  ``overflow-x: auto`` or ``scroll`` within the article; text that runs out of its box (a long word in a
  title) counts too;
* every box that does scroll sideways shows it: phones hide scrollbars until one scrolls, so the box
  fades out at each edge where content is hidden (``_static/book.css`` draws the fade, ``_static/book.js``
  follows the scroll position), and the test checks the box's computed ``mask-image``; a display
  equation, table or output block that scrolls without it is reported as "scrolls ... with nothing to
  show it";
* the figures' text is large enough as displayed: the smallest text of each figure image is measured on
  the PNG itself (``figure_text_px``: glyph heights of its text lines, calibrated against matplotlib
  figures of known font sizes by ``test_figure_text_estimate_is_calibrated``) and scaled by the
  displayed width over the natural width; every figure is reported; every figure image is a link to
  itself at full size (``_static/book.js``), which is what a reader taps to read a dense figure, and its
  text must reach ``MIN_PHONE_FIGURE_TEXT_PX`` as displayed and ``MIN_FULL_SIZE_FIGURE_TEXT_PX`` at full
  size (see there for why those numbers).

At 1400 CSS px no display equation is cut (each fits, or scrolls with the cue), the page does not scroll
sideways, and every figure's text reaches ``MIN_DESKTOP_FIGURE_TEXT_PX``.

Also checked here, as a reader sees them: each proof ends with an end mark (∎, ``_static/book.css``); the
Performance page's execution table says "passed" in text (myst-nb writes an emoji that shows as an empty
box without an emoji font; ``_static/book.js``); search results show math as text, not raw TeX.

Running this file as a script prints the measurements for a built book (no assertions), for comparing
builds::

    .venv/bin/python tests/test_phone.py --book-html=_build/html [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import posixpath
import re
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_book_html import (  # noqa: E402  (the browser helper and fixtures of the built-book tests)
    PAGE_REPORT_JS,
    PAGE_TIMEOUT,
    PAGES,
    SCREENS,
    Chromium,
    _evaluate,
    _find_chromium,
    browser,  # noqa: F401  (fixture)
    server,  # noqa: F401  (fixture)
)

PHONE = {"width": 400, "height": 860, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}

# Smallest figure text (the font size of its smallest text, estimated by figure_text_px, within about
# 10 %), in CSS px as displayed. The issue asks for about 9 px. Measured on the build of 2026-12-07, with
# the chapters' figures redrawn for phones (larger fonts, narrower figures):
# * at 1400 px every figure shows its smallest text at 9.4 px or more (before the redraw from 6.5 px,
#   nine figures below 9), so a desktop reader reads every figure as it stands:
#   MIN_DESKTOP_FIGURE_TEXT_PX = 9;
# * at 400 px a figure is as wide as the column, 368 px, so a figure drawn 10 inches wide shows at 36 %
#   and its 10 pt text at 5 px; 9 px would take 25 pt fonts, which no multi-panel figure can use. The
#   38 figures' text measured 4.3-12.4 px (median 7.8; before the redraw 3.1-12.9, median 5.7). There
#   the reader taps the figure, which opens it at full size (every figure is a link to its image,
#   _static/book.js), where its text must reach MIN_FULL_SIZE_FIGURE_TEXT_PX = 10 (measured: 12.1 px and
#   more); as displayed it must reach MIN_PHONE_FIGURE_TEXT_PX = 4, below which it is not even a
#   readable overview: the seven worst figures of the old book (3.1-3.8 px, shown at 27-36 %) fail it.
MIN_DESKTOP_FIGURE_TEXT_PX = 9.0
MIN_PHONE_FIGURE_TEXT_PX = 4.0
MIN_FULL_SIZE_FIGURE_TEXT_PX = 10.0


# ---------------------------------------------------------------------------------------------
# What the page looks like at one width (runs in the page, after PAGE_REPORT_JS has waited for
# MathJax and the images)
# ---------------------------------------------------------------------------------------------

PHONE_REPORT_JS = r"""
(async () => {
  await document.fonts.ready;  // widths change when MathJax's and the theme's web fonts arrive
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));  // book.js's update
  const article = document.querySelector("article.bd-article") || document.querySelector('[role="main"]');
  const doc = document.documentElement;
  const style = e => getComputedStyle(e);
  const aRect = article.getBoundingClientRect();
  const limit = Math.min(aRect.right, doc.clientWidth);
  const SLACK = 1;  // px: sub-pixel layout
  const scrolls = v => v === "auto" || v === "scroll";
  const clips = v => v === "hidden" || v === "clip";
  const kindOf = e => {
    if (e.closest('mjx-container[display="true"]')) return "display equation";
    if (e.closest("mjx-container, span.math")) return "inline math";
    if (e.closest("table, .pst-scrollable-table-container")) return "table";
    if (e.closest("pre, div.highlight")) return "code or output";
    if (e.closest("h1")) return "title";
    if (e.closest("h2, h3, h4, h5, h6")) return "heading";
    if (e.closest("img, figure")) return "figure";
    return e.tagName.toLowerCase();
  };
  const where = e => {
    const s = e.closest("section[id]");
    const fig = e.closest("figure[id]");
    if (e.tagName === "IMG") return (fig ? "#" + fig.id : s ? "#" + s.id : "") + ": " + (e.alt || "").slice(0, 60);
    const eq = e.closest("div.math[id]");
    const text = (e.closest("div.math, table, pre, h1, h2, h3, p, li, figure") || e).textContent
                   .replace(/\s+/g, " ").trim().slice(0, 70);
    return (eq ? "#" + eq.id : s ? "#" + s.id : "") + ": " + text;
  };
  // the nearest box (an ancestor within the article, or the element itself) that does not let
  // content overflow visibly
  const box = (e, self) => {
    for (let a = self ? e : e.parentElement; a && article.contains(a); a = a.parentElement) {
      if (style(a).overflowX !== "visible") return a;
    }
    return null;
  };
  // how much wider the content of a sideways-scrolling box is than the box: for math, the typeset
  // formula (mjx-math), since the hidden assistive MathML can inflate scrollWidth
  const excess = e => {
    const m = e.matches("mjx-container, span.math") && e.querySelector("mjx-math");
    if (!m) return e.scrollWidth - e.clientWidth;
    return m.getBoundingClientRect().right - e.getBoundingClientRect().left + e.scrollLeft - e.clientWidth;
  };
  // the cue: the box fades out at the edge where content is hidden (_static/book.css, book.js)
  const hasCue = e => /gradient/.test(style(e).maskImage || style(e).webkitMaskImage || "");
  const seen = new Set();
  const cut = [];
  const scrollers = [];
  const report = (e, how, over) => {
    for (let a = e; a; a = a.parentElement) if (seen.has(a)) return;  // report the outermost only
    seen.add(e);
    cut.push({kind: kindOf(e), how: how, over: Math.round(over), where: where(e),
              element: e.tagName.toLowerCase() + (typeof e.className === "string" && e.className.trim()
                       ? "." + e.className.trim().split(/\s+/).join(".") : "")});
  };
  for (const e of article.querySelectorAll("*")) {
    if (e.closest("mjx-container") && e.tagName.toLowerCase() !== "mjx-container") continue;
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (scrolls(style(e).overflowX) && excess(e) > SLACK) {
      scrollers.push({kind: kindOf(e), cue: hasCue(e), over: Math.round(excess(e)), where: where(e)});
    }
    const b = box(e, false);
    if (b && scrolls(style(b).overflowX)) continue;  // inside a sideways-scrolling box: reachable
    const right = b ? Math.min(b.getBoundingClientRect().right, limit) : limit;
    if (r.right > right + SLACK) report(e, b ? "clipped" : "wider than the article", r.right - right);
  }
  // text that runs out of its element (a long word in a title, a long inline code span)
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const p = t.parentElement;
    if (!p || !t.textContent.trim() || p.closest("mjx-container, script, style")) continue;
    const b = box(p, true);
    if (b && scrolls(style(b).overflowX)) continue;
    range.selectNodeContents(t);
    const right = b ? Math.min(b.getBoundingClientRect().right, limit) : limit;
    const rr = range.getBoundingClientRect();
    if (rr.width > 0 && rr.right > right + SLACK) report(p, "text runs out", rr.right - right);
  }
  const equations = [...article.querySelectorAll('mjx-container[display="true"]')].map(e => {
    const r = e.getBoundingClientRect();
    return {wide: excess(e) > SLACK || r.right > limit + SLACK,
            scrolls: scrolls(style(e).overflowX), cue: hasCue(e), where: where(e)};
  });
  const h1 = article.querySelector("h1");
  const images = [...article.querySelectorAll("img")].filter(i => i.naturalWidth > 0).map(i => {
    const link = i.closest("a[href]");
    return {src: i.getAttribute("src"), natural: i.naturalWidth, shown: i.getBoundingClientRect().width,
            link: link ? link.getAttribute("href") : null, where: where(i)};
  });
  const proofs = [...article.querySelectorAll("div.proof.admonition#proof")].map(
    p => p.lastElementChild ? getComputedStyle(p.lastElementChild, "::after").content : "none");
  return {
    pageScroll: Math.max(0, doc.scrollWidth - doc.clientWidth),
    viewport: doc.clientWidth, article: Math.round(aRect.width),
    title: h1 ? {text: h1.textContent.replace(/#$/, "").trim(), fits: h1.scrollWidth <= h1.clientWidth + SLACK}
              : null,
    cut: cut, scrollers: scrollers, equations: equations, images: images, proofs: proofs,
  };
})()
"""


def measure_page(chrome: Chromium, url: str, screenshot: Path | None = None) -> dict:
    """Open ``url`` in a fresh tab as a phone, report (PHONE_REPORT_JS), then widen the same tab to a
    desktop window and report again: ``{400: report, 1400: report}``. A screenshot of the top of the
    page on the phone goes to ``screenshot``."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    reports = {}
    try:
        for domain in ("Page", "Runtime"):
            chrome.send(f"{domain}.enable", session=session)
        chrome.send("Emulation.setDeviceMetricsOverride", PHONE, session=session)
        start = len(chrome.events)
        chrome.send("Page.navigate", {"url": url}, session=session)
        chrome.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        _evaluate(chrome, session, PAGE_REPORT_JS)
        reports[PHONE["width"]] = _evaluate(chrome, session, PHONE_REPORT_JS)
        if screenshot is not None:
            height = min(_evaluate(chrome, session, "document.documentElement.scrollHeight"), 4000)
            clip = {"x": 0, "y": 0, "width": PHONE["width"], "height": height, "scale": 1}
            shot = chrome.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                          "clip": clip}, session=session, timeout=60)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        chrome.send("Emulation.setDeviceMetricsOverride", DESKTOP, session=session)
        _evaluate(chrome, session, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        reports[DESKTOP["width"]] = _evaluate(chrome, session, PHONE_REPORT_JS)
    finally:
        chrome.send("Target.closeTarget", {"targetId": target})
    return reports


# ---------------------------------------------------------------------------------------------
# The size of a figure's text, read from its PNG
# ---------------------------------------------------------------------------------------------

CAP_EM = 0.729  # DejaVu Sans (matplotlib's default font): height of capitals and digits, in em
ASCENDER_EM = 0.745  # between the capitals' 0.729 and the ascenders' (b, d, l) 0.76
X_EM = 0.547  # its x-height


@functools.lru_cache(maxsize=None)
def figure_text_px(png: str) -> float | None:
    """The font size (em, in image pixels) of the smallest text in a matplotlib PNG, or None if it finds
    no text. Divide by the image's natural width and multiply by its displayed width for CSS px.

    Text is dark glyphs on a light background. Dark connected components of a glyph's size, with light
    surroundings and not filled (markers are), are glyphs; glyphs on one baseline, each within a
    glyph's height of the next, are a line of text. A line with lowercase letters and capitals or
    ascenders gives its font size from its tallest glyphs; a line of one height is digits (a tick label;
    their glyphs are narrow) or lowercase letters (matched with the x-height of another line); three or
    more single glyphs of one height on one baseline or right-aligned in one column are tick labels
    ("0", "1"). Exponents and indices ("10" with a raised "-2", lambda with a lowered "t") are left out:
    they are 70 % of the text they belong to. The smallest size that at least two lines (or a row of
    tick labels) share is the answer, so one stray component cannot decide it.
    """
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    image = Image.open(png).convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    lum = np.asarray(Image.alpha_composite(white, image).convert("L"), dtype=np.float32)
    labels, _ = ndimage.label(lum < 128, structure=np.ones((3, 3)))
    height, width = lum.shape
    glyphs = []  # (bottom, left, right, height, width)
    for i, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if not (4 <= h <= 60 and 2 <= w <= 1.6 * h):
            continue
        if (labels[ys, xs] == i).sum() > 0.7 * h * w:
            continue  # a filled marker, not a glyph's strokes
        y0, y1 = max(ys.start - 2, 0), min(ys.stop + 2, height)
        x0, x1 = max(xs.start - 2, 0), min(xs.stop + 2, width)
        around = lum[y0:y1, x0:x1][labels[y0:y1, x0:x1] != i]
        if (around > 200).mean() < 0.75:
            continue  # inside a drawing or an image, not text on the figure's background
        glyphs.append((ys.stop, xs.start, xs.stop, h, w))

    glyphs.sort(key=lambda g: (g[0], g[1]))
    lines, singles, used = [], [], [False] * len(glyphs)
    for a in range(len(glyphs)):
        if used[a]:
            continue
        line, used[a], grew = [glyphs[a]], True, True
        while grew:
            grew = False
            for b, g in enumerate(glyphs):
                if used[b] or abs(g[0] - line[0][0]) > 1:
                    continue
                hmax = max(x[3] for x in line)
                near = any(abs(g[1] - x[2]) <= hmax or abs(x[1] - g[2]) <= hmax for x in line)
                if near and 0.6 <= g[3] / hmax <= 1 / 0.6:
                    line.append(g)
                    used[b] = grew = True
        (lines.append(line) if len(line) >= 2 else singles.append(line[0]))

    def script(s, lowered=False):  # an exponent or index: smaller, right after a taller digit-like glyph
        return any(g[3] >= 1.25 * s[3] and 0.4 * g[3] <= g[4] <= 0.9 * g[3] and 0 <= s[1] - g[2] <= g[3]
                   and (s[0] <= g[0] - 0.25 * g[3] or lowered and s[0] > g[0] + 0.1 * g[3])
                   for g in glyphs)

    sizes = []  # (em in image px, weight)
    singles = [g for g in singles if 0.35 * g[3] <= g[4] <= 0.85 * g[3] and not script(g, lowered=True)]
    for key in (lambda g: g[0], lambda g: g[2]):  # one baseline (x axis), one right edge (y axis)
        groups: dict = {}
        for g in singles:
            groups.setdefault((key(g), g[3]), []).append(g)
        sizes += [(h / CAP_EM, len(gs)) for (_, h), gs in groups.items() if len(gs) >= 3]
    bodies = []
    for line in lines:
        body = [g for g in line if g[4] >= 0.35 * g[3]]  # without l, i, |, (, ): thin and tall
        if len(body) >= 2:
            bodies.append((line, np.array([g[3] for g in body]), np.array([g[4] for g in body])))
    mixed = [(hs.min(), hs.max() / ASCENDER_EM) for _, hs, _ in bodies if hs.max() / hs.min() > 1.25]
    for line, hs, ws in bodies:
        top = hs.max()
        if top / hs.min() > 1.25:
            sizes.append((top / ASCENDER_EM, 1))
            continue
        if script(line[0]):
            continue  # a multi-digit exponent
        ratio = ws / hs
        same_x = [em for xh, em in mixed if abs(xh - top) <= 1]
        if np.median(ratio) <= 0.72 and ratio.max() <= 0.82 or not same_x:
            sizes.append((top / CAP_EM, 1))
        else:
            sizes.append((float(np.median(same_x)), 1))
    for em, _ in sorted(sizes):
        if sum(w for e, w in sizes if abs(e - em) <= 0.1 * em) >= 2:
            return float(em)
    return float(min(sizes)[0]) if sizes else None


def figure_reports(html_dir: Path, docname: str, report: dict) -> list[dict]:
    """Each figure image of a page report with its displayed scale and smallest text in CSS px."""
    out = []
    for image in report["images"]:
        src = urllib.parse.unquote(image["src"].split("?")[0])
        path = (html_dir / posixpath.dirname(docname) / src).resolve()
        if path.suffix.lower() != ".png" or not path.is_file():
            continue
        scale = image["shown"] / image["natural"]
        em = figure_text_px(str(path))
        out.append({"page": docname, "image": path.name, "scale": round(scale, 3),
                    "text_px": None if em is None else round(em * scale, 1),
                    "full_px": None if em is None else round(em, 1),
                    "link": image["link"], "src": image["src"], "where": image["where"]})
    return out


# ---------------------------------------------------------------------------------------------
# Measuring every page once per width
# ---------------------------------------------------------------------------------------------


class Measurements:
    """Reports of every page at 400 and 1400 px, measured on first use."""

    def __init__(self, chrome: Chromium, base_url: str, html_dir: Path, screens: Path | None) -> None:
        self.chrome, self.base_url, self.html_dir, self.screens = chrome, base_url, html_dir, screens
        self._cache: dict = {}

    def __call__(self, docname: str, metrics: dict) -> dict:
        if docname not in self._cache:
            shot = self.screens / f"phone_{docname.replace('/', '_')}.png" if self.screens else None
            self._cache[docname] = measure_page(self.chrome, f"{self.base_url}/{docname}.html", shot)
        return self._cache[docname][metrics["width"]]


@pytest.fixture(scope="module")
def measure(browser, server, html_dir):  # noqa: F811  (fixtures imported from test_book_html)
    """Every page's measurements; when all pages were measured, their summary (the counts and every
    figure's text size) is written to ``$BOOK_SCREENS/phone_report.json`` beside the screenshots."""
    measurements = Measurements(browser, server, html_dir, SCREENS)
    yield measurements
    if all(d in measurements._cache for d in PAGES):
        SCREENS.mkdir(parents=True, exist_ok=True)
        (SCREENS / "phone_report.json").write_text(
            json.dumps(summary(measurements), indent=1, ensure_ascii=False), encoding="utf-8")


def summary(measure: Measurements, pages=PAGES) -> dict:
    """Counts over the book (the numbers the issue quotes), and every figure's text size at 400 px."""
    out = {"pages": len(pages)}
    for label, metrics in (("400px", PHONE), ("1400px", DESKTOP)):
        reps = {d: measure(d, metrics) for d in pages}
        eqs = [e for r in reps.values() for e in r["equations"]]
        scrollers = [s for r in reps.values() for s in r["scrollers"]]
        out[label] = {
            "pages scrolling sideways": [d for d, r in reps.items() if r["pageScroll"] > 0],
            "display equations": len(eqs),
            "display equations wider than their container": sum(e["wide"] for e in eqs),
            "...of which without a visible cue (cut)": sum(e["wide"] and not e["cue"] for e in eqs),
            "sideways scrollers without a cue, by kind": _count(s["kind"] for s in scrollers if not s["cue"]),
            "sideways scrollers with a cue, by kind": _count(s["kind"] for s in scrollers if s["cue"]),
            "cut elements (no way to scroll), by kind": _count(c["kind"] for r in reps.values() for c in r["cut"]),
            "cut elements": [f"{d}: {c['kind']} {c['how']} by {c['over']} px ({c['where']})"
                             for d, r in reps.items() for c in r["cut"]],
            "titles that do not fit": [d for d, r in reps.items() if r["title"] and not r["title"]["fits"]],
        }
        figs = [f for d, r in reps.items() for f in figure_reports(measure.html_dir, d, r)]
        out[f"figures at {label}"] = figs
        out[f"figures below 9 px text at {label}"] = [
            f"{f['page']} {f['where'].split(':')[0]} ({f['image'][:8]}): {f['text_px']} px, shown at {f['scale']:.0%}"
            for f in figs if f["text_px"] is not None and f["text_px"] < 9]
        if metrics is PHONE:
            out["figures without a full-size link"] = [f"{f['page']} {f['image'][:12]}" for f in figs if not f["link"]]
    return out


def _count(kinds) -> dict:
    counts: dict = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("docname", PAGES)
def test_page_fits_a_phone(docname, measure):
    report = measure(docname, PHONE)
    assert report["viewport"] == PHONE["width"], report["viewport"]
    assert report["pageScroll"] == 0, f"{docname}: the page scrolls sideways by {report['pageScroll']} px at 400 px"
    assert not report["cut"], f"{docname}: cut at 400 px:\n" + "\n".join(
        f"  {c['kind']} {c['how']} by {c['over']} px: {c['where']}" for c in report["cut"])
    hidden = [s for s in report["scrollers"] if not s["cue"]]
    assert not hidden, f"{docname}: scrolls sideways at 400 px with nothing to show it:\n" + "\n".join(
        f"  {s['kind']} ({s['over']} px more): {s['where']}" for s in hidden)
    if report["title"]:
        assert report["title"]["fits"], f"{docname}: the title {report['title']['text']!r} is clipped at 400 px"
    for eq in report["equations"]:
        assert not eq["wide"] or (eq["scrolls"] and eq["cue"]), f"{docname}: equation cut: {eq['where']}"


@pytest.mark.parametrize("docname", PAGES)
def test_figures_legible_on_a_phone(docname, measure, html_dir):
    """Every figure opens at full size when tapped, is legible there, and is an overview as displayed."""
    figures = figure_reports(html_dir, docname, measure(docname, PHONE))
    for f in figures:
        print(f"{docname}: {f['image'][:16]} shown at {f['scale']:.0%}, smallest text {f['text_px']} px "
              f"({f['full_px']} px at full size)")
    for f in figures:
        assert f["link"] and f["link"].split("?")[0] == f["src"].split("?")[0], \
            f"{docname}: {f['image']} is not a link to itself at full size (_static/book.js): {f['link']}"
    small = [f for f in figures if f["text_px"] is not None and (
        f["text_px"] < MIN_PHONE_FIGURE_TEXT_PX or f["full_px"] < MIN_FULL_SIZE_FIGURE_TEXT_PX)]
    assert not small, (
        f"{docname}: figure text below {MIN_PHONE_FIGURE_TEXT_PX} px at 400 px, or below "
        f"{MIN_FULL_SIZE_FIGURE_TEXT_PX} px at full size:\n" + "\n".join(
            f"  {f['image']} shown at {f['scale']:.0%}: {f['text_px']} px, at full size {f['full_px']} px "
            f"({f['where']})" for f in small))


@pytest.mark.parametrize("docname", PAGES)
def test_figures_legible_at_1400px(docname, measure, html_dir):
    figures = figure_reports(html_dir, docname, measure(docname, DESKTOP))
    small = [f for f in figures if f["text_px"] is not None and f["text_px"] < MIN_DESKTOP_FIGURE_TEXT_PX]
    assert not small, f"{docname}: figure text below {MIN_DESKTOP_FIGURE_TEXT_PX} px at 1400 px:\n" + "\n".join(
        f"  {f['image']} shown at {f['scale']:.0%}: {f['text_px']} px ({f['where']})" for f in small)


@pytest.mark.parametrize("docname", PAGES)
def test_no_display_equation_cut_at_1400px(docname, measure):
    report = measure(docname, DESKTOP)
    assert report["viewport"] == DESKTOP["width"], report["viewport"]
    cut = [e["where"] for e in report["equations"] if e["wide"] and not (e["scrolls"] and e["cue"])]
    assert not cut, f"{docname}: display equations cut at 1400 px: {cut}"
    assert report["pageScroll"] == 0, f"{docname}: the page scrolls sideways at 1400 px"


def test_proofs_end_with_a_mark(measure):
    ends = {d: measure(d, PHONE)["proofs"] for d in PAGES}
    assert sum(len(v) for v in ends.values()) >= 10, "found almost no proofs: has sphinx-proof's markup changed?"
    wrong = {d: v for d, v in ends.items() if any(c != '"∎"' for c in v)}
    assert not wrong, f"proofs without an end mark: {wrong}"


def test_execution_table_status_is_text(html_dir, server, browser):  # noqa: F811
    """myst-nb's {nb-exec-table} writes its status as an emoji, an empty box without an emoji font."""
    page = "book/performance"
    if page not in PAGES:
        pytest.skip("no Performance page")
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Page.enable", session=session)
        start = len(browser.events)
        browser.send("Page.navigate", {"url": f"{server}/{page}.html"}, session=session)
        browser.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        cells = _evaluate(browser, session, r"""(() => {
            const table = document.querySelector(".exec-status-table table, #execution-time-of-each-chapter table");
            if (!table) return null;
            return [...table.querySelectorAll("tbody tr")].map(r => r.lastElementChild.textContent.trim()); })()""")
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    assert cells, "no execution table on the Performance page"
    assert all(c == "passed" for c in cells), cells
    assert not re.search("[\u2600-\u27bf\U0001f300-\U0001faff]", "".join(cells)), cells


def test_search_snippets_show_no_raw_tex(html_dir, server, browser):  # noqa: F811
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        browser.send("Page.enable", session=session)
        start = len(browser.events)
        browser.send("Page.navigate", {"url": f"{server}/search.html?q=posterior+variational"}, session=session)
        browser.wait_event("Page.loadEventFired", session, start, PAGE_TIMEOUT)
        snippets = _evaluate(browser, session, r"""
          new Promise(resolve => {
            const t0 = Date.now();
            (function poll() {
              const summary = document.querySelector("#search-results .search-summary");
              const done = summary && /found|did not match/i.test(summary.textContent);
              const texts = [...document.querySelectorAll("#search-results p.context")].map(p => p.textContent);
              if (done && texts.length >= 5 || Date.now() - t0 > 30000) resolve(texts);
              else setTimeout(poll, 100);
            })();
          })""")
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
    assert len(snippets) >= 5, snippets
    raw = [s for s in snippets if re.search(r"\\[()\[\]]|\\[A-Za-z]{2,}", s)]
    assert not raw, "search snippets with raw TeX:\n" + "\n".join(raw[:5])


def test_figure_text_estimate_is_calibrated(tmp_path):
    """figure_text_px finds the smallest text of matplotlib figures of known font sizes within 12 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.linspace(0, 3, 50)
    for ticks, legend, labels in [(10, 10, 10), (10, 8, 10), (12, 11, 12), (8, 10, 12), (6, 9, 9),
                                  (12, 7, 12), (14, 14, 14)]:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3), facecolor="white")
        for ax in axes:
            ax.plot(x, np.sin(x), label="mean error")
            ax.plot(x, np.cos(x), label="KL(q || p), nats")
            ax.scatter(rng.normal(size=30), rng.normal(size=30), c="k", s=8)
            ax.tick_params(labelsize=ticks)
            ax.legend(fontsize=legend)
            ax.set_xlabel("number of samples K", fontsize=labels)
            ax.set_ylabel("log-likelihood (nats)", fontsize=labels)
            ax.set_title("The bound tightens", fontsize=labels)
        path = tmp_path / f"t{ticks}_l{legend}_a{labels}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        want = min(ticks, legend, labels) * 100 / 72
        got = figure_text_px(str(path))
        assert got is not None and abs(got / want - 1) <= 0.12, (path.name, want, got)


# ---------------------------------------------------------------------------------------------
# As a script: the measurements of a built book
# ---------------------------------------------------------------------------------------------


def main() -> None:
    import functools as ft
    import http.server
    import shutil
    import threading

    from test_book_html import _QuietHandler

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--book-html", required=True, type=Path)
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--screens", type=Path, help="write a full-page screenshot of each page at 400 px here")
    args = parser.parse_args()
    html_dir = args.book_html.resolve()
    handler = ft.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="elbo-book-chromium-")
    chrome = Chromium(_find_chromium(), profile, Path(profile) / "chromium.log")
    try:
        result = summary(Measurements(chrome, f"http://127.0.0.1:{httpd.server_address[1]}", html_dir, args.screens))
    finally:
        chrome.close()
        httpd.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    short = {k: v for k, v in result.items() if not k.startswith("figures at ")}
    print(json.dumps(short, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
